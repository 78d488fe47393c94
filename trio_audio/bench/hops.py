"""CPU per job of a pipeline stage hop: jobs through 1 or 3 chained stages of the real stage
loop (``pipeline.stages.run_stage``), whose work does nothing.

What the difference costs is what a stage that only hands its jobs on costs: a channel, a
worker's wake-up, its group and its deadline scope. A few jobs are kept in flight (as a few
sockets' frames are), so groups stay small, as they are at a moderate load. Timed with the
process's CPU clock; pin it to one CPU (``taskset -c 0``) for steadier figures.

Run: ``python -m trio_audio.bench.hops [--jobs N] [--in-flight K] [--rounds R]``.
"""

from __future__ import annotations

import argparse
import time

import trio

from ..metrics import Metrics
from ..models import Job, Part
from ..pipeline.stages import Outcomes, Stage, run_stage

QUEUE = 8  # the default stage_queue
WORKERS = 2  # the default stage_workers


async def _nothing(jobs: list[Job]) -> Outcomes:
    return [None] * len(jobs)


async def chain(stages: int, jobs: int, in_flight: int) -> float:
    """Seconds of CPU per job through *stages* chained no-op stages."""
    metrics = Metrics()
    first, receive = trio.open_memory_channel[Job](QUEUE)
    async with trio.open_nursery() as nursery:
        for _ in range(stages):
            send, after = trio.open_memory_channel[Job](QUEUE)
            stage = Stage("hop", _nothing, WORKERS, 10.0, QUEUE)
            nursery.start_soon(run_stage, stage, receive, send, metrics)
            receive = after
        started = time.process_time()
        async with first, receive:
            sent = done = 0
            while done < jobs:
                while sent < jobs and sent - done < in_flight:
                    await first.send(Job("u", "s", [Part(bytes(3200), "audio/pcm")]))
                    sent += 1
                await receive.receive()
                done += 1
        return (time.process_time() - started) / jobs


async def _main(jobs: int, in_flight: int, rounds: int) -> None:
    for _ in range(rounds):
        one = await chain(1, jobs, in_flight)
        three = await chain(3, jobs, in_flight)
        print(f"1 stage: {one * 1e6:6.1f} us/job   3 stages: {three * 1e6:6.1f} us/job   "
              f"a hop: {(three - one) / 2 * 1e6:5.1f} us/job")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m trio_audio.bench.hops")
    parser.add_argument("--jobs", type=int, default=20000)
    parser.add_argument("--in-flight", type=int, default=8, help="must stay below 2x the queue")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    trio.run(_main, args.jobs, args.in_flight, args.rounds)


if __name__ == "__main__":
    main()
