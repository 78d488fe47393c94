"""The stage loop and the ingress, one stage at a time through real channel pairs."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import numpy as np
import pytest
import trio
import trio.testing

from trio_audio.audio import decode as decode_module
from trio_audio.audio.decode import RawFormat
from trio_audio.config import Config
from trio_audio.errors import InvalidAudio, Overloaded
from trio_audio.metrics import Metrics
from trio_audio.models import Job, Part
from trio_audio.pipeline import stages as stages_module
from trio_audio.pipeline.pipeline import Ingress
from trio_audio.pipeline.stages import Outcomes, Stage, Stages, Work, run_stage, take_waiting

from .audio_samples import encode, sine, wav
from .speech import FIXTURE_TEXTS, speak


def each(work: Callable[[Job], Awaitable[None]]) -> Work:
    """Work on one job as work on a group: job after job, each failure its job's own."""

    async def run(jobs: list[Job]) -> Outcomes:
        outcomes: Outcomes = []
        for job in jobs:
            try:
                await work(job)
            except Exception as exc:
                outcomes.append(exc)
            else:
                outcomes.append(None)
        return outcomes

    return run


def job(body: bytes = b"") -> Job:
    return Job(user_id="u", session_id="s", parts=[Part(body=body, content_type="audio/wav")])


class Gate:
    """A stage's work that waits until the test opens it (to hold jobs inside a stage)."""

    def __init__(self) -> None:
        self.open = trio.Event()
        self.seen: list[Job] = []

    async def __call__(self, job: Job) -> None:
        self.seen.append(job)
        await self.open.wait()


async def test_jobs_pass_through_and_the_end_of_stream_passes_down() -> None:
    send_in, receive_in = trio.open_memory_channel[Job](4)
    send_out, receive_out = trio.open_memory_channel[Job](4)
    metrics = Metrics()
    done: list[int] = []

    async def work(j: Job) -> None:
        done.append(len(j.parts[0].body))

    stage = Stage("validate", each(work), workers=3, timeout_s=1)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_stage, stage, receive_in, send_out, metrics)
        async with send_in:
            for n in range(5):
                await send_in.send(job(b"x" * n))
        got = [j async for j in receive_out]  # ends: every worker closed its output clone
    assert sorted(len(j.parts[0].body) for j in got) == [0, 1, 2, 3, 4]
    assert metrics.stages["validate"].count == 5


async def test_a_failing_job_is_answered_and_goes_no_further() -> None:
    send_in, receive_in = trio.open_memory_channel[Job](4)
    send_out, receive_out = trio.open_memory_channel[Job](4)
    metrics = Metrics()

    async def work(j: Job) -> None:
        if not j.parts[0].body:
            raise InvalidAudio("empty")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            run_stage, Stage("validate", each(work), 1, 1), receive_in, send_out, metrics
        )
        bad, good = job(b""), job(b"ok")
        async with send_in:
            await send_in.send(bad)
            await send_in.send(good)
        assert [j async for j in receive_out] == [good]
    with pytest.raises(InvalidAudio):
        await bad.reply.wait()
    assert metrics.failures["invalid_audio"] == 1


async def test_a_slow_job_times_out_explicitly(autojump_clock: trio.testing.MockClock) -> None:
    send_in, receive_in = trio.open_memory_channel[Job](4)
    send_out, receive_out = trio.open_memory_channel[Job](4)
    gate = Gate()
    async with trio.open_nursery() as nursery:
        stage = Stage("transform", each(gate), workers=1, timeout_s=5)
        nursery.start_soon(run_stage, stage, receive_in, send_out, Metrics())
        slow = job(b"slow")
        await send_in.send(slow)
        with pytest.raises(Overloaded, match="transform stage took longer than 5 s"):
            await slow.reply.wait()
        gate.open.set()
        fast = job(b"fast")
        await send_in.send(fast)
        assert await receive_out.receive() is fast
        await send_in.aclose()


async def test_a_blocked_stage_fills_its_queue_then_the_ingress_refuses() -> None:
    metrics = Metrics()
    ingress_send, receive_in = trio.open_memory_channel[Job](2)
    ingress = Ingress(ingress_send, metrics, retry_after_s=3)
    send_out, receive_out = trio.open_memory_channel[Job](1)
    gate = Gate()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            run_stage, Stage("metadata", each(gate), 1, 60), receive_in, send_out, metrics
        )
        jobs = [job(wav()) for _ in range(3)]
        for j in jobs:
            ingress.submit_nowait(j)
            await trio.testing.wait_all_tasks_blocked()
        # One job is held in the stage, two wait in the queue: the next is refused at once.
        assert len(gate.seen) == 1
        assert ingress_send.statistics().current_buffer_used == 2
        assert ingress.full
        with pytest.raises(Overloaded) as refused:
            ingress.submit_nowait(job())
        assert refused.value.retry_after == 3
        assert metrics.refused["queue_full"] == 1 and metrics.accepted_total == 3
        gate.open.set()
        await ingress.aclose()
        assert [j async for j in receive_out] == jobs  # nothing accepted was dropped


async def test_jobs_waiting_together_are_one_group_and_a_bad_one_fails_alone() -> None:
    send_in, receive_in = trio.open_memory_channel[Job](8)
    send_out, receive_out = trio.open_memory_channel[Job](8)
    metrics = Metrics()
    groups: list[list[bytes]] = []

    async def work(jobs: list[Job]) -> Outcomes:
        groups.append([j.parts[0].body for j in jobs])
        return [None if j.parts[0].body else InvalidAudio("empty") for j in jobs]

    jobs = [job(b"a"), job(b""), job(b"c"), job(b"d"), job(b"e")]
    for j in jobs:  # all waiting before the stage starts: they arrive together
        send_in.send_nowait(j)
    async with trio.open_nursery() as nursery:
        stage = Stage("transform", work, workers=1, timeout_s=1, group_max=4)
        nursery.start_soon(run_stage, stage, receive_in, send_out, metrics)
        await send_in.aclose()
        got = [j async for j in receive_out]
    assert groups == [[b"a", b"", b"c", b"d"], [b"e"]]  # at most group_max, in order
    assert got == [jobs[0], jobs[2], jobs[3], jobs[4]]
    with pytest.raises(InvalidAudio):
        await jobs[1].reply.wait()
    assert metrics.failures["invalid_audio"] == 1
    assert metrics.stages["transform"].count == 4


async def test_a_group_stops_growing_at_its_byte_budget() -> None:
    send, receive = trio.open_memory_channel[Job](8)
    jobs = [job(b"x" * 400_000) for _ in range(5)]
    for j in jobs:
        send.send_nowait(j)
    first = receive.receive_nowait()
    assert take_waiting(first, receive, 32, max_bytes=1_000_000) == jobs[:3]  # 1.2 MB: stop
    assert take_waiting(receive.receive_nowait(), receive, 32, max_bytes=1_000_000) == jobs[3:]
    big = job(b"x" * 2_000_000)
    send.send_nowait(job(b"small"))
    assert take_waiting(big, receive, 32, max_bytes=1_000_000) == [big]  # alone


async def test_a_group_that_times_out_fails_each_of_its_jobs(
    autojump_clock: trio.testing.MockClock,
) -> None:
    send_in, receive_in = trio.open_memory_channel[Job](4)
    send_out, _receive_out = trio.open_memory_channel[Job](4)
    metrics = Metrics()

    async def stuck(jobs: list[Job]) -> Outcomes:
        await trio.sleep_forever()
        raise AssertionError

    jobs = [job(b"1"), job(b"2")]
    for j in jobs:
        send_in.send_nowait(j)
    async with trio.open_nursery() as nursery:
        stage = Stage("metadata", stuck, workers=1, timeout_s=2, group_max=8)
        nursery.start_soon(run_stage, stage, receive_in, send_out, metrics)
        for j in jobs:
            with pytest.raises(Overloaded, match="metadata stage took longer than 2 s"):
                await j.reply.wait()
        await send_in.aclose()
    assert metrics.failures["timeout"] == 2


PCM = RawFormat("pcm_s16le", 16000, 1)


def chunk_jobs() -> list[Job]:
    """Speech cut into 100 ms and 1 s chunks, tones, noise, silence, stereo, and one bad WAV."""
    bodies: list[tuple[bytes, str]] = []
    for text in FIXTURE_TEXTS[:2]:
        pcm = (speak(text) * 32767).astype("<i2").tobytes()
        bodies += [(pcm[i : i + 3200], "raw") for i in range(0, 3200 * 6, 3200)]
        bodies.append((pcm[3200 * 6 : 3200 * 6 + 32000], "raw"))
    noise = np.random.default_rng(5).uniform(-0.3, 0.3, (1600, 1)).astype(np.float32)
    bodies += [(wav(440, 0.1), "wav"), (wav(1000, 0.1), "wav"), (encode(noise, 16000), "wav"),
               (b"RIFF not really", "wav"), (wav(300, 0.1, 48000, 2), "wav"),
               (encode(np.zeros((1600, 1), np.float32), 16000), "wav"),
               (encode(sine(200, 1.0), 16000), "wav")]  # fmt: skip
    return [
        Job(user_id="u", session_id="s", parts=[
            Part(body=body, content_type="audio/pcm" if kind == "raw" else "audio/wav",
                 raw=PCM if kind == "raw" else None)])
        for body, kind in bodies
    ]  # fmt: skip


async def run_stages(stages: Stages, jobs: list[Job]) -> Outcomes:
    outcomes: Outcomes = [None] * len(jobs)
    for step in (stages.validate, stages.analyse):
        live = [i for i, outcome in enumerate(outcomes) if outcome is None]
        for i, outcome in zip(live, await step([jobs[i] for i in live]), strict=True):
            outcomes[i] = outcome
    return outcomes


async def test_a_group_through_the_real_stages_gets_what_each_job_gets_alone() -> None:
    stages = Stages(Config(asr_engine="none"), trio.CapacityLimiter(2))
    alone, together = chunk_jobs(), chunk_jobs()
    alone_outcomes = [(await run_stages(stages, [j]))[0] for j in alone]
    together_outcomes = await run_stages(stages, together)
    assert [type(o) for o in alone_outcomes] == [type(o) for o in together_outcomes]
    assert isinstance(together_outcomes[-4], InvalidAudio)  # the bad WAV fails alone
    assert sum(o is None for o in together_outcomes) == len(together) - 1
    speech = 0
    for one, grouped in zip(alone, together, strict=True):
        assert not one.checked and not grouped.checked  # the samples were let go
        if not one.records:
            assert not grouped.records
            continue
        (a,), (b,) = one.records, grouped.records
        assert a.checksum == b.checksum and a.audio == b.audio
        for key, value in a.features.items():
            if key == "speech_segments":
                assert len(b.features[key]) == len(value)
                for got, want in zip(b.features[key], value, strict=True):
                    assert got == pytest.approx(want, abs=0.1)
            else:
                assert b.features[key] == pytest.approx(value, abs=1e-3), key
        assert b.spectrum["band_db"] == pytest.approx(a.spectrum["band_db"], abs=1e-3)
        assert set(b.processing_ms) == {"validate", "transform", "metadata", "vad"}
        speech += a.features["speech_ratio"] > 0.5
    assert speech >= 4  # the speech chunks were really speech, so the comparison means something


async def test_a_bad_chunk_in_a_group_costs_the_others_no_second_decode(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    decoded: list[bytes] = []
    real_decode = stages_module.decode

    def counting(body: bytes, **kwargs: object) -> object:
        decoded.append(body)
        return real_decode(body, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(stages_module, "decode", counting)
    stages = Stages(Config(asr_engine="none"), trio.CapacityLimiter(2))
    jobs = chunk_jobs()
    outcomes = await stages.validate(jobs)
    assert [isinstance(o, InvalidAudio) for o in outcomes].count(True) == 1
    assert len(decoded) == len(jobs)  # each body decoded once, the bad one included


async def test_validate_reads_each_chunk_s_magic_once(monkeypatch: pytest.MonkeyPatch) -> None:
    sniffed: list[bytes] = []
    real_sniff = decode_module.sniff_container

    def counting(data: bytes) -> str | None:
        sniffed.append(data)
        return real_sniff(data)

    monkeypatch.setattr(decode_module, "sniff_container", counting)
    monkeypatch.setattr(stages_module, "sniff_container", counting)
    stages = Stages(Config(asr_engine="none"), trio.CapacityLimiter(2))
    jobs = [job for job in chunk_jobs() if job.parts[0].raw is None]
    outcomes = await stages.validate(jobs)
    assert len(sniffed) == len(jobs)  # once each (the size estimate and decode share it)
    for job, outcome in zip(jobs, outcomes, strict=True):
        if outcome is None:
            (checked,) = job.checked
            assert checked.container == "wav" and checked.decoded.container == "wav"
        else:
            assert not job.checked
