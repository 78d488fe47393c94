"""Live sessions: how many real-time talkers one machine keeps up with, and how soon each
utterance's final words arrive after it ends.

    python -m trio_audio.bench.live [--sessions 1,2,4,8] [--seconds 30] [--server-arg=...]

A real ``trio-audio serve`` (the default speech engine unless ``--server-arg`` says
otherwise) on a fresh data dir; N WebSocket clients each stream speech in real time (100 ms
frames of 16 kHz PCM, paced by the clock): sentences with a second of silence between them,
each client starting at its own point of that cycle (talkers do not all pause at once).
For every final ``transcript`` with words a client receives (one per chunk, sent once the
chunk's transcript is stored), the latency is its arrival time minus the moment that chunk's
audio had been sent (its ``end_ms`` on the session timeline). A load is "kept" when the p95
latency is at most ``--within-s`` (1.5 s); "short window" counts the finals decoded in the
short window to keep their deadline. Not a test: nothing here
asserts; numbers go to stdout for the README.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import trio
from trio_websocket import open_websocket_url

from ..audio import vad
from .runner import run_server

RATE = 16000
FRAME_S = 0.1
SPEECH = Path(__file__).resolve().parent.parent.parent / "tests" / "fixtures" / "speech"


def talk(seconds: float, phase: float = 0.0) -> np.ndarray:
    """Speech (the committed espeak fixtures, in turn) with 1 s of silence after each,
    starting *phase* (0-1) of the way through that cycle."""
    pieces = []
    for path in sorted(SPEECH.glob("*.flac")):
        samples, rate = sf.read(path, dtype="float32")
        pieces += [vad.resample(samples, rate, RATE), np.zeros(RATE, np.float32)]
    one = np.concatenate(pieces)
    one = np.roll(one, -int(phase * one.size))
    reps = int(np.ceil(seconds * RATE / one.size))
    return np.tile(one, reps)[: int(seconds * RATE)]


async def client(url: str, n: int, audio: np.ndarray, latencies: list[tuple[float, bool]]) -> None:
    pcm = vad.to_pcm16(audio).astype("<i2").tobytes()
    step = int(FRAME_S * RATE) * 2
    fmt = {"encoding": "pcm_s16le", "sample_rate": RATE, "channels": 1}
    async with open_websocket_url(url) as ws:
        await ws.send_message(json.dumps(
            {"type": "start", "user_id": "bench", "session_id": f"live{n}", "format": fmt}
        ))  # fmt: skip
        json.loads(await ws.get_message())  # started
        began = trio.current_time()

        async def receive() -> None:
            while True:
                message: dict[str, Any] = json.loads(await ws.get_message())
                if (
                    message.get("type") == "transcript"
                    and message.get("is_final")
                    and (message.get("words"))
                ):
                    spoken = began + message["end_ms"] / 1000
                    short = bool(message.get("short_window"))
                    latencies.append((trio.current_time() - spoken, short))
                if message.get("type") == "session_end":
                    return

        async with trio.open_nursery() as nursery:
            nursery.start_soon(receive)
            for i, at in enumerate(range(0, len(pcm), step)):
                await trio.sleep_until(began + i * FRAME_S)  # real time: as it is recorded
                await ws.send_message(pcm[at : at + step])
            await ws.send_message(json.dumps({"type": "end"}))


async def one_load(
    sessions: int, seconds: float, server_args: list[str]
) -> list[tuple[float, bool]]:
    latencies: list[tuple[float, bool]] = []
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, "-m", "trio_audio", "serve", "--port", "0", "--ws-port", "0",
                   "--data-dir", str(Path(tmp) / "data"), "--log-level", "info",
                   *server_args]  # fmt: skip
        async with trio.open_nursery() as nursery:
            server = await nursery.start(run_server, command)
            await trio.sleep(5)  # the workers load their model (a cold start is not the point)
            async with trio.open_nursery() as clients:
                for n in range(sessions):  # talkers are independent: each at its own point
                    audio = talk(seconds, n / sessions)
                    clients.start_soon(client, server.ws_url, n, audio, latencies)
            nursery.cancel_scope.cancel()
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", default="1,2,4,6,8")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--within-s", type=float, default=1.5)
    parser.add_argument("--server-arg", action="append", default=[], dest="server_args")
    args = parser.parse_args()
    print(f"{'sessions':>8}  {'finals':>6}  {'p50 s':>6}  {'p95 s':>6}  {'max s':>6}  kept  "
          "short window")  # fmt: skip
    for sessions in (int(s) for s in args.sessions.split(",")):
        finals = trio.run(one_load, sessions, args.seconds, args.server_args)
        if not finals:
            print(f"{sessions:>8}  no finals")
            continue
        latencies = sorted(latency for latency, _ in finals)
        short = sum(s for _, s in finals)
        p95 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.95))]
        kept = "yes" if p95 <= args.within_s else "no"
        print(f"{sessions:>8}  {len(latencies):>6}  {statistics.median(latencies):6.2f}  "
              f"{p95:6.2f}  {latencies[-1]:6.2f}  {kept:>4}  {short}/{len(finals)}",
              flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
