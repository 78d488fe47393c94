"""kill -9 at random moments: every acknowledged chunk survives, exactly once.

The real server runs as a subprocess; client threads upload with explicit seqs and record
every chunk the server acknowledged. After each SIGKILL the server restarts on the same data
dir, every acknowledged chunk must be there with the same metadata and audio bytes, no
(session, seq) holds two chunks, the uploads cut off by the kill are retried with the same
seq and bytes (which must never conflict), and new uploads are taken.

``TRIO_AUDIO_CRASH_ROUNDS`` sets the number of kills (``nox -s crash`` runs many).
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from trio_websocket import open_websocket_url

from .processes import Process
from .test_ws import FORMAT

ROUNDS = int(os.environ.get("TRIO_AUDIO_CRASH_ROUNDS", "3"))
WRITERS = 3
STABLE = ("offset_ms", "transcript")  # may legitimately change after a restart


def body_for(session: str, seq: int) -> bytes:
    return random.Random(f"{session}/{seq}").randbytes(1600)  # 50 ms of noise as PCM


def params(session: str, seq: int) -> dict[str, Any]:
    return {"user_id": "crash", "session_id": session, "seq": seq, "encoding": "pcm_s16le",
            "sample_rate": 16000, "channels": 1}  # fmt: skip


def same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return {k: v for k, v in a.items() if k not in STABLE} == {
        k: v for k, v in b.items() if k not in STABLE
    }


class Ledger:
    """What the clients were told, per (session, seq)."""

    def __init__(self) -> None:
        self.acked: dict[tuple[str, int], dict[str, Any]] = {}
        self.in_flight: dict[str, int] = {}  # session -> seq sent, answer not received
        self.next_seq: dict[str, int] = {}
        self.lock = threading.Lock()

    def upload(self, client: httpx.Client, session: str, seq: int) -> dict[str, Any]:
        response = client.post("/upload", params=params(session, seq),
                               content=body_for(session, seq))  # fmt: skip
        assert response.status_code in (200, 201), response.text  # never a seq_conflict
        chunk: dict[str, Any] = response.json()
        assert chunk["seq"] == seq
        previous = self.acked.get((session, seq))
        assert previous is None or previous["chunk_id"] == chunk["chunk_id"]
        with self.lock:
            self.acked[(session, seq)] = chunk
        return chunk

    def writer(self, url: str, session: str, stop: threading.Event) -> None:
        with httpx.Client(base_url=url, timeout=10) as client:
            while not stop.is_set():
                seq = self.next_seq.get(session, 0)
                self.in_flight[session] = seq
                try:
                    self.upload(client, session, seq)
                except httpx.HTTPError:
                    return  # killed: the seq stays in flight, retried after the restart
                del self.in_flight[session]
                self.next_seq[session] = seq + 1


def verify(url: str, ledger: Ledger) -> None:
    with httpx.Client(base_url=url, timeout=30) as client:
        for session, seq in list(ledger.in_flight.items()):  # retry with the same bytes
            ledger.upload(client, session, seq)
            del ledger.in_flight[session]
            ledger.next_seq[session] = seq + 1
        stored: dict[tuple[str, int], dict[str, Any]] = {}
        cursor = None
        while True:
            page = client.get("/sessions/crash", params={"limit": 1000, "cursor": cursor}).json()
            for session in page["sessions"]:
                for chunk in session["chunks"]:
                    key = (session["session_id"], chunk["seq"])
                    assert key not in stored, f"{key} stored twice"
                    stored[key] = chunk
            cursor = page["next_cursor"]
            if cursor is None:
                break
        ids = [chunk["chunk_id"] for chunk in stored.values()]
        assert len(ids) == len(set(ids))
        for key, chunk in ledger.acked.items():
            assert key in stored, f"acknowledged chunk {key} lost"
            assert same(stored[key], chunk), key
            audio = client.get(f"/chunks/{chunk['chunk_id']}/audio")
            assert audio.content == body_for(*key)


@pytest.mark.parametrize("fsync", ["always", "interval"])
def test_sigkill_at_random_moments_loses_no_acknowledged_chunk(data_dir: Path, fsync: str) -> None:
    rng = random.Random(fsync)
    ledger = Ledger()
    processes: list[Process] = []
    try:
        for _ in range(ROUNDS):
            process = Process(data_dir, "--fsync", fsync, "--asr-engine", "none")
            processes.append(process)
            url = process.wait_ready()
            verify(url, ledger)
            stop = threading.Event()
            threads = [
                threading.Thread(target=ledger.writer, args=(url, f"s{n}", stop))
                for n in range(WRITERS)
            ]
            for thread in threads:
                thread.start()
            stop.wait(rng.uniform(0.2, 1.2))
            process.proc.send_signal(signal.SIGKILL)
            process.proc.wait(timeout=30)
            stop.set()
            for thread in threads:
                thread.join(timeout=30)
        final = Process(data_dir, "--fsync", fsync, "--asr-engine", "none")
        processes.append(final)
        url = final.wait_ready()
        verify(url, ledger)
        assert len(ledger.acked) > ROUNDS  # the rounds did upload
        with httpx.Client(base_url=url, timeout=30) as client:  # and it takes new uploads
            seq = ledger.next_seq.get("s0", 0)
            assert ledger.upload(client, "s0", seq)["seq"] == seq
        code, log = final.stop()
        assert code == 0, log
    finally:
        for process in processes:
            if process.proc.poll() is None:
                process.proc.kill()
                process.proc.wait()


async def test_kill_9_mid_stream_leaves_no_hole_unreported(data_dir: Path) -> None:
    """A WebSocket stream sends frames without waiting for their acks (the pipeline may store
    them out of order) and the server is killed mid-stream, a few times. After each restart,
    ``started`` names every seq below ``stored_next_seq`` that holds no chunk: the stored seqs
    and the missing ones make up 0..stored_next_seq-1 exactly, and every acked seq is stored.
    (Holes do happen here: four workers per stage store a stream's frames out of order.)"""
    rng = random.Random(7)
    acked: set[int] = set()
    processes: list[Process] = []
    frame = bytes(3200)  # 100 ms of 16 kHz PCM; each frame gets its own bytes below

    async def stream(ws_url: str, first: int) -> None:
        async with open_websocket_url(ws_url) as ws:
            await ws.send_message(json.dumps({"type": "start", "user_id": "crash",
                                              "session_id": "ws", "format": FORMAT}))  # fmt: skip
            assert json.loads(await ws.get_message())["type"] == "started"

            async def read() -> None:
                while True:
                    message = json.loads(await ws.get_message())
                    if message["type"] == "ack":
                        acked.add(message["seq"])

            async with trio.open_nursery() as nursery:
                nursery.start_soon(read)
                for n in range(first, first + 400):
                    await ws.send_message(n.to_bytes(4, "big") + frame[4:])

    try:
        for _ in range(3):
            process = Process(data_dir, "--asr-engine", "none", "--stage-workers", "4")
            processes.append(process)
            await trio.to_thread.run_sync(process.wait_ready)
            ws_url = await trio.to_thread.run_sync(websocket_url, process)
            started = await started_of(ws_url)
            check_no_hole_unreported(process.url, started, acked)
            with trio.move_on_after(rng.uniform(0.3, 1.0)):
                await stream(ws_url, started["stored_next_seq"])
            process.proc.send_signal(signal.SIGKILL)
            await trio.to_thread.run_sync(process.proc.wait)
        final = Process(data_dir, "--asr-engine", "none")
        processes.append(final)
        await trio.to_thread.run_sync(final.wait_ready)
        started = await started_of(await trio.to_thread.run_sync(websocket_url, final))
        check_no_hole_unreported(final.url, started, acked)
        assert acked, "the stream never got an ack before the kills"
    finally:
        for process in processes:
            if process.proc.poll() is None:
                process.proc.kill()
                process.proc.wait()


def websocket_url(process: Process) -> str:
    assert process.proc.stderr is not None
    while not (found := re.search(r"serving WebSocket on (\S+)", process.proc.stderr.readline())):
        pass
    return found.group(1)


async def started_of(ws_url: str) -> dict[str, Any]:
    with trio.fail_after(30):
        async with open_websocket_url(ws_url) as ws:
            await ws.send_message(json.dumps({"type": "start", "user_id": "crash",
                                              "session_id": "ws"}))  # fmt: skip
            started: dict[str, Any] = json.loads(await ws.get_message())
    assert started["type"] == "started", started
    return started


def check_no_hole_unreported(url: str, started: dict[str, Any], acked: set[int]) -> None:
    stored: set[int] = set()
    cursor = None
    with httpx.Client(base_url=url, timeout=30) as client:
        while True:  # every page of the session
            params = {"session_id": "ws", "limit": 1000, "cursor": cursor}
            page = client.get("/sessions/crash", params=params).json()
            stored |= {c["seq"] for s in page["sessions"] for c in s["chunks"]}
            if (cursor := page["next_cursor"]) is None:
                break
    missing = set(started["missing_seqs"])
    assert started["missing_count"] == len(missing) < 100  # all of them named
    assert stored.isdisjoint(missing)
    assert stored | missing == set(range(started["stored_next_seq"])), (stored, missing)
    assert acked <= stored, acked - stored
