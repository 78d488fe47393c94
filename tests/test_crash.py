"""kill -9 at random moments: every acknowledged chunk survives, exactly once.

The real server runs as a subprocess; client threads upload with explicit seqs and record
every chunk the server acknowledged. After each SIGKILL the server restarts on the same data
dir, every acknowledged chunk must be there with the same metadata and audio bytes, no
(session, seq) holds two chunks, the uploads cut off by the kill are retried with the same
seq and bytes (which must never conflict), and new uploads are taken.

``TRIO_AUDIO_CRASH_ROUNDS`` sets the number of kills (``nox -s crash`` runs many).
"""

from __future__ import annotations

import os
import random
import signal
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from .processes import Process

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
