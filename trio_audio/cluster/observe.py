"""How a node sees the cluster: the health ``/readyz`` reports and the gauges of ``/metrics``.

``Watch.run`` asks JetStream every ``PERIOD_S`` whether it answers (connected, with a meta
leader for its API) and how the log's stream is (bytes, messages, last sequence, leader);
from that and the follower's position it keeps:

- ``problem``: why this node cannot take writes now (None: it can), for ``/readyz``: not
  connected (and why: refused credentials, no server reachable, TLS), no meta leader, or the
  stream full (a write refused for storage in the last ``FULL_HOLD_S`` and none stored since);
- the gauges: stream bytes and messages, follower lag (records of the stream this node has
  not applied), reconnects and disconnects of its connection, and the last problem's age.

Publish latency (``trio_audio_stage_seconds{stage="publish"}``) is observed by the
committer; work pending per partition by ``cluster/work.py``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Final

import trio

from ..metrics import Metrics
from .bridge import NatsError, StreamState
from .connect import Link, Nats

logger = logging.getLogger("trio_audio.cluster.observe")

PERIOD_S: Final = 1.0  # how often a running node asks JetStream how it is
FULL_HOLD_S: Final = 10.0  # a refusal for storage says "full" this long (or until a write)


class Watch:
    """A node's view of the cluster (see the module docstring)."""

    def __init__(
        self,
        stream: str,
        timeout_s: float,
        applied: Callable[[], int],
        on_change: Callable[[str | None], None] | None = None,
    ) -> None:
        self.stream = stream
        self._timeout_s = timeout_s
        self._applied = applied  # the last stream sequence this node's follower applied
        self._on_change = on_change
        self.problem: str | None = None
        self.state: StreamState | None = None
        self.link: Link | None = None
        self._full: tuple[float, str] | None = None  # (when, why) a write was refused

    def register(self, metrics: Metrics) -> None:
        label = f'stream="{self.stream}"'

        def stream() -> dict[str, float]:
            if self.state is None:
                return {}
            return {f"{label},what=\"bytes\"": float(self.state.bytes),
                    f"{label},what=\"messages\"": float(self.state.messages)}  # fmt: skip

        def lag() -> dict[str, float]:
            if self.state is None:
                return {}
            return {label: float(max(0, self.state.last_seq - self._applied()))}

        def link() -> dict[str, float]:
            if self.link is None:
                return {}
            return {'event="reconnect"': float(self.link.reconnects),
                    'event="disconnect"': float(self.link.disconnects),
                    'event="error"': float(self.link.errors)}  # fmt: skip

        metrics.gauge("trio_audio_cluster_stream", stream)
        metrics.gauge("trio_audio_cluster_follower_lag_records", lag)
        metrics.gauge("trio_audio_cluster_connection_events", link)
        metrics.gauge("trio_audio_cluster_ready", lambda: {label: float(self.problem is None)})

    def refused_full(self, reason: str) -> None:
        """A write was refused for storage: say "full" for a while (see ``FULL_HOLD_S``)."""
        self._full = (trio.current_time(), reason)
        self._set(self._full_problem())

    def stored(self) -> None:
        """A write was stored: the stream is not full (any more)."""
        if self._full is not None:
            self._full = None
            self._set(
                None if self.problem and self.problem.startswith("the stream") else self.problem
            )

    def _full_problem(self) -> str | None:
        if self._full is None or trio.current_time() - self._full[0] > FULL_HOLD_S:
            self._full = None
            return None
        return f"the stream {self.stream} cannot take more: {self._full[1]}"

    def _set(self, problem: str | None) -> None:
        if problem == self.problem:
            return
        if problem is None:
            logger.info("JetStream answers again")
        else:
            logger.warning("JetStream cannot serve: %s", problem)
        self.problem = problem
        if self._on_change is not None:
            self._on_change(problem)

    async def run(self, nats: Nats) -> None:
        """Every ``PERIOD_S``: whether JetStream answers, and the stream's state."""
        self.link = nats.link
        while True:
            problem = await nats.health(self._timeout_s)
            if problem is not None and nats.link.problem is not None:
                problem = f"{problem}: {nats.link.problem}"
            if problem is None:
                try:
                    self.state = await nats.stream_state(self.stream)
                except NatsError as exc:
                    problem = f"the stream {self.stream} does not answer: {exc}"
            self._set(problem or self._full_problem())
            await trio.sleep(PERIOD_S)
