"""The index at a million chunks (``python -m trio_audio.bench.storage --index``): memory per
stored chunk, replay time, ``GET /chunks/{id}`` and session-page latency, for this code and
for a base revision in the same run.

Each tree is measured twice. In-process (``STORE_CHILD``): the real ``Store`` replays the
log in a child process (wall and CPU time, RSS less that before replay), then its own reads
are timed, ``get`` of random chunks and pages of 1,000, each cold then warm: this is what the
index and its reads cost. Then through HTTP, as below: what a client sees, hypercorn and
JSON included. On a shared machine the CPU seconds are the figure to compare.

Two logs are written with the real ``LogWriter`` (no HTTP, so a million takes a minute):
*chunks* small chunks (realistic metadata, ``audio_bytes`` of audio each) over 100 users and
1,000-chunk sessions, and one session of *long* chunks. For each code tree (this one, and the
base revision unpacked with ``git archive``) a real ``trio-audio serve`` is started on each
log; the bench reads its replay time from its log line, its RSS from ``/proc`` (less the RSS
of the same server on an empty data dir), then times 1,000 ``GET /chunks/{id}`` of random
chunks twice (the first pass finds the metadata cache cold, the second warm) and session
pages of 1,000 chunks (``GET /sessions/{user}?session_id=..&limit=1000``), cold then warm.
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import attrs
import httpx
import trio

from trio_audio.store.record import RecordType
from trio_audio.store.writer import LogWriter

SERVING = re.compile(r"serving HTTP on (http://\S+),")
REPLAYED = re.compile(r"replayed (\d+) records \((\d+) chunks\) from (\d+) segments in ([\d.]+) s")
SAMPLES = 1000

# Run in a child with the code tree under test on its path: replay with the real ``Store``,
# then the store's own reads (``get``, ``page``: sync in older code, async now), timed.
STORE_CHILD = textwrap.dedent(
    """
    import inspect, json, sys, time, trio
    from pathlib import Path
    from trio_audio.config import Config
    from trio_audio.store.store import Store

    def rss():
        status = open("/proc/self/status").read().splitlines()
        return int(next(l for l in status if l.startswith("VmRSS")).split()[1]) * 1024

    async def call(value):
        return await value if inspect.isawaitable(value) else value

    async def main():
        ids, pages = json.loads(sys.argv[2]), json.loads(sys.argv[3])
        empty = rss()
        cpu, wall = time.process_time(), time.perf_counter()
        async with trio.open_nursery() as nursery:
            store = await nursery.start(Store(Config(data_dir=Path(sys.argv[1]))).run)
            out = {"replay_s": time.perf_counter() - wall, "rss": rss(), "empty": empty,
                   "replay_cpu_s": time.process_time() - cpu}
            for name, paths in (("get", ids), ("page", pages)):
                for label in ("cold", "warm"):
                    took = []
                    for item in paths:
                        started = time.perf_counter()
                        if name == "get":
                            await call(store.get(item))
                        else:
                            await call(store.page(item[0], item[1], 1000, None))
                        took.append(time.perf_counter() - started)
                    out[f"{name}_{label}"] = took
            nursery.cancel_scope.cancel()
        print(json.dumps(out))

    trio.run(main)
    """
)


@attrs.frozen
class Log:
    """A log written for the bench, and what it samples."""

    path: Path
    chunks: int
    ids: list[str]  # random chunk ids to GET
    pages: list[tuple[str, str]]  # (user, session) to page through


def meta(n: int, user: str, session: str, seq: int, rng: random.Random) -> dict[str, Any]:
    """Metadata shaped like the service's chunk records (about 1.1 KB packed)."""
    return {
        "chunk_id": f"{1_700_000_000_000 + n:012x}{rng.getrandbits(64):016x}",
        "user_id": user, "session_id": session, "seq": seq,
        "received_at": "2026-01-01T00:00:00.000Z", "timestamp": None,
        "size_bytes": 3200, "checksum": f"{rng.getrandbits(256):064x}",
        "content_type": "application/octet-stream",
        "audio": {"container": "raw", "encoding": "pcm_s16le", "sample_rate": 16000,
                  "channels": 1, "frames": 1600, "duration_ms": 100.0},
        "features": {k: rng.random() for k in (
            "rms_dbfs", "peak_dbfs", "dominant_hz", "spectral_centroid_hz",
            "spectral_rolloff_hz", "spectral_flatness", "zero_crossing_rate",
            "clipping_ratio", "silence_ratio")},
        "spectrum": {"bands_hz": [rng.random() for _ in range(16)],
                     "band_db": [rng.random() for _ in range(16)]},
        "transcript": {"status": "disabled", "text": "", "words": []},
        "processing_ms": {"validate": 0.1, "transform": 0.2, "metadata": 0.3},
    }  # fmt: skip


def write_log(path: Path, count: int, session_size: int, audio_bytes: int) -> Log:
    """*count* chunks in sessions of *session_size* (one user per 10 sessions)."""
    rng = random.Random(count * 31 + session_size)
    audio = rng.randbytes(audio_bytes)
    writer = LogWriter(path, next_seq=1)
    sample = set(rng.sample(range(count), min(SAMPLES, count)))
    ids: list[str] = []
    pages: list[tuple[str, str]] = []
    for n in range(count):
        number, seq = divmod(n, session_size)
        user, session = f"user{number // 10}", f"session{number}"
        record = meta(n, user, session, seq, rng)
        writer.append(RecordType.CHUNK, record, audio)
        if n in sample:
            ids.append(record["chunk_id"])
        if seq == 0 and len(pages) < 20:
            pages.append((user, session))
        if writer.pending_records >= 512:
            writer.flush()
    writer.checkpoint()
    writer.close()
    rng.shuffle(ids)
    return Log(path, count, ids, pages)


def rss_kb(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    return int(next(line for line in status if line.startswith("VmRSS")).split()[1])


def serve(tree: Path, data_dir: Path, *args: str) -> tuple[subprocess.Popen[str], str, float]:
    """A ``trio-audio serve`` of the code in *tree*; its URL and the replay time it logged."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "trio_audio", "serve", "--port", "0", "--ws-port", "0",
         "--data-dir", str(data_dir), "--asr-engine", "none", *args],
        stderr=subprocess.PIPE, text=True, env=env, cwd=tree,
    )  # fmt: skip
    assert proc.stderr is not None
    replay_s = 0.0
    for line in proc.stderr:
        found = REPLAYED.search(line)
        if found:
            replay_s = float(found.group(4))
        match = SERVING.search(line)
        if match:
            return proc, match.group(1), replay_s
    msg = f"the server in {tree} did not start"
    raise RuntimeError(msg)


def stop(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    proc.communicate(timeout=300)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def timed_gets(url: str, paths: list[str]) -> list[float]:
    """The latency of each GET, one at a time (keep-alive), in seconds."""
    out = []
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        await http.get("/healthz")
        for path in paths:
            started = time.perf_counter()
            response = await http.get(path)
            out.append(time.perf_counter() - started)
            if response.status_code != 200:
                msg = f"GET {path}: {response.status_code} {response.text[:200]}"
                raise RuntimeError(msg)
    return out


def measure(tree: Path, log: Log, empty_kb: int, args: list[str]) -> dict[str, float]:
    proc, url, replay_s = serve(tree, log.path, *args)
    try:
        after_replay = rss_kb(proc.pid)
        chunk_paths = [f"/chunks/{c}" for c in log.ids]
        cold = trio.run(timed_gets, url, chunk_paths)
        warm = trio.run(timed_gets, url, chunk_paths)
        page_paths = [f"/sessions/{u}?session_id={s}&limit=1000" for u, s in log.pages]
        pages_cold = trio.run(timed_gets, url, page_paths)
        pages_warm = trio.run(timed_gets, url, page_paths)
        after_reads = rss_kb(proc.pid)
    finally:
        stop(proc)
    return {
        "replay_s": replay_s,
        "rss_mb": after_replay / 1024,
        "per_chunk": (after_replay - empty_kb) * 1024 / log.chunks,
        "per_chunk_after_reads": (after_reads - empty_kb) * 1024 / log.chunks,
        "get_p50": pct(cold, 0.5),
        "get_p99": pct(cold, 0.99),
        "get_warm_p99": pct(warm, 0.99),
        "page_cold_p50": pct(pages_cold, 0.5),
        "page_cold_max": max(pages_cold) * 1000,
        "page_warm_p50": pct(pages_warm, 0.5),
    }


def measure_store(tree: Path, log: Log) -> dict[str, float]:
    """Replay and the store's reads in a child process running the code in *tree*."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run(
        [sys.executable, "-c", STORE_CHILD, str(log.path), json.dumps(log.ids),
         json.dumps(log.pages)],
        capture_output=True, text=True, check=True, env=env, cwd=tree,
    )  # fmt: skip
    got = json.loads(out.stdout.strip().splitlines()[-1])
    return {
        "replay_s": got["replay_s"],
        "replay_cpu_s": got["replay_cpu_s"],
        "per_chunk": (got["rss"] - got["empty"]) / log.chunks,
        "get_p50": pct(got["get_cold"], 0.5),
        "get_p99": pct(got["get_cold"], 0.99),
        "get_warm_p99": pct(got["get_warm"], 0.99),
        "page_cold_p50": pct(got["page_cold"], 0.5),
        "page_cold_max": max(got["page_cold"]) * 1000,
        "page_warm_p50": pct(got["page_warm"], 0.5),
    }


def report_store(name: str, result: dict[str, float]) -> None:
    print(
        f"  {name:<6} store: replay {result['replay_s']:6.2f} s ({result['replay_cpu_s']:.2f} s "
        f"of CPU) | {result['per_chunk']:4.0f} B/chunk | get cold p50 "
        f"{result['get_p50']:.3f} p99 {result['get_p99']:.3f} ms, warm p99 "
        f"{result['get_warm_p99']:.3f} ms | page of 1000 cold p50 {result['page_cold_p50']:.1f} "
        f"max {result['page_cold_max']:.1f} ms, warm p50 {result['page_warm_p50']:.1f} ms",
        flush=True,
    )


def load_average() -> str:
    return Path("/proc/loadavg").read_text().split()[0]


def report(name: str, log: Log, result: dict[str, float]) -> None:
    print(
        f"  {name:<6} HTTP: replay {result['replay_s']:6.2f} s | RSS {result['rss_mb']:7.0f} MB, "
        f"{result['per_chunk']:6.0f} B/chunk after replay, "
        f"{result['per_chunk_after_reads']:6.0f} after the reads | "
        f"GET /chunks/{{id}} cold p50 {result['get_p50']:.2f} p99 {result['get_p99']:.2f} ms, "
        f"warm p99 {result['get_warm_p99']:.2f} ms | "
        f"page of 1000 cold p50 {result['page_cold_p50']:.1f} max "
        f"{result['page_cold_max']:.1f} ms, warm p50 {result['page_warm_p50']:.1f} ms",
        flush=True,
    )


def unpack_base(rev: str, root: Path) -> Path:
    """The code of revision *rev* of this repository, unpacked under *root*."""
    tree = root / f"base-{rev}"
    tree.mkdir()
    top = Path(__file__).resolve().parents[2]
    archive = subprocess.run(
        ["git", "-C", str(top), "archive", rev, "trio_audio"], capture_output=True, check=True
    )
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
    return tree


def run(root: Path, chunks: int, long: int, audio_bytes: int, base: str | None) -> None:
    here = Path(__file__).resolve().parents[2]
    trees = [("this", here, ["--meta-cache-mb", "64"])]
    if base:
        trees.append(("base", unpack_base(base, root), []))
    print(f"# index bench: {chunks:,} chunks of {audio_bytes} audio bytes, and one session of "
          f"{long:,} ({os.cpu_count()} cpus)", flush=True)  # fmt: skip
    started = time.perf_counter()
    logs = [
        (f"{chunks:,} chunks", write_log(root / "many", chunks, 1000, audio_bytes)),
        (f"one session of {long:,}", write_log(root / "long", long, long, audio_bytes)),
    ]
    print(f"# logs written in {time.perf_counter() - started:.0f} s", flush=True)
    for name, tree, args in trees:
        (root / f"empty-{name}").mkdir()
        proc, _, _ = serve(tree, root / f"empty-{name}", *args)
        empty_kb = rss_kb(proc.pid)
        stop(proc)
        print(f"{name} code ({tree}): RSS with an empty store {empty_kb / 1024:.0f} MB")
        for label, log in logs:
            print(f" {label} (load average {load_average()}):")
            report_store(name, measure_store(tree, log))
            report(name, log, measure(tree, log, empty_kb, args))
