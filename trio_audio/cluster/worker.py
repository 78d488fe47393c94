"""``trio-audio asr-worker``: a process that only transcribes for a JetStream cluster.

It follows the cluster's log (its own ``JetStreamStore``, no events: its work comes as work)
and runs a ``Transcriber`` under ``work.Cluster`` for the partitions it holds. Its one
listener is the probe port (``--host``/``--port``): ``/healthz``, ``/readyz`` (503 with the
reason while the cluster cannot serve it) and ``/metrics``, answered one request per
connection by ``probe_port.serve_answers``.
"""

from __future__ import annotations

import logging
import signal
from functools import partial

import trio

from ..asr.transcriber import Transcriber
from ..config import Config
from ..live import Unwatched
from ..metrics import Metrics
from ..probe_port import response, serve_answers
from .jetstream import JetStreamStore
from .work import Cluster

logger = logging.getLogger("trio_audio.cluster.work")


async def run_worker(
    config: Config, *, task_status: trio.TaskStatus[Cluster] = trio.TASK_STATUS_IGNORED
) -> None:
    """``trio-audio asr-worker``: follow the cluster's log and transcribe the partitions this
    process holds. Its one listener, on ``--host``/``--port``, answers the probes:
    ``/healthz``, ``/readyz`` (503 with the reason while the cluster cannot serve it) and
    ``/metrics``. SIGINT/SIGTERM stop it (its leases are given back, so other workers take
    over at once)."""
    if not config.store:
        msg = "asr-worker needs a cluster store: --store nats://h1:4222,..."
        raise ValueError(msg)
    if config.asr_engine == "none":
        msg = "asr-worker needs a speech engine (--asr-engine whisper or pocketsphinx)"
        raise ValueError(msg)
    metrics = Metrics()
    limiter = trio.CapacityLimiter(config.cpu_threads)
    store = JetStreamStore(config, metrics=metrics)  # no events: its work comes as work
    stop = trio.Event()
    starting = trio.CancelScope()  # a stop before the store is up ends it at once
    async with trio.open_nursery() as root:
        root.start_soon(_signals, stop, starting)
        port = await root.start(
            serve_answers, config.host, config.port, partial(_probe, store, metrics)
        )
        logger.info("asr-worker probes (/healthz, /readyz, /metrics) on http://%s:%d",
                    config.host, port)  # fmt: skip
        try:
            with starting:
                await root.start(store.run)
            if starting.cancelled_caught:
                logger.info("stopping before the store started")
                return
            cluster = Cluster(config, store, Unwatched(), metrics)
            transcriber = Transcriber(config, store, cluster.live, metrics, limiter)
            async with trio.open_nursery() as work:
                await work.start(transcriber.run)
                await work.start(partial(cluster.run, transcriber, relay=False))
                logger.info("asr-worker %s taking transcription work", store.node)
                task_status.started(cluster)
                await stop.wait()
                transcriber.stop()
                work.cancel_scope.cancel()
        finally:
            store.close()
            root.cancel_scope.cancel()  # the probes and the signal watch


async def _signals(stop: trio.Event, starting: trio.CancelScope) -> None:
    """The first SIGINT/SIGTERM sets *stop* (and cancels *starting*: nothing to give back
    before the store is up)."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            logger.info("%s received: stopping", signal.Signals(signum).name)
            stop.set()
            starting.cancel()
            return


def _probe(store: JetStreamStore, metrics: Metrics, path: str) -> bytes:
    """The asr-worker's answer to a probe of *path*."""
    if path == "/healthz":
        return response(200, {"status": "ok"}, "application/json", 1)
    if path == "/readyz":
        problem = store.health
        body: dict[str, object] = {"status": "ready" if problem is None else "not_ready",
                                   "store_problem": problem}  # fmt: skip
        return response(200 if problem is None else 503, body, "application/json", 1)
    if path == "/metrics":
        return response(200, metrics.render(), "text/plain; version=0.0.4", 1)
    return response(404, {"status": "not_found"}, "application/json", 1)
