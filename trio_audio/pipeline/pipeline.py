"""Wiring of the pipeline: ingress -> validate -> analyse -> the store's committer.

Every channel is bounded (sizes from config). When the ingress is full, ``Ingress.submit_nowait``
refuses at once with ``Overloaded`` (HTTP 503 + Retry-After); ``Ingress.submit`` waits for
room instead (the WebSocket's TCP backpressure). Closing every clone of the ingress sender
ends the stream: each stage finishes its jobs and closes its output, down to the store.
"""

from __future__ import annotations

import os

import trio

from ..budget import budget_gauge
from ..config import Config
from ..errors import Overloaded
from ..metrics import Metrics
from ..models import Job
from .stages import ANALYSE_STEPS, GROUP_MAX, Stage, Stages, run_stage


class Ingress:
    """The front door of the pipeline: one sender clone per producer."""

    def __init__(
        self, send: trio.MemorySendChannel[Job], metrics: Metrics, retry_after_s: int
    ) -> None:
        self._send = send
        self._metrics = metrics
        self.retry_after_s = retry_after_s

    def clone(self) -> Ingress:
        return Ingress(self._send.clone(), self._metrics, self.retry_after_s)

    def statistics(self) -> trio.MemoryChannelStatistics:
        return self._send.statistics()

    @property
    def full(self) -> bool:
        stats = self._send.statistics()
        return stats.current_buffer_used >= stats.max_buffer_size

    def refuse(
        self, reason: str, detail: str = "the ingest queue is full; retry after the delay given"
    ) -> Overloaded:
        """Count a refusal by *reason*; the 503 to raise for it."""
        self._metrics.refuse(reason)
        return Overloaded(detail, retry_after=self.retry_after_s)

    def submit_nowait(self, job: Job) -> None:
        """Queue *job* or raise ``Overloaded`` at once; never blocks, never drops."""
        job.enqueued = trio.current_time()
        try:
            self._send.send_nowait(job)
        except trio.WouldBlock:
            raise self.refuse("queue_full") from None
        except trio.ClosedResourceError:
            raise self.refuse("shutting_down", "the service is shutting down") from None
        self._metrics.accepted(len(job.parts))

    def offer(self, job: Job) -> bool:
        """Queue *job* if the ingress has room now (True); else leave it to ``submit``."""
        job.enqueued = trio.current_time()
        try:
            self._send.send_nowait(job)
        except trio.WouldBlock:
            return False
        self._metrics.accepted(len(job.parts))
        return True

    async def submit(self, job: Job) -> None:
        """Queue *job*, waiting for room (backpressure to the producer)."""
        job.enqueued = trio.current_time()
        await self._send.send(job)
        self._metrics.accepted(len(job.parts))

    async def aclose(self) -> None:
        await self._send.aclose()

    async def __aenter__(self) -> Ingress:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


async def run_pipeline(
    config: Config,
    commit: trio.MemorySendChannel[Job],
    metrics: Metrics,
    limiter: trio.CapacityLimiter,
    *,
    task_status: trio.TaskStatus[Ingress] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Start every stage, hand back the ``Ingress``; return once the stream has drained.

    Resource handling: the pipeline owns *commit*, its sender into the store's committer
    (``Store.open_writes``), and closes it when the last stage ends. The caller owns the
    returned ``Ingress`` and must close it (and every clone) to end the pipeline; the stages
    then drain in order, the last one hands its jobs to the committer, and this returns.
    """
    work = Stages(config, limiter)
    metrics.gauge("trio_audio_decoded_bytes", lambda: budget_gauge(work.decoded))
    # A worker per CPU at most: on one CPU a second worker runs nothing beside the first,
    # it only splits the jobs waiting together into smaller groups (each paying a group's
    # costs: one model call, one hop) and the process does less per CPU second.
    workers = min(config.stage_workers, len(os.sched_getaffinity(0)))
    timeout = config.stage_timeout_s
    # Each worker takes the jobs waiting together as one group (stages.py), at most a stage
    # queue's worth: what a stage holds stays bounded by the queue sizes it was given.
    group = min(GROUP_MAX, config.stage_queue)
    stages = [
        Stage("validate", work.validate, workers, timeout, group),
        Stage("analyse", work.analyse, workers, timeout, group, ANALYSE_STEPS),
    ]
    ingress_send, receive = trio.open_memory_channel[Job](config.ingress_queue)
    queues: dict[str, trio.MemorySendChannel[Job]] = {"ingress": ingress_send}
    async with trio.open_nursery() as nursery:
        for stage, downstream in zip(stages, ("analyse", "store"), strict=True):
            # Each stage feeds the next; the last one feeds the committer's channel.
            send, next_receive = (
                (commit, None)
                if downstream == "store"
                else trio.open_memory_channel[Job](config.stage_queue)
            )
            queues[downstream] = send
            nursery.start_soon(run_stage, stage, receive, send, metrics)
            if next_receive is not None:
                receive = next_receive
        metrics.gauge(
            "trio_audio_queue_depth",
            lambda: {
                f'queue="{name}"': s.statistics().current_buffer_used for name, s in queues.items()
            },
        )
        task_status.started(Ingress(ingress_send, metrics, config.retry_after_s))
