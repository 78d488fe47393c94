"""The stage loop every pipeline stage shares, and the work each stage does to a group of jobs.

A stage is a pool of workers over one channel pair. Each worker owns clones of both ends and
closes them with ``async with``, so when the upstream ends the stream, the end passes down.
A worker takes the jobs that are waiting together (up to ``Stage.group_max``: the stage's own
group commit) and works on them as one group, under the stage's timeout. A job that fails is
answered there and then (its sender is told) and goes no further; the others in its group go
on; nothing is dropped in silence.

Why groups: a 100 ms chunk costs more in per-call overhead (numpy on tiny arrays, one model
call, one thread hop, one channel hop) than in arithmetic. Chunks that arrive together (the
frames of busy WebSocket streams, uploads under load) share those costs: one vectorised step
of features, one Silero call with the chunks as batch rows, one thread hop. A lone chunk is a
group of one, so an idle service answers as fast as before.

The pipeline has the reference design's two stages, each handing on its own result:
``validate`` (checksum, decode within the budget: a ``models.Checked`` per part), then
``analyse`` (spectrum, features and voice activity as its steps, ending in one
``models.ChunkRecord`` per part). Spectrum and features were once stages of their own: a stage
that only hands a group to the next worker costs a channel, a wake-up and a deadline scope
per group (``bench/hops.py``: 20-25 us of CPU a job), so steps that always run together are
steps of one stage.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, Final, TypeVar

import attrs
import trio

from ..audio import features, vad
from ..audio.decode import Allowance, decode, decoded_samples_bound, sniff_container
from ..budget import ByteBudget, Hold
from ..channels import waiting
from ..config import DECODED_BYTES_PER_SAMPLE, Config
from ..errors import InternalError, Overloaded, ServiceError
from ..metrics import Metrics
from ..models import Checked, ChunkRecord, Job, Part

logger = logging.getLogger("trio_audio.pipeline")

UNKNOWN_SAMPLES: Final = 2**62
COMPRESSED_SAMPLES_PER_BYTE: Final = 8  # a first guess at what compressed audio decodes to
GROUP_MAX: Final = 32  # jobs one worker takes at once (bounded by what is already waiting)
# A group stops growing once its bodies reach this: big (or compressed) chunks go alone or
# nearly so, so a group's work stays within the timeout each of its chunks would have had.
GROUP_MAX_BYTES: Final = 1 << 20
ANALYSE_STEPS: Final = ("transform", "metadata", "vad")  # its steps, timed per chunk

T = TypeVar("T")
R = TypeVar("R")
Outcomes = list[BaseException | None]  # per job of a group: None (done) or why it failed
Work = Callable[[list[Job]], Awaitable[Outcomes]]


@attrs.frozen
class Stage:
    """A named step of the pipeline: what it does to a group of jobs, with how many workers.

    ``group_max`` is how many waiting jobs one worker takes at once (1: one at a time);
    ``steps`` the steps of its work timed in each chunk's ``processing_ms`` that also go to
    the stage metric under their own names (the analyse stage's steps were once stages)."""

    name: str
    work: Work
    workers: int
    timeout_s: float
    group_max: int = 1
    steps: tuple[str, ...] = ()


def take_waiting(
    first: Job, receive: trio.MemoryReceiveChannel[Job], most: int, max_bytes: int = GROUP_MAX_BYTES
) -> list[Job]:
    """*first* and the jobs already waiting behind it: at most *most*, and no more once their
    bodies add up to *max_bytes*; never waits."""
    return waiting(first, receive, most, _body_bytes, max_bytes)


def _body_bytes(job: Job) -> int:
    return sum(len(part.body) for part in job.parts)


async def run_worker(
    stage: Stage,
    receive: trio.MemoryReceiveChannel[Job],
    send: trio.MemorySendChannel[Job],
    metrics: Metrics,
) -> None:
    """``async for`` group of waiting jobs: work, then send on the ones that did not fail.

    The stage's timeout bounds each group's work; on timeout every job of the group fails
    explicitly (``Overloaded``).
    """
    async with receive, send:
        async for first in receive:
            # Answered already (e.g. its sender gave up): nothing to do for those.
            group = [j for j in take_waiting(first, receive, stage.group_max) if not j.reply.done]
            if not group:
                continue
            started = trio.current_time()
            outcomes: Outcomes | None = None
            try:
                # A bare cancel scope, not fail_after: the same deadline without a generator
                # context manager around every group.
                with trio.CancelScope(deadline=started + stage.timeout_s):
                    outcomes = await stage.work(group)
            except Exception as exc:  # the group's own work broke: each of its jobs is told
                logger.exception("%s failed on a group of %d jobs", stage.name, len(group))
                outcomes = [exc] * len(group)
            if outcomes is None:  # the deadline passed
                msg = f"the {stage.name} stage took longer than {stage.timeout_s:g} s"
                for job in group:
                    metrics.failed("timeout")
                    job.reply.fail(Overloaded(msg))
                continue
            elapsed = trio.current_time() - started
            for job, outcome in zip(group, outcomes, strict=True):
                if outcome is None:
                    metrics.observe_stage(stage.name, elapsed)
                    for record in job.records if stage.steps else ():
                        for step in stage.steps:
                            metrics.observe_stage(step, record.processing_ms[step] / 1000)
                    await _pass_on(send, job)
                else:
                    _fail(stage, job, outcome, metrics)


async def _pass_on(send: trio.MemorySendChannel[Job], job: Job) -> None:
    """Hand *job* to the next stage: at once while its queue has room (the group's work was
    its checkpoint), else wait for room (backpressure)."""
    try:
        send.send_nowait(job)
    except trio.WouldBlock:
        await send.send(job)


def _fail(stage: Stage, job: Job, error: BaseException, metrics: Metrics) -> None:
    if isinstance(error, ServiceError):
        metrics.failed(error.code)
        job.reply.fail(error)
    else:
        logger.error("%s failed on a job of session %s", stage.name, job.session_id,
                     exc_info=error)  # fmt: skip
        metrics.failed("internal")
        job.reply.fail(InternalError(f"the {stage.name} stage failed"))


async def run_stage(
    stage: Stage,
    receive: trio.MemoryReceiveChannel[Job],
    send: trio.MemorySendChannel[Job],
    metrics: Metrics,
) -> None:
    """Run ``stage.workers`` workers over clones of the pair, closing the originals."""
    async with trio.open_nursery() as nursery, receive, send:
        for _ in range(stage.workers):
            nursery.start_soon(run_worker, stage, receive.clone(), send.clone(), metrics)


class Stages:
    """The work of each stage, bound to what it needs (limits, the CPU limiter)."""

    def __init__(self, config: Config, limiter: trio.CapacityLimiter):
        self.config = config
        self.limiter = limiter
        self.max_duration_s = config.max_duration_s
        self.max_samples = config.max_decoded_samples
        self.decoded = ByteBudget(config.max_decoded_bytes_inflight)
        self.room_wait_s = config.ws_overload_timeout_s
        self.inline_max_samples = config.inline_max_samples
        # A thread runs beside the event loop only if the process has another CPU to run it
        # on; pinned to one, the hop is all cost (two context switches and a GIL handover).
        self.beside = len(os.sched_getaffinity(0)) > 1
        self.voice = Voice(config.vad_mode, config.vad_gap_ms,
                           keep_pcm=config.asr_engine != "none")  # fmt: skip

    async def _cpu(self, samples: int, run: Callable[[], None], *, thread: bool = False) -> None:
        """CPU work: inline when small, else in a thread under the shared limiter.

        A thread hop costs more than the ~0.3 ms of numpy a 1 s chunk needs, so small work
        runs on the event loop (bounded by ``inline_max_samples``); anything larger, or of
        unknown size, goes to a thread so it never stalls the loop. With *thread*, always a
        thread: for work that releases the GIL and so runs beside the loop on another core.
        """
        if not thread and samples <= self.inline_max_samples:
            run()
            await trio.lowlevel.checkpoint()
        else:
            await trio.to_thread.run_sync(run, limiter=self.limiter, abandon_on_cancel=True)

    async def _grouped(
        self,
        groups: list[list[T]],
        together: Callable[[list[T]], list[R]],
        samples: int,
        *,
        vectorised: bool = True,
        thread: bool = False,
    ) -> tuple[Outcomes, list[list[R]], float]:
        """Each job's items (*groups*, one list a job) as one piece of CPU work of about
        *samples* samples: per job, its outcome and its results; and the seconds it took per
        item. With *thread*: always in a thread, for work that releases the GIL.
        *vectorised*: *together* on every item at once, and if that fails, on each job's
        items alone, so a bad chunk fails its own job only; otherwise (work that goes item by
        item anyway) each job's items alone from the start, so a bad chunk costs the others
        nothing twice."""
        outcomes: Outcomes = [None] * len(groups)
        results: list[list[R]] = [[] for _ in groups]
        share = [0.0]

        def each_alone() -> None:
            for index, items in enumerate(groups):
                try:
                    results[index] = together(items)
                except Exception as exc:
                    outcomes[index] = exc

        def run() -> None:
            started = time.perf_counter()
            if vectorised and len(groups) > 1:
                try:
                    found = iter(together([item for items in groups for item in items]))
                except Exception:
                    each_alone()
                else:
                    results[:] = [[next(found) for _ in items] for items in groups]
            else:
                each_alone()
            share[0] = (time.perf_counter() - started) / max(1, sum(map(len, groups)))

        await self._cpu(samples, run, thread=thread)
        return outcomes, results, share[0]

    async def validate(self, jobs: list[Job]) -> Outcomes:
        """Checksum and decode every part (whether a part is a retry is the committer's call);
        each job gets its ``Checked`` parts.

        Decoded audio is held within ``max_decoded_bytes_inflight``: each job first takes room
        for what its bodies say they decode to (the group's first waits for it a bounded
        time, the others take it at once, else 503), and each decode takes more as it reads
        past that, or fails with 503. The room is given
        back when the samples are let go (``Hold.hand_over``)."""
        parts = [part for job in jobs for part in job.parts]
        sums: list[tuple[str, str | None]] = []
        await self._cpu(sum(len(p.body) for p in parts) // 2, lambda: sums.extend(_sums(parts)))
        found = iter(sums)
        sniffed = [[(part, *next(found)) for part in job.parts] for job in jobs]
        holds: list[Hold] = []
        outcomes: Outcomes = []
        for items in sniffed:
            size = sum(self._first_guess(p, c) for p, _, c in items) * DECODED_BYTES_PER_SAMPLE
            # Only a group that holds nothing yet waits for room: what it waits for could
            # otherwise be its own, held until the group is done.
            if await self.decoded.take(size, 0 if holds else self.room_wait_s):
                holds.append(Hold(self.decoded, size))
                outcomes.append(None)
            else:
                msg = "no memory free to decode this audio now; retry after the delay given"
                outcomes.append(Overloaded(msg))
        live = [i for i, outcome in enumerate(outcomes) if outcome is None]
        groups = [
            [(hold, *item) for item in sniffed[i]] for i, hold in zip(live, holds, strict=True)
        ]
        samples = sum(_body_samples(p, c) for items in groups for _, p, _, c in items)
        try:
            found_outcomes, decoded, share = await self._grouped(
                groups, self._decode_all, samples, vectorised=False
            )
        finally:
            for hold in holds:
                hold.release()  # what a decode kept is the samples'; the rest goes back
        for i, outcome, checked in zip(live, found_outcomes, decoded, strict=True):
            outcomes[i] = outcome
            if outcome is None:
                jobs[i].checked = tuple(attrs.evolve(c, seconds=share) for c in checked)
        return outcomes

    def _first_guess(self, part: Part, container: str | None) -> int:
        """The samples to take room for before decoding *part* (the decode takes more as it
        needs); none when its header says it is over the limit: refused before it decodes."""
        bound = decoded_samples_bound(part.body, part.raw, container)
        if bound is None:
            bound = len(part.body) * COMPRESSED_SAMPLES_PER_BYTE
        elif bound > self.max_samples and part.raw is None and container != "wav":
            return 0
        return min(bound, self.max_samples)

    def _decode_all(self, items: list[tuple[Hold, Part, str, str | None]]) -> list[Checked]:
        """Decode one job's parts within its hold, ``max_decoded_samples`` in all; a refusal
        names its part (its index among the job's: see ``_grouped``)."""
        left = self.max_samples
        checked = []
        for index, (hold, part, checksum, container) in enumerate(items):
            allowance = Allowance(hold.size // DECODED_BYTES_PER_SAMPLE, partial(_more, hold))
            try:
                decoded = decode(
                    part.body,
                    content_type=part.content_type,
                    raw=part.raw,
                    container=container,  # sniffed once, in ``_sums``
                    max_duration_s=self.max_duration_s,
                    max_samples=left,
                    allowance=allowance,
                )
            except ServiceError as exc:
                raise exc.of_part(index) from None
            samples = decoded.frames * decoded.channels
            left -= samples
            hold.hand_over(decoded, samples * DECODED_BYTES_PER_SAMPLE)
            checked.append(Checked(checksum, container, decoded, 0.0))
        return checked

    async def analyse(self, jobs: list[Job]) -> Outcomes:
        """Each job's ``ChunkRecord``s from its ``Checked`` parts, in three steps, each for the
        whole group at once: downmix to mono float32 and the power spectrum (a real FFT);
        loudness, spectral and silence features and the 16-band spectrum; voice activity.

        The voice activity model (Silero, ~3 ms of CPU per second of audio) runs in a thread,
        one hop per group: onnxruntime releases the GIL, so it runs beside the event loop on
        another core instead of stalling it (the numpy features stay inline). A process
        pinned to one CPU has no other core: there a small group's VAD runs inline too.
        The decoded samples are let go once the records are built (``Job.checked``)."""
        outcomes: Outcomes = [None] * len(jobs)
        timings: dict[str, float] = {}
        samples = sum(c.decoded.frames * c.decoded.channels for j in jobs for c in j.checked)

        async def step(name: str, items: list[list[T]], work: Callable[[list[T]], list[R]],
                       *, thread: bool = False) -> list[list[R]]:  # fmt: skip
            live = [i for i, outcome in enumerate(outcomes) if outcome is None]
            found, results, timings[name] = await self._grouped(
                [items[i] for i in live], work, samples, thread=thread
            )
            kept: list[list[R]] = [[] for _ in jobs]
            for i, outcome, result in zip(live, found, results, strict=True):
                outcomes[i], kept[i] = outcome, result
            return kept

        checked = [list(job.checked) for job in jobs]
        try:
            spectra = await step("transform", checked, _transform_all)
            zipped = [list(zip(c, s, strict=False)) for c, s in zip(checked, spectra, strict=True)]
            analyses = await step("metadata", zipped, _features_all)
            voiced = await step("vad", zipped, self.voice.all, thread=self.beside)
            for i, job in enumerate(jobs):
                if outcomes[i] is None:
                    found = zip(job.parts, job.checked, analyses[i], voiced[i], strict=True)
                    job.records = tuple(
                        ChunkRecord.build(job, part, c, _with(analysis, activity),
                                          {"validate": c.seconds, **timings}, pcm)
                        for part, c, analysis, (activity, pcm) in found
                    )  # fmt: skip
        finally:  # past this point (a timeout too) only the numbers are needed: a failed
            for job in jobs:  # job's sender may keep it a while, not its samples
                job.checked = ()
        return outcomes


def _with(analysis: dict[str, Any], activity: dict[str, Any]) -> dict[str, Any]:
    """*analysis* (a chunk's own, fresh from ``to_dict``) with the voice *activity* among its
    features."""
    analysis["features"].update(activity)
    return analysis


def _more(hold: Hold, samples: int) -> bool:
    return hold.more(samples * DECODED_BYTES_PER_SAMPLE)


def _body_samples(part: Part, container: str | None) -> int:
    """How many samples *part* decodes to, as far as its size tells (unknown: a number too
    big to inline)."""
    if part.raw is not None or container in (None, "wav"):  # PCM: by size
        return len(part.body) // 2
    return UNKNOWN_SAMPLES  # compressed: a small file can decode to minutes of audio


def _sums(parts: list[Part]) -> list[tuple[str, str | None]]:
    """Each part's checksum, and its container read from its magic (the one sniff it gets)."""
    return [
        (hashlib.sha256(p.body).hexdigest(), None if p.raw is not None else sniff_container(p.body))
        for p in parts
    ]


Spectrum = tuple[features.Float32Array, features.PowerSpectrum]  # a chunk's mono and spectrum


def _transform_all(checked: list[Checked]) -> list[Spectrum]:
    monos = [features.downmix(c.decoded.samples) for c in checked]
    spectra = features.power_spectra(monos, [c.decoded.sample_rate for c in checked])
    return list(zip(monos, spectra, strict=True))


def _features_all(items: list[tuple[Checked, Spectrum]]) -> list[dict[str, Any]]:
    samples = [c.decoded.samples for c, _ in items]
    monos = [mono for _, (mono, _) in items]
    spectra = [spectrum for _, (_, spectrum) in items]
    return [analysis.to_dict() for analysis in features.analyze_spectra(samples, monos, spectra)]


Voiced = tuple[dict[str, Any], bytes | None]  # a chunk's voice activity, and its 16 kHz PCM


@attrs.frozen
class Voice:
    """Voice activity of chunks, on the 16 kHz PCM that the transcriber also decodes."""

    mode: int
    gap_ms: float
    keep_pcm: bool

    def all(self, items: list[tuple[Checked, Spectrum]]) -> list[Voiced]:
        """Each chunk's voice activity (the fields it adds to ``features``) and its 16 kHz
        PCM when the transcriber is to have it (else None)."""
        pcms = [vad.speech_pcm(mono, c.decoded.sample_rate) for c, (mono, _) in items]
        found = vad.analyze_batch(pcms, self.mode, self.gap_ms)
        return [
            (activity.to_dict(), pcm.tobytes() if self.keep_pcm else None)
            for pcm, activity in zip(pcms, found, strict=True)
        ]
