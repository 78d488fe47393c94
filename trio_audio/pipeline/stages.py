"""The stage loop every pipeline stage shares, and the work each stage does to a job.

A stage is a pool of workers over one channel pair. Each worker owns clones of both ends and
closes them with ``async with``, so when the upstream ends the stream, the end passes down.
Each job runs under the stage's own timeout. A job that fails is answered there and then
(its sender is told) and goes no further; nothing is dropped in silence.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Final

import attrs
import trio

from ..audio import features, vad
from ..audio.decode import decode, sniff_container
from ..config import Config
from ..errors import InternalError, Overloaded, ServiceError
from ..metrics import Metrics
from ..models import Job, Part

logger = logging.getLogger("trio_audio.pipeline")

UNKNOWN_SAMPLES: Final = 2**62

Work = Callable[[Job], Awaitable[None]]


@attrs.frozen
class Stage:
    """A named step of the pipeline: what it does to a job, with how many workers."""

    name: str
    work: Work
    workers: int
    timeout_s: float


async def run_worker(
    stage: Stage,
    receive: trio.MemoryReceiveChannel[Job],
    send: trio.MemorySendChannel[Job],
    metrics: Metrics,
) -> None:
    """``async for job in receive: work; send`` with a per-job timeout and explicit failure."""
    async with receive, send:
        async for job in receive:
            if job.reply.done:  # answered already (e.g. its sender gave up): nothing to do
                continue
            started = trio.current_time()
            try:
                with trio.fail_after(stage.timeout_s):
                    await stage.work(job)
            except trio.TooSlowError:
                metrics.failed("timeout")
                msg = f"the {stage.name} stage took longer than {stage.timeout_s:g} s"
                job.reply.fail(Overloaded(msg))
                continue
            except ServiceError as exc:
                metrics.failed(exc.code)
                job.reply.fail(exc)
                continue
            except Exception:
                logger.exception("%s failed on a job of session %s", stage.name, job.session_id)
                metrics.failed("internal")
                job.reply.fail(InternalError(f"the {stage.name} stage failed"))
                continue
            metrics.observe_stage(stage.name, trio.current_time() - started)
            await send.send(job)


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
        self.inline_max_samples = config.inline_max_samples

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

    async def _each_part(
        self, job: Job, name: str, fn: Callable[[Part], None], *, thread: bool = False
    ) -> None:
        """Run *fn* on every part of *job*, timed, as one piece of CPU work (with *thread*:
        always in a thread, for work that releases the GIL)."""
        parts = job.parts

        def run() -> None:
            for part in parts:
                started = time.perf_counter()
                fn(part)
                part.timings[name] = time.perf_counter() - started

        await self._cpu(sum(_work_samples(part) for part in parts), run, thread=thread)

    async def validate(self, job: Job) -> None:
        """Checksum and decode every part (whether a part is a retry is the committer's call)."""
        await self._cpu(
            sum(len(p.body) for p in job.parts) // 2, functools.partial(_checksum_all, job.parts)
        )
        await self._each_part(job, "validate", self._decode)

    def _decode(self, part: Part) -> None:
        part.decoded = decode(
            part.body,
            content_type=part.content_type,
            raw=part.raw,
            max_duration_s=self.max_duration_s,
        )

    async def transform(self, job: Job) -> None:
        """Downmix to mono float32 and take the power spectrum (a real FFT)."""
        await self._each_part(job, "transform", _transform)

    async def metadata(self, job: Job) -> None:
        """Loudness, spectral and silence features and the 16-band spectrum, then voice
        activity.

        The voice activity model (Silero, ~3 ms of CPU per second of audio) runs in a thread
        for every chunk: onnxruntime releases the GIL, so it runs beside the event loop on
        another core instead of stalling it (the numpy features, ~0.3 ms, stay inline)."""
        config = self.config
        await self._each_part(job, "metadata", _features)
        voice = functools.partial(
            _voice,
            vad_mode=config.vad_mode,
            vad_gap_ms=config.vad_gap_ms,
            keep_pcm=config.asr_engine != "none",
        )
        await self._each_part(job, "vad", voice, thread=True)


def _work_samples(part: Part) -> int:
    """How many samples a stage handles for *part* (unknown: a number too big to inline)."""
    if part.decoded is not None:
        return part.decoded.frames * part.decoded.channels
    if part.raw is not None or sniff_container(part.body) in (None, "wav"):  # PCM: by size
        return len(part.body) // 2
    return UNKNOWN_SAMPLES  # compressed: a small file can decode to minutes of audio


def _checksum_all(parts: list[Part]) -> None:
    for part in parts:
        part.checksum = hashlib.sha256(part.body).hexdigest()


def _transform(part: Part) -> None:
    assert part.decoded is not None
    part.mono = features.downmix(part.decoded.samples)
    part.spectrum = features.power_spectrum(part.mono, part.decoded.sample_rate)


def _features(part: Part) -> None:
    assert part.decoded is not None and part.mono is not None and part.spectrum is not None
    analysis = features.analyze_spectrum(part.decoded.samples, part.mono, part.spectrum)
    part.analysis = analysis.to_dict()


def _voice(part: Part, *, vad_mode: int, vad_gap_ms: float, keep_pcm: bool) -> None:
    assert part.decoded is not None and part.mono is not None and part.analysis is not None
    # Voice activity on 16 kHz PCM, which is also what the transcriber decodes.
    pcm = vad.speech_pcm(part.mono, part.decoded.sample_rate)
    part.analysis["features"].update(vad.analyze(pcm, vad_mode, vad_gap_ms).to_dict())
    part.speech_pcm = pcm.tobytes() if keep_pcm else None
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
