"""Benchmarks: a load generator, a naive baseline and the accounting that proves nothing is lost.

``trio-audio bench`` (see ``cli``) drives a real ``trio-audio serve`` over loopback with
HTTP uploads and WebSocket streams from a separate process (``loadgen``), samples the
server's CPU and memory from ``/proc`` (``runner``), checks every acknowledged chunk with
``GET /chunks/{id}`` (``runner.verify``), runs the same uploads against the naive
``baseline``, and prints a report (``report``) and a JSON result.
"""

from __future__ import annotations

from .loadgen import Outcome, Spec
from .runner import Lost, Scenario, run_scenario, verify

__all__ = ["Lost", "Outcome", "Scenario", "Spec", "run_scenario", "verify"]
