"""The stage loop and the ingress, one stage at a time through real channel pairs."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from trio_audio.errors import InvalidAudio, Overloaded
from trio_audio.metrics import Metrics
from trio_audio.models import Job, Part
from trio_audio.pipeline.pipeline import Ingress
from trio_audio.pipeline.stages import Stage, run_stage

from .audio_samples import wav


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

    stage = Stage("validate", work, workers=3, timeout_s=1)
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
        nursery.start_soon(run_stage, Stage("validate", work, 1, 1), receive_in, send_out, metrics)
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
        stage = Stage("transform", gate, workers=1, timeout_s=5)
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
        nursery.start_soon(run_stage, Stage("metadata", gate, 1, 60), receive_in, send_out, metrics)
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
