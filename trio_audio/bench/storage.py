"""Storage numbers for the README (run by ``nox -s bench_store``; not a test, nothing asserted).

1. Replay: a log of N chunks with their audio (realistic metadata, ``--audio-bytes`` each)
   is written with the real ``LogWriter``; a fresh ``trio-audio serve`` is started on it and
   timed until it logs that it serves HTTP. The replay itself is timed in a child process
   with the real ``Store`` (records/s), and that process's RSS is read after replay.
2. Memory: RSS after replay at growing chunk counts, and at one count with small and large
   audio: memory must follow the metadata, not the audio.
3. Acknowledged uploads/s per fsync mode: a real server, 32 concurrent HTTP clients posting
   100 ms of PCM for a few seconds, counting 201s (client and server share the machine).

4. With ``--index``: the index at scale instead (``keydir.py``): RSS per stored chunk, replay
   time, ``GET /chunks/{id}`` and session-page latency at ``--chunks`` small chunks and in one
   session of ``--long`` chunks, for this code and (``--base REV``) an older revision.

Usage: ``python -m trio_audio.bench.storage [--chunks 100000] [--audio-bytes 8000] [--seconds 5]``
or ``python -m trio_audio.bench.storage --index --chunks 1000000 --long 36000 --base REV``
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import httpx
import trio

from trio_audio.bench import keydir
from trio_audio.store.record import RecordType
from trio_audio.store.writer import LogWriter

SERVING = re.compile(r"serving HTTP on (http://\S+),")

REPLAY_CHILD = textwrap.dedent(
    """
    import json, sys, time, trio
    from pathlib import Path
    from trio_audio.config import Config
    from trio_audio.store.store import Store

    async def main():
        started = time.perf_counter()
        async with trio.open_nursery() as nursery:
            store = await nursery.start(Store(Config(data_dir=Path(sys.argv[1]))).run)
            took = time.perf_counter() - started
            rss = int(next(l for l in open("/proc/self/status") if l.startswith("VmRSS"))
                      .split()[1]) * 1024
            stats = store.stats()
            print(json.dumps({"seconds": took, "records": stats.replayed_records,
                              "chunks": stats.chunks, "rss": rss}))
            nursery.cancel_scope.cancel()

    trio.run(main)
    """
)


def meta_for(n: int, rng: random.Random) -> dict[str, Any]:
    """Metadata shaped like the service's chunk records (about 1.3 KB packed)."""
    return {
        "chunk_id": f"{n:012x}{rng.getrandbits(64):016x}", "user_id": f"user{n % 100}",
        "session_id": f"session{n % 1000}", "seq": n // 1000,
        "received_at": "2025-01-01T00:00:00.000Z", "timestamp": None,
        "size_bytes": 8000, "checksum": f"{rng.getrandbits(256):064x}",
        "content_type": "application/octet-stream",
        "audio": {"container": "raw", "encoding": "pcm_s16le", "sample_rate": 16000,
                  "channels": 1, "frames": 4000, "duration_ms": 250.0},
        "features": {k: rng.random() for k in (
            "rms_dbfs", "peak_dbfs", "dominant_hz", "spectral_centroid_hz",
            "spectral_rolloff_hz", "spectral_flatness", "zero_crossing_rate",
            "clipping_ratio", "silence_ratio", "fft_bin_hz")},
        "spectrum": {"bands_hz": [rng.random() for _ in range(16)],
                     "band_edges_hz": [rng.random() for _ in range(17)],
                     "band_db": [rng.random() for _ in range(16)]},
        "transcript": {"status": "disabled", "text": "", "words": []},
        "processing_ms": {"validate": 0.1, "transform": 0.2, "metadata": 0.3},
    }  # fmt: skip


def grow_log(data_dir: Path, start: int, count: int, audio_bytes: int) -> None:
    rng = random.Random(start)
    audio = rng.randbytes(audio_bytes)
    writer = LogWriter(data_dir, next_seq=start + 1)
    for n in range(start, start + count):
        writer.append(RecordType.CHUNK, meta_for(n, rng), audio)
        if writer.pending_records >= 256:
            writer.flush()
    writer.checkpoint()
    writer.close()


def replay_child(data_dir: Path) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-c", REPLAY_CHILD, str(data_dir)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def drop_caches() -> bool:
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        return False
    return True


def spawn(data_dir: Path, *args: str) -> tuple[subprocess.Popen[str], str, float]:
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "trio_audio", "serve", "--port", "0", "--ws-port", "0",
         "--data-dir", str(data_dir), "--asr-engine", "none", *args],
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stderr is not None
    for line in proc.stderr:
        match = SERVING.search(line)
        if match:
            return proc, match.group(1), time.perf_counter() - started
    msg = "the server did not start"
    raise RuntimeError(msg)


def stop(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    proc.communicate(timeout=120)


async def load(url: str, seconds: float, clients: int) -> int:
    body = random.Random(1).randbytes(3200)
    done = 0
    deadline = trio.current_time() + seconds

    async def client(n: int) -> None:
        nonlocal done
        params = {"user_id": "bench", "session_id": f"s{n}", "encoding": "pcm_s16le",
                  "sample_rate": "16000", "channels": "1"}  # fmt: skip
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            while trio.current_time() < deadline:
                response = await http.post("/upload", params=params, content=body)
                if response.status_code == 201:
                    done += 1
                elif response.status_code == 503:
                    await trio.sleep(0.01)

    async with trio.open_nursery() as nursery:
        for n in range(clients):
            nursery.start_soon(client, n)
    return done


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--chunks", type=int, default=100_000)
    parser.add_argument("--audio-bytes", type=int, default=None, help="8000; 320 with --index")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--dir", type=Path, default=None, help="where to build (default tmp)")
    parser.add_argument("--index", action="store_true", help="the index at scale (keydir.py)")
    parser.add_argument("--long", type=int, default=36_000, help="chunks of the long session")
    parser.add_argument("--base", default=None, help="a revision to measure beside this code")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="trio-audio-bench-", dir=args.dir))
    if args.index:
        try:
            keydir.run(root, args.chunks, args.long, args.audio_bytes or 320, args.base)
        finally:
            shutil.rmtree(root, ignore_errors=True)
        return
    args.audio_bytes = args.audio_bytes or 8000
    try:
        print(f"# trio-audio storage bench ({os.cpu_count()} cpus)")
        data = root / "replay"
        steps = sorted({max(1, args.chunks // 10), max(1, args.chunks // 2), args.chunks})
        have = 0
        for target in steps:
            grow_log(data, have, target - have, args.audio_bytes)
            have = target
            size = sum(p.stat().st_size for p in (data / "log").iterdir())
            result = replay_child(data)
            print(
                f"replay {result['chunks']} chunks ({size / 1e6:.0f} MB of log): "
                f"{result['seconds']:.2f} s, {result['records'] / result['seconds']:,.0f} "
                f"records/s, RSS {result['rss'] / 1e6:.0f} MB (warm page cache)"
            )
        cold = drop_caches()
        proc, _, took = spawn(data)
        status = Path(f"/proc/{proc.pid}/status").read_text().splitlines()
        rss = int(next(line for line in status if line.startswith("VmRSS")).split()[1])
        stop(proc)
        print(
            f"start-up of trio-audio serve with {have} chunks: {took:.2f} s to serving HTTP "
            f"({'cold' if cold else 'warm'} page cache), RSS {rss / 1e3:.0f} MB"
        )

        count = max(1, args.chunks // 5)
        for audio_bytes in (1000, 64_000):
            other = root / f"audio{audio_bytes}"
            grow_log(other, 0, count, audio_bytes)
            result = replay_child(other)
            print(
                f"memory with {count} chunks of {audio_bytes} audio bytes "
                f"({count * audio_bytes / 1e6:.0f} MB of audio): RSS {result['rss'] / 1e6:.0f} MB"
            )
            shutil.rmtree(other)

        for mode in ("always", "interval", "never"):
            directory = root / f"load-{mode}"
            proc, url, _ = spawn(directory, "--fsync", mode)
            try:
                done = trio.run(load, url, args.seconds, 32)
            finally:
                stop(proc)
            print(
                f"fsync={mode}: {done / args.seconds:,.0f} acknowledged uploads/s "
                f"(3.2 KB PCM, 32 clients)"
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
