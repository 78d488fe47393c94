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
1,000-chunk sessions, and one session of *long* chunks. Each log samples 20 pages of 1,000
chunks (20 sessions spread over the log; in the long session, 20 places in it, reached with a
cursor) and 1,000 random chunks outside those pages, so that no read warms another's cache.
For each code tree (this one, and the base revision unpacked with ``git archive``) a real
``trio-audio serve`` is started on each log; the bench reads its replay time from its log
line, its RSS from ``/proc`` (less the RSS of the same server on an empty data dir), then,
with the lean keep-alive client of ``http1.py`` (httpx would add a millisecond of its own
Python to each request), times ``GET /chunks/{id}`` of the sampled chunks twice (the first
pass finds the metadata cache cold: the server has just started and read none of them; the
second warm) and the sampled pages
(``GET /sessions/{user}?session_id=..&limit=1000[&cursor=..]``), cold then warm.
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
import trio

from trio_audio.bench import http1
from trio_audio.store.record import RecordType
from trio_audio.store.writer import LogWriter
from trio_audio.web.listing import encode_cursor

SERVING = re.compile(r"serving HTTP on (http://\S+),")
REPLAYED = re.compile(r"replayed (\d+) records \((\d+) chunks\) from (\d+) segments in ([\d.]+) s")
SAMPLES = 1000  # chunks to GET
PAGES = 20  # pages of PAGE chunks to read
PAGE = 1000

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
                    cpu = time.process_time()
                    for item in paths:
                        started = time.perf_counter()
                        if name == "get":
                            await call(store.get(item))
                        else:
                            user, session, after = item
                            cursor = None if after is None else (session, after)
                            got, _ = await call(store.page(user, session, 1000, cursor))
                            assert sum(len(chunks) for _, chunks in got) == 1000
                        took.append(time.perf_counter() - started)
                    out[f"{name}_{label}"] = took
                    out[f"{name}_{label}_cpu"] = (time.process_time() - cpu) / len(paths)
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
    ids: list[str]  # random chunk ids to GET, none of them in a sampled page
    pages: list[tuple[str, str, int | None]]  # (user, session, the seq a page starts after)


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


def page_starts(count: int, session_size: int) -> list[int]:
    """Where the sampled pages start (chunk numbers): at the first chunk of sessions spread
    over the log, or, with fewer than ``PAGES`` sessions, at places spread over them."""
    sessions = -(-count // session_size)
    if sessions >= PAGES:
        return [k * (sessions // PAGES) * session_size for k in range(PAGES)]
    stride = max(PAGE, count // PAGES)
    return [n for n in range(0, count, stride) if n % session_size + PAGE <= session_size]


def write_log(path: Path, count: int, session_size: int, audio_bytes: int) -> Log:
    """*count* chunks in sessions of *session_size* (one user per 10 sessions)."""
    rng = random.Random(count * 31 + session_size)
    audio = rng.randbytes(audio_bytes)
    writer = LogWriter(path, next_seq=1)
    # At most half the chunks in pages, so that as many are left to sample from.
    starts = set(page_starts(count, session_size)[: min(PAGES, max(1, count // (2 * PAGE)))])
    in_pages = {n for start in starts for n in range(start, start + PAGE)}
    outside = [n for n in range(count) if n not in in_pages]
    sample = set(rng.sample(outside, min(SAMPLES, len(outside))))
    ids: list[str] = []
    pages: list[tuple[str, str, int | None]] = []
    for n in range(count):
        number, seq = divmod(n, session_size)
        user, session = f"user{number // 10}", f"session{number}"
        record = meta(n, user, session, seq, rng)
        writer.append(RecordType.CHUNK, record, audio)
        if n in sample:
            ids.append(record["chunk_id"])
        if n in starts:
            pages.append((user, session, None if seq == 0 else seq - 1))
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


async def timed_gets(url: str, paths: list[str], chunks: int = 0) -> list[float]:
    """The latency of each GET, one at a time on one keep-alive connection, in seconds
    (*chunks*: how many chunks each answer must hold, 0 for a chunk's own JSON)."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    requests = [http1.request_bytes("GET", path, f"{host}:{port}") for path in paths]
    connection = http1.Connection(host, int(port))
    out = []
    try:
        await connection.request(http1.request_bytes("GET", "/healthz", f"{host}:{port}"))
        for path, request in zip(paths, requests, strict=True):
            started = time.perf_counter()
            response = await connection.request(request)
            out.append(time.perf_counter() - started)
            got = response.body.count(b'"chunk_id":')
            if response.status != 200 or got != max(chunks, 1):
                msg = f"GET {path}: {response.status}, {got} chunks: {response.body[:200]!r}"
                raise RuntimeError(msg)
    finally:
        await connection.aclose()
    return out


def page_path(user: str, session: str, after: int | None) -> str:
    path = f"/sessions/{user}?session_id={session}&limit={PAGE}"
    return path if after is None else f"{path}&cursor={encode_cursor(session, after)}"


def cpu_seconds(pid: int) -> float:
    """The CPU time process *pid* has used (user and system, all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(tree: Path, log: Log, empty_kb: int, args: list[str]) -> dict[str, float]:
    proc, url, replay_s = serve(tree, log.path, *args)
    cpu: dict[str, float] = {}

    def timed(label: str, paths: list[str], chunks: int = 0) -> list[float]:
        started = cpu_seconds(proc.pid)
        took = trio.run(timed_gets, url, paths, chunks)
        cpu[label] = (cpu_seconds(proc.pid) - started) / len(paths)
        return took

    try:
        after_replay = rss_kb(proc.pid)
        chunk_paths = [f"/chunks/{c}" for c in log.ids]
        cold = timed("get_cold_cpu", chunk_paths)
        warm = timed("get_warm_cpu", chunk_paths)
        page_paths = [page_path(*page) for page in log.pages]
        pages_cold = timed("page_cold_cpu", page_paths, PAGE)
        pages_warm = timed("page_warm_cpu", page_paths, PAGE)
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
        "get_warm_p50": pct(warm, 0.5),
        "get_warm_p99": pct(warm, 0.99),
        "page_cold_p50": pct(pages_cold, 0.5),
        "page_cold_max": max(pages_cold) * 1000,
        "page_warm_p50": pct(pages_warm, 0.5),
        "page_warm_max": max(pages_warm) * 1000,
        **{label: seconds * 1000 for label, seconds in cpu.items()},
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
        "get_warm_p50": pct(got["get_warm"], 0.5),
        "get_warm_p99": pct(got["get_warm"], 0.99),
        "page_cold_p50": pct(got["page_cold"], 0.5),
        "page_cold_max": max(got["page_cold"]) * 1000,
        "page_warm_p50": pct(got["page_warm"], 0.5),
        "page_warm_max": max(got["page_warm"]) * 1000,
        **{f"{op}_{label}_cpu": got[f"{op}_{label}_cpu"] * 1000
           for op in ("get", "page") for label in ("cold", "warm")},
    }  # fmt: skip


def reads_line(result: dict[str, float]) -> str:
    """Latencies, and the CPU milliseconds each read cost the process that answered it."""
    return (
        f"get cold p50 {result['get_p50']:.2f} p99 {result['get_p99']:.2f} ms "
        f"(CPU {result['get_cold_cpu']:.2f}), warm p50 {result['get_warm_p50']:.2f} p99 "
        f"{result['get_warm_p99']:.2f} ms (CPU {result['get_warm_cpu']:.2f}) | page of {PAGE} "
        f"cold p50 {result['page_cold_p50']:.1f} max {result['page_cold_max']:.1f} ms (CPU "
        f"{result['page_cold_cpu']:.1f}), warm p50 {result['page_warm_p50']:.1f} max "
        f"{result['page_warm_max']:.1f} ms (CPU {result['page_warm_cpu']:.1f})"
    )


def report_store(name: str, result: dict[str, float]) -> None:
    print(
        f"  {name:<5} store: replay {result['replay_s']:6.2f} s ({result['replay_cpu_s']:.2f} s "
        f"of CPU), {result['per_chunk']:4.0f} B/chunk | {reads_line(result)}",
        flush=True,
    )


def load_average() -> str:
    return Path("/proc/loadavg").read_text().split()[0]


def report(name: str, result: dict[str, float]) -> None:
    print(
        f"  {name:<5} HTTP:  replay {result['replay_s']:6.2f} s, RSS {result['rss_mb']:5.0f} MB, "
        f"{result['per_chunk']:4.0f} B/chunk ({result['per_chunk_after_reads']:.0f} after the "
        f"reads) | {reads_line(result)}",
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
    os.sync()  # the logs' writeback is done before anything is timed
    print(f"# logs written in {time.perf_counter() - started:.0f} s", flush=True)
    empty = {}
    for name, tree, args in trees:
        (root / f"empty-{name}").mkdir()
        proc, _, _ = serve(tree, root / f"empty-{name}", *args)
        empty[name] = rss_kb(proc.pid)
        stop(proc)
        print(f"{name} code ({tree}): RSS with an empty store {empty[name] / 1024:.0f} MB")
    for label, log in logs:
        for name, tree, args in trees:
            print(f" {label}, {name} code (load average {load_average()}):", flush=True)
            report_store(name, measure_store(tree, log))
            report(name, measure(tree, log, empty[name], args))
