"""Nothing a client sends, or how it sends it, takes the service down or locks others out:
memory stays within the budgets' formula (``trio_audio/memory.py``) and slow bodies do not
take the place of fast ones. Against real servers (a child process where RSS is measured)."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import soundfile as sf
import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from trio_audio.config import Config
from trio_audio.memory import worst_case_bytes

from .audio_samples import wav

ROOT = Path(__file__).resolve().parent.parent
MiB = 1024 * 1024
# Budgets small enough that the formula is a tight claim, the bombs as the issue had them.
LIMITS = {
    "max_body_bytes_inflight": 48 * MiB,
    "max_decoded_samples": 4 * MiB,
    "max_decoded_bytes_inflight": 128 * MiB,
    "ws_max_inflight_bytes": 32 * MiB,
    "ws_user_inflight_bytes": 32 * MiB,
}


def silence_flac(seconds: int, channels: int, rate: int) -> bytes:
    out = io.BytesIO()
    with sf.SoundFile(out, "w", rate, channels, format="FLAC") as sound:
        second = np.zeros((rate, channels), np.float32)
        for _ in range(seconds):
            sound.write(second)
    return out.getvalue()


def u8_wav(rate: int, size: int) -> bytes:
    """A WAV of 8-bit PCM silence: *size* bytes of samples, each a decoded float32."""
    fmt = (1).to_bytes(2, "little") + (1).to_bytes(2, "little") + rate.to_bytes(4, "little")
    fmt += rate.to_bytes(4, "little") + (1).to_bytes(2, "little") + (8).to_bytes(2, "little")
    riff = b"WAVEfmt " + len(fmt).to_bytes(4, "little") + fmt + b"data"
    riff += size.to_bytes(4, "little") + bytes(size)
    return b"RIFF" + len(riff).to_bytes(4, "little") + riff


def memory_kb(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmHWM", "VmRSS"):
            fields[name] = int(value.split()[0])
    return fields


class Child:
    """``trio-audio serve`` in a child process, logging to a file (nobody has to read it)."""

    def __init__(self, tmp_path: Path, **settings: Any) -> None:
        flags = [f"--{name.replace('_', '-')}={value}" for name, value in settings.items()]
        self.log = tmp_path / "serve.log"
        with self.log.open("w") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "trio_audio", "serve", "--port=0", "--ws-port=0",
                 f"--data-dir={tmp_path / 'data'}", "--asr-engine=none", *flags],
                stderr=log,
            )  # fmt: skip
        self.http = self.ws = ""

    async def ready(self) -> None:
        with trio.fail_after(60):
            while not self.ws:
                await trio.sleep(0.1)
                text = self.log.read_text()
                http = re.search(r"serving HTTP on (http://\S+),", text)
                ws = re.search(r"serving WebSocket on (ws://\S+)", text)
                if http and ws:
                    self.http, self.ws = http.group(1), ws.group(1)
                assert self.proc.poll() is None, text

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


async def test_bombs_are_refused_readably_within_the_memory_formula(tmp_path: Path) -> None:
    child = Child(tmp_path, **LIMITS)
    try:
        await child.ready()
        answers: Counter[Any] = Counter()
        async with httpx.AsyncClient(base_url=child.http, timeout=60) as client:
            ok = await client.post("/upload", params={"user_id": "u", "session_id": "warm"},
                                   content=wav())  # fmt: skip
            assert ok.status_code == 201
        base_kb = memory_kb(child.proc.pid)["VmRSS"]

        async def post(body: bytes, n: int, content_type: str) -> None:
            try:
                async with httpx.AsyncClient(base_url=child.http, timeout=60) as client:
                    response = await client.post(
                        "/upload", params={"user_id": f"u{n % 4}", "session_id": f"s{n}"},
                        content=body, headers={"Content-Type": content_type},
                    )  # fmt: skip
            except httpx.TransportError as exc:  # a dropped connection: never acceptable
                answers[type(exc).__name__] += 1
                return
            code = response.json().get("code", "stored")
            if response.status_code == 503:
                assert response.headers["retry-after"]
            answers[(response.status_code, code)] += 1

        async def stream(url: str, n: int, frame: bytes) -> None:
            pcm = {"encoding": "pcm_s16le", "sample_rate": 384000, "channels": 1}
            start = {"type": "start", "user_id": "w", "session_id": f"ws{n}", "format": pcm}
            async with open_websocket_url(url, max_message_size=64 * MiB) as ws:
                await ws.send_message(json.dumps(start))
                assert json.loads(await ws.get_message())["type"] == "started"
                try:
                    for _ in range(3):
                        await ws.send_message(frame)
                    while True:
                        message = json.loads(await ws.get_message())
                        if message["type"] == "error":
                            answers[("ws", message["code"])] += 1
                except ConnectionClosed as closed:
                    answers[("ws close", closed.reason.code)] += 1

        flac_bomb = silence_flac(60, 8, 384_000)  # ~200 KB: 184M samples, 737 MB of float32
        flac_big = silence_flac(10, 1, 384_000)  # under the limit: 3.84M samples
        body_bomb = u8_wav(384_000, 16_000_000)  # 16 MB: 16M samples
        frame = bytes(16 * MiB)  # 8M samples of 384 kHz PCM
        with trio.fail_after(120):
            async with trio.open_nursery() as nursery:
                for n in range(4):
                    nursery.start_soon(post, flac_bomb, n, "audio/flac")
                for n in range(4):
                    nursery.start_soon(post, flac_big, 10 + n, "audio/flac")
                for n in range(12):
                    nursery.start_soon(post, body_bomb, 20 + n, "audio/wav")
                nursery.start_soon(stream, child.ws, 0, frame)
                nursery.start_soon(stream, child.http.replace("http", "ws") + "/ws", 1, frame)
        peak_kb = memory_kb(child.proc.pid)["VmHWM"]
    finally:
        child.stop()
    # Every answer a readable one: stored, or refused with its code, never a reset.
    allowed = {(201, "stored"), (413, "payload_too_large"), (503, "overloaded"),
               ("ws", "payload_too_large"), ("ws", "overloaded"),
               ("ws close", 4413), ("ws close", 4429)}  # fmt: skip
    assert set(answers) <= allowed, answers
    assert answers[(413, "payload_too_large")] >= 4  # at least the FLAC bombs
    assert answers[("ws close", 4413)] + answers[("ws close", 4429)] == 2, answers
    bound = base_kb * 1024 + worst_case_bytes(Config(**LIMITS), sockets=2, users=1)
    print(f"peak {peak_kb // 1024} MiB, base {base_kb // 1024} MiB, bound {bound // MiB} MiB")
    assert peak_kb * 1024 <= bound, (peak_kb // 1024, bound // MiB, answers)


async def upload_rate(url: str, seconds: float) -> float:
    """Uploads a normal client gets stored per second, one after another."""
    stored = 0
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        started = trio.current_time()
        while trio.current_time() - started < seconds:
            response = await client.post(
                "/upload", params={"user_id": "normal", "session_id": "s"}, content=wav(440, 0.5)
            )
            stored += response.status_code == 201
        return stored / (trio.current_time() - started)


async def attackers(url: str, out: list[subprocess.CompletedProcess[bytes]]) -> None:
    command = [sys.executable, "-m", "tests.slow_bodies", url, "64", "2", "5"]
    out.append(await trio.run_process(command, cwd=ROOT, capture_stdout=True))


async def test_slow_bodies_do_not_lock_out_a_normal_client(tmp_path: Path) -> None:
    """64 connections that each declare 16 MiB and send 1,000 bytes every 2 s (the issue's
    attack, 2.5 times faster: cut after the grace, and back at once) cost a normal client at
    most a fifth of its goodput. Server, attackers and client run in processes of their own.

    The machine's other load makes one measurement noisy (2x between two quiet seconds), so
    a round is: alone, then beside the attack; the best of three rounds counts. Before the
    fix every round was near zero: the attack held every upload slot."""
    child = Child(tmp_path, min_upload_bytes_per_s=4000, upload_grace_s=2)
    rounds: list[tuple[float, float, dict[str, int]]] = []
    try:
        await child.ready()
        for _ in range(3):
            alone = await upload_rate(child.http, 2)
            attack: list[subprocess.CompletedProcess[bytes]] = []
            async with trio.open_nursery() as nursery:
                nursery.start_soon(attackers, child.http, attack)
                await trio.sleep(2.5)  # past the grace: they are being cut and come back
                beside = await upload_rate(child.http, 2)
            rounds.append((beside, alone, json.loads(attack[0].stdout)))
            if beside >= 0.8 * alone:
                break
    finally:
        child.stop()
    for _, _, answers in rounds:
        assert set(answers) == {"HTTP/1.1 408"}, answers  # cut for their pace, each answered
    assert max(beside / alone for beside, alone, _ in rounds) >= 0.8, rounds
