"""Errors at the HTTP edges say what happened, and expected events leave no traceback."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import pytest
import trio

from .conftest import Server, StartServer

ROOT = Path(__file__).resolve().parent.parent


async def test_slow_bodies_are_cut_with_408_and_no_traceback(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    server: Server = await start_server(min_upload_bytes_per_s=8000, upload_grace_s=0.2)
    caplog.set_level(logging.INFO)
    with trio.fail_after(60):
        done = await trio.run_process(
            [sys.executable, "-m", "tests.slow_clients", server.url, "100"],
            cwd=ROOT, capture_stdout=True,
        )  # fmt: skip
    statuses = json.loads(done.stdout)
    assert sum(statuses.values()) == 100
    assert all(line.startswith("HTTP/1.1 408") for line in statuses), statuses
    noisy = [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]
    assert noisy == [], "\n".join(f"{r.name}: {r.getMessage()}" for r in noisy[:5])
