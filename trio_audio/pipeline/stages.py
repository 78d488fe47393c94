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
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Final

import attrs
import trio

from ..audio import features, vad
from ..audio.decode import Allowance, decode, decoded_samples_bound, sniff_container
from ..budget import ByteBudget, Hold
from ..config import DECODED_BYTES_PER_SAMPLE, Config
from ..errors import InternalError, Overloaded, ServiceError
from ..metrics import Metrics
from ..models import Job, Part

logger = logging.getLogger("trio_audio.pipeline")

UNKNOWN_SAMPLES: Final = 2**62
COMPRESSED_SAMPLES_PER_BYTE: Final = 8  # a first guess at what compressed audio decodes to
GROUP_MAX: Final = 32  # jobs one worker takes at once (bounded by what is already waiting)
# A group stops growing once its bodies reach this: big (or compressed) chunks go alone or
# nearly so, so a group's work stays within the timeout each of its chunks would have had.
GROUP_MAX_BYTES: Final = 1 << 20

Outcomes = list[BaseException | None]  # per job of a group: None (done) or why it failed
Work = Callable[[list[Job]], Awaitable[Outcomes]]


@attrs.frozen
class Stage:
    """A named step of the pipeline: what it does to a group of jobs, with how many workers.

    ``group_max`` is how many waiting jobs one worker takes at once (1: one at a time)."""

    name: str
    work: Work
    workers: int
    timeout_s: float
    group_max: int = 1


def take_waiting(
    first: Job, receive: trio.MemoryReceiveChannel[Job], most: int, max_bytes: int = GROUP_MAX_BYTES
) -> list[Job]:
    """*first* and the jobs already waiting behind it: at most *most*, and no more once their
    bodies add up to *max_bytes*; never waits."""
    group = [first]
    size = _body_bytes(first)
    while len(group) < most and size < max_bytes:
        try:
            job = receive.receive_nowait()
        except (trio.WouldBlock, trio.EndOfChannel):
            break
        group.append(job)
        size += _body_bytes(job)
    return group


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
        jobs: list[Job],
        name: str,
        together: Callable[[list[Part]], None],
        *,
        vectorised: bool = True,
        thread: bool = False,
    ) -> Outcomes:
        """The parts of every job as one piece of CPU work (timed; with *thread*: always in a
        thread, for work that releases the GIL). *vectorised*: *together* on all of them at
        once, and if that fails, on each job's parts alone, so a bad chunk fails its own job
        only; otherwise (work that goes part by part anyway) each job's parts alone from the
        start, so a bad chunk costs the others nothing twice."""
        outcomes: Outcomes = [None] * len(jobs)
        parts = [part for job in jobs for part in job.parts]

        def each_alone() -> None:
            for index, job in enumerate(jobs):
                try:
                    together(job.parts)
                except Exception as exc:
                    outcomes[index] = exc

        def run() -> None:
            started = time.perf_counter()
            if vectorised and len(jobs) > 1:
                try:
                    together(parts)
                except Exception:
                    each_alone()
            else:
                each_alone()
            share = (time.perf_counter() - started) / max(1, len(parts))
            for part in parts:
                part.timings[name] = share

        await self._cpu(sum(_work_samples(part) for part in parts), run, thread=thread)
        return outcomes

    async def validate(self, jobs: list[Job]) -> Outcomes:
        """Checksum and decode every part (whether a part is a retry is the committer's call).

        Decoded audio is held within ``max_decoded_bytes_inflight``: each job first takes room
        for what its bodies say they decode to (the group's first waits for it a bounded
        time, the others take it at once, else 503), and each decode takes more as it reads
        past that, or fails with 503. The room is given
        back when the samples are let go (``Hold.hand_over``)."""
        parts = [part for job in jobs for part in job.parts]
        await self._cpu(sum(len(p.body) for p in parts) // 2, lambda: _checksum_all(parts))
        holds: dict[int, Hold] = {}
        outcomes: Outcomes = []
        for job in jobs:
            size = sum(self._first_guess(part) for part in job.parts) * DECODED_BYTES_PER_SAMPLE
            # Only a group that holds nothing yet waits for room: what it waits for could
            # otherwise be its own, held until the group is done.
            if await self.decoded.take(size, 0 if holds else self.room_wait_s):
                hold = Hold(self.decoded, size)
                holds.update((id(part), hold) for part in job.parts)
                outcomes.append(None)
            else:
                msg = "no memory free to decode this audio now; retry after the delay given"
                outcomes.append(Overloaded(msg))
        live = [job for job, outcome in zip(jobs, outcomes, strict=True) if outcome is None]
        try:
            decode_all = partial(self._decode_all, holds)
            found = iter(await self._grouped(live, "validate", decode_all, vectorised=False))
        finally:
            for hold in set(holds.values()):
                hold.release()  # what a decode kept is the samples'; the rest goes back
        return [next(found) if outcome is None else outcome for outcome in outcomes]

    def _first_guess(self, part: Part) -> int:
        """The samples to take room for before decoding *part* (the decode takes more as it
        needs); none when its header says it is over the limit: refused before it decodes."""
        bound = decoded_samples_bound(part.body, part.raw, part.container)
        if bound is None:
            bound = len(part.body) * COMPRESSED_SAMPLES_PER_BYTE
        elif bound > self.max_samples and part.raw is None and part.container != "wav":
            return 0
        return min(bound, self.max_samples)

    def _decode_all(self, holds: dict[int, Hold], parts: list[Part]) -> None:
        """Decode one job's *parts* within its hold, ``max_decoded_samples`` in all; a refusal
        names its part (its index in *parts*, which are one job's: see ``_grouped``)."""
        left = self.max_samples
        for index, part in enumerate(parts):
            hold = holds[id(part)]
            allowance = Allowance(hold.size // DECODED_BYTES_PER_SAMPLE, partial(_more, hold))
            try:
                decoded = decode(
                    part.body,
                    content_type=part.content_type,
                    raw=part.raw,
                    container=part.container,  # sniffed in ``_checksum_all``
                    max_duration_s=self.max_duration_s,
                    max_samples=left,
                    allowance=allowance,
                )
            except ServiceError as exc:
                raise exc.of_part(index) from None
            samples = decoded.frames * decoded.channels
            left -= samples
            hold.hand_over(decoded, samples * DECODED_BYTES_PER_SAMPLE)
            part.decoded = decoded

    async def transform(self, jobs: list[Job]) -> Outcomes:
        """Downmix to mono float32 and take the power spectrum (a real FFT), chunks of one
        shape in one step."""
        return await self._grouped(jobs, "transform", _transform_all)

    async def metadata(self, jobs: list[Job]) -> Outcomes:
        """Loudness, spectral and silence features and the 16-band spectrum, then voice
        activity, each for the whole group in one step.

        The voice activity model (Silero, ~3 ms of CPU per second of audio) runs in a thread,
        one hop per group: onnxruntime releases the GIL, so it runs beside the event loop on
        another core instead of stalling it (the numpy features stay inline). A process
        pinned to one CPU has no other core: there a small group's VAD runs inline too."""
        outcomes = await self._grouped(jobs, "metadata", _features_all)
        live = [job for job, outcome in zip(jobs, outcomes, strict=True) if outcome is None]
        found = await self._grouped(live, "vad", self.voice.all, thread=self.beside) if live else []
        voiced = iter(found)
        return [next(voiced) if outcome is None else outcome for outcome in outcomes]


def _more(hold: Hold, samples: int) -> bool:
    return hold.more(samples * DECODED_BYTES_PER_SAMPLE)


def _work_samples(part: Part) -> int:
    """How many samples a stage handles for *part* (unknown: a number too big to inline)."""
    if part.decoded is not None:
        return part.decoded.frames * part.decoded.channels
    if part.raw is not None or part.container in (None, "wav"):  # PCM: by size
        return len(part.body) // 2
    return UNKNOWN_SAMPLES  # compressed: a small file can decode to minutes of audio


def _checksum_all(parts: list[Part]) -> None:
    """Checksum each part, and read its container from its magic (the one sniff it gets)."""
    for part in parts:
        part.checksum = hashlib.sha256(part.body).hexdigest()
        if part.raw is None:
            part.container = sniff_container(part.body)


def _transform_all(parts: list[Part]) -> None:
    monos, rates = [], []
    for part in parts:
        assert part.decoded is not None
        monos.append(features.downmix(part.decoded.samples))
        rates.append(part.decoded.sample_rate)
    for part, mono, spectrum in zip(
        parts, monos, features.power_spectra(monos, rates), strict=True
    ):
        part.mono, part.spectrum = mono, spectrum


def _features_all(parts: list[Part]) -> None:
    samples, monos, spectra = [], [], []
    for part in parts:
        assert part.decoded is not None and part.mono is not None and part.spectrum is not None
        samples.append(part.decoded.samples)
        monos.append(part.mono)
        spectra.append(part.spectrum)
    analyses = features.analyze_spectra(samples, monos, spectra)
    for part, analysis in zip(parts, analyses, strict=True):
        part.analysis = analysis.to_dict()


@attrs.frozen
class Voice:
    """Voice activity of chunks, on the 16 kHz PCM that the transcriber also decodes."""

    mode: int
    gap_ms: float
    keep_pcm: bool

    def all(self, parts: list[Part]) -> None:
        pcms = [self._pcm(part) for part in parts]
        found = vad.analyze_batch(pcms, self.mode, self.gap_ms)
        for part, pcm, activity in zip(parts, pcms, found, strict=True):
            self._done(part, pcm, activity)

    @staticmethod
    def _pcm(part: Part) -> vad.Int16Array:
        assert part.decoded is not None and part.mono is not None and part.analysis is not None
        return vad.speech_pcm(part.mono, part.decoded.sample_rate)

    def _done(self, part: Part, pcm: vad.Int16Array, activity: vad.VoiceActivity) -> None:
        assert part.decoded is not None and part.analysis is not None
        part.analysis["features"].update(activity.to_dict())
        part.speech_pcm = pcm.tobytes() if self.keep_pcm else None
        # Past this point only the numbers are needed: let the samples go before the store.
        decoded = part.decoded
        part.audio_info = {
            "container": decoded.container,
            "encoding": decoded.encoding,
            "sample_rate": decoded.sample_rate,
            "channels": decoded.channels,
            "frames": decoded.frames,
            "duration_ms": round(decoded.duration_ms, 3),
        }
        part.decoded = part.mono = part.spectrum = None
