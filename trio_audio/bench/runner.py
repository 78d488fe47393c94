"""Run a load against a server started for it, watch the server, and account for every chunk.

::

    run_scenario(scenario)
    ├─ server process   trio-audio serve (or the naive baseline) on port 0, fresh data dir
    ├─ sampler          the server's CPU (utime+stime) and RSS/peak RSS from /proc, every 0.2 s
    ├─ load process     python -m trio_audio.bench.loadgen (its own process and GIL)
    └─ then             /metrics before/after (stored/s), and ``verify``: GET /chunks/{id} of
                        every acknowledged chunk, checksum against what was sent

Resource handling: each scenario's server and load generator are child processes in one
nursery; the server gets SIGTERM (then SIGKILL after a grace) whatever happens; the data
dir is a temporary directory removed at the end.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import attrs
import trio

from .http1 import Connection, HttpError, field, request_bytes
from .loadgen import Outcome, Spec

SERVING_HTTP = re.compile(r"serving HTTP on (http://\S+?),")
SERVING_WS = re.compile(r"serving WebSocket on (ws://\S+)")
CLK_TCK = os.sysconf("SC_CLK_TCK")
SAMPLE_INTERVAL_S = 0.2
STOP_GRACE_S = 30.0
LOADGEN = "import sys; from trio_audio.bench.loadgen import main; sys.exit(main(sys.argv[1:]))"


@attrs.frozen(kw_only=True)
class Scenario:
    name: str
    spec: Spec
    target: str = "server"  # server | baseline | bare | external
    server_args: tuple[str, ...] = ()
    url: str = ""  # for an external server: its HTTP base URL
    verify: bool = True
    profile: Path | None = None  # record the server with py-spy into this file (collapsed)
    cpu: int | None = None  # pin the server to this CPU (and the load to the others)
    python: str = sys.executable  # the service's interpreter: another venv runs other code


@attrs.frozen
class Sample:
    t: float  # monotonic seconds
    cpu_s: float
    rss: int
    hwm: int


@attrs.frozen
class Lost:
    chunk_id: str
    reason: str


# -- the server under test ---------------------------------------------------------------


@attrs.define
class ServerProcess:
    process: trio.Process
    http_url: str = ""
    ws_url: str = ""
    log: deque[str] = attrs.field(factory=lambda: deque(maxlen=200))


def server_command(scenario: Scenario, data_dir: Path) -> list[str]:
    pin = on_cpu(scenario.cpu)
    if scenario.target == "baseline":
        return [*pin, sys.executable, "-m", "trio_audio.bench.baseline", "--port", "0",
                "--ws-port", "0", "--file", str(data_dir / "baseline.log"),
                *scenario.server_args]  # fmt: skip
    if scenario.target == "bare":
        return [*pin, sys.executable, "-m", "trio_audio.bench.bare", "--port", "0",
                "--ws-port", "0", *scenario.server_args]  # fmt: skip
    return [*pin, scenario.python, "-m", "trio_audio", "serve", "--port", "0", "--ws-port", "0",
            "--data-dir", str(data_dir), "--asr-engine", "none", "--log-level", "info",
            *scenario.server_args]  # fmt: skip


def on_cpu(cpu: int | None) -> list[str]:
    """``taskset`` for a server pinned to *cpu* (none pinned: nothing)."""
    return ["taskset", "-c", str(cpu)] if cpu is not None else []


def cpus_but(cpu: int) -> set[int]:
    """Every CPU of this process but *cpu* (itself when it is the only one): the load's."""
    return set(os.sched_getaffinity(0)) - {cpu} or {cpu}


def other_cpus(cpu: int | None) -> list[str]:
    """``taskset`` for the load generator: every CPU but the server's (none pinned: nothing)."""
    if cpu is None:
        return []
    return ["taskset", "-c", ",".join(map(str, sorted(cpus_but(cpu))))]


async def run_server(
    command: list[str], *, task_status: trio.TaskStatus[ServerProcess] = trio.TASK_STATUS_IGNORED
) -> None:
    """Start the server, report it once it logs its URLs, keep reading its log until it exits.

    Stopping: cancel this task; the process gets SIGTERM and, after a grace, SIGKILL.
    """
    process = await trio.lowlevel.open_process(command, stderr=subprocess.PIPE)
    server = ServerProcess(process)
    wants_ws = "--ws-port" in command
    reported = False
    try:
        assert process.stderr is not None
        pending = b""
        async for data in process.stderr:
            pending += data
            *lines, pending = pending.split(b"\n")
            for raw in lines:
                line = raw.decode(errors="replace")
                server.log.append(line)
                if match := SERVING_HTTP.search(line):
                    server.http_url = match.group(1)
                if match := SERVING_WS.search(line):
                    server.ws_url = match.group(1)
            if not reported and server.http_url and (server.ws_url or not wants_ws):
                reported = True
                task_status.started(server)
        if not reported:
            msg = "the server exited before serving:\n" + "\n".join(server.log)
            raise RuntimeError(msg)
    finally:
        with trio.CancelScope(shield=True):
            await stop(process)


async def stop(process: trio.Process) -> None:
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
        with trio.move_on_after(STOP_GRACE_S):
            await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()


def read_proc(pid: int) -> Sample | None:
    """CPU seconds (utime+stime) and RSS/peak RSS bytes of *pid*, None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
        with open(f"/proc/{pid}/status") as f:
            status = f.read()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK
    memory = {}
    for line in status.splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            memory[line[:5]] = int(line.split()[1]) * 1024
    return Sample(time.monotonic(), cpu, memory.get("VmRSS", 0), memory.get("VmHWM", 0))


async def sample(pid: int, samples: list[Sample]) -> None:
    """Append a sample of *pid* every ``SAMPLE_INTERVAL_S`` until cancelled or it exits."""
    next_at = trio.current_time()
    while (taken := read_proc(pid)) is not None:
        samples.append(taken)
        next_at += SAMPLE_INTERVAL_S
        await trio.sleep_until(next_at)


async def profile(pid: int, seconds: float, path: Path) -> None:
    """Sample *pid*'s Python stacks with py-spy into *path*: every thread that is working,
    whether or not it holds the GIL, so native code that lets go of it (the VAD's
    onnxruntime, numpy's FFT, fsync) counts where it runs."""
    beside = Path(sys.executable).parent / "py-spy"
    command = [shutil.which("py-spy") or str(beside), "record", "--pid", str(pid),
               "--duration", str(max(1, int(seconds))), "--rate", "250", "--threads",
               "--format", "raw", "--output", str(path), "--nonblocking"]  # fmt: skip
    await trio.run_process(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


# Where a sample's CPU goes: the first part whose pattern its stack matches (our work before
# the libraries that call it; a stack is often cut short, so the last parts take what is left).
PROFILE_PARTS: tuple[tuple[str, str], ...] = (
    ("VAD (Silero in onnxruntime)", r"audio/vad\.py|onnxruntime"),
    ("decoding and checks", r"audio/decode\.py|soundfile"),
    ("features and spectrum (numpy)", r"audio/features\.py"),
    ("SHA-256", r"hashlib|sha256"),
    ("store: committer, index, msgpack, write and fsync", r"trio_audio/store/|msgpack"),
    ("pipeline stages (groups, hops, timeouts)", r"trio_audio/pipeline/"),
    ("metrics", r"trio_audio/metrics\.py"),
    ("WebSocket session and messages", r"trio_audio/web/(ws/|messages\.py)"),
    ("trio-websocket and wsproto", r"trio_websocket|wsproto"),
    ("HTTP routes (ids, query, response JSON)", r"trio_audio/web/|trio_audio/models\.py"),
    ("Quart's request machinery", r"quart"),
    ("hypercorn and h11 (HTTP parsing)", r"hypercorn|h11/"),
    ("Trio: scheduler, cancel scopes, channels, sockets", r"trio/"),
)


def profile_summary(path: Path, top: int = 25) -> dict[str, list[tuple[str, float]]]:
    """Shares of the samples of a collapsed py-spy file: per part of the service
    (``PROFILE_PARTS``), and per function, self and inclusive."""
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    parts: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        count = int(count_text)
        frames = [frame.rsplit(":", 1)[0] for frame in stack.split(";") if frame]
        if not frames:
            continue
        total += count
        own[frames[-1]] = own.get(frames[-1], 0) + count
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + count
        part = next((name for name, pattern in PROFILE_PARTS if re.search(pattern, stack)),
                    "other (the interpreter, unattributed)")  # fmt: skip
        parts[part] = parts.get(part, 0) + count

    def shares(counts: dict[str, int]) -> list[tuple[str, float]]:
        ranked = sorted(counts.items(), key=lambda item: -item[1])[:top]
        return [(name, round(100 * n / max(total, 1), 1)) for name, n in ranked]

    return {"parts": shares(parts), "self": shares(own), "inclusive": shares(inclusive)}


# -- HTTP helpers ------------------------------------------------------------------------


def host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 80


async def scrape(url: str) -> dict[str, float]:
    """The unlabelled counters and the summed labelled ones of ``/metrics``."""
    host, port = host_port(url)
    connection = Connection(host, port)
    try:
        response = await connection.request(request_bytes("GET", "/metrics", f"{host}:{port}"))
    finally:
        await connection.aclose()
    counters: dict[str, float] = {}
    for line in response.body.decode().splitlines():
        if line.startswith("#") or " " not in line:
            continue
        name, _, value = line.rpartition(" ")
        base = name.split("{", 1)[0]
        try:
            counters[base] = counters.get(base, 0.0) + float(value)
        except ValueError:
            continue
        if "{" in name:
            counters[name] = float(value)
    return counters


async def verify(
    url: str, acked: list[tuple[str, str]], *, concurrency: int = 8, timeout_s: float = 30.0
) -> list[Lost]:
    """Check each acknowledged ``(chunk_id, checksum)`` with ``GET /chunks/{id}``.

    A chunk is lost when the server does not have it (404, or no answer) or has other bytes
    under its id (another checksum). Returns the lost ones, in the order given.
    """
    host, port = host_port(url)
    hostport = f"{host}:{port}"
    lost: dict[int, Lost] = {}
    work_send, work = trio.open_memory_channel[tuple[int, str, str]](concurrency)

    async def check(work: trio.MemoryReceiveChannel[tuple[int, str, str]]) -> None:
        connection = Connection(host, port)
        async with work:
            async for index, chunk_id, checksum in work:
                data = request_bytes("GET", f"/chunks/{chunk_id}", hostport)
                reason = ""
                with trio.move_on_after(timeout_s) as scope:
                    try:
                        response = await connection.request(data)
                    except HttpError as exc:
                        reason = f"no answer: {exc}"
                    else:
                        if response.status == 404:
                            reason = "missing"
                        elif response.status != 200:
                            reason = f"status {response.status}"
                        elif field(response.body, b"checksum") != checksum:
                            reason = "checksum mismatch"
                if scope.cancelled_caught:
                    reason = "no answer: timeout"
                    await connection.aclose()
                if reason:
                    lost[index] = Lost(chunk_id, reason)
        await connection.aclose()

    async with trio.open_nursery() as nursery:
        async with work:
            for _ in range(concurrency):
                nursery.start_soon(check, work.clone())
        async with work_send:
            for index, (chunk_id, checksum) in enumerate(acked):
                await work_send.send((index, chunk_id, checksum))
    return [lost[i] for i in sorted(lost)]


# -- one scenario ------------------------------------------------------------------------


async def run_load(
    spec: Spec, workdir: Path, samples: list[Sample], cpu: int | None = None
) -> Outcome:
    """The load generator as a child process (its CPU sampled into *samples*), kept off the
    server's *cpu* when the server is pinned."""
    spec_path, out_path = workdir / f"{spec.run_id}.spec.json", workdir / f"{spec.run_id}.out.json"
    spec_path.write_text(json.dumps(spec.to_json()))
    command = [*other_cpus(cpu), sys.executable, "-c", LOADGEN, str(spec_path), str(out_path)]
    async with trio.open_nursery() as nursery:
        process = await trio.lowlevel.open_process(command)
        nursery.start_soon(sample, process.pid, samples)
        try:
            code = await process.wait()
        finally:
            with trio.CancelScope(shield=True):
                if process.returncode is None:
                    process.kill()
                    await process.wait()
        nursery.cancel_scope.cancel()
    if code != 0:
        msg = f"the load generator exited with {code}"
        raise RuntimeError(msg)
    data = json.loads(out_path.read_text())
    return Outcome.from_json(data)


async def run_scenario(scenario: Scenario, workdir: Path) -> dict[str, Any]:
    """Start the target, load it, account for every chunk; the scenario's result."""
    with (
        tempfile.TemporaryDirectory(prefix="data-", dir=workdir) as data_dir,
        tempfile.TemporaryDirectory(prefix="load-", dir=workdir) as load_dir,
    ):
        async with trio.open_nursery() as nursery:
            if scenario.target == "external":
                server = None
                http_url, ws_url = scenario.url, scenario.spec.url
            else:
                command = server_command(scenario, Path(data_dir))
                server = await nursery.start(run_server, command)
                http_url, ws_url = server.http_url, server.ws_url
            spec = attrs.evolve(
                scenario.spec, url=ws_url if scenario.spec.kind == "ws" else http_url
            )
            server_samples: list[Sample] = []
            if server is not None:
                nursery.start_soon(sample, server.process.pid, server_samples)
            before = await scrape(http_url)
            load_started = time.monotonic()
            load_samples: list[Sample] = []
            if scenario.profile is not None and server is not None:
                nursery.start_soon(profile, server.process.pid, spec.duration_s,
                                   scenario.profile)  # fmt: skip
            outcome = await run_load(spec, Path(load_dir), load_samples, scenario.cpu)
            load_ended = time.monotonic()
            after = await scrape(http_url)
            acked = [(r[3], outcome.checksums[r[4]]) for r in outcome.records
                     if r[2] in (200, 201)]  # fmt: skip
            verify_started = time.monotonic()
            lost = await verify(http_url, acked) if scenario.verify else []
            verify_s = time.monotonic() - verify_started
            nursery.cancel_scope.cancel()
    return summarize(scenario, outcome, before, after, server_samples, load_samples,
                     (load_started, load_ended), acked, lost, verify_s)  # fmt: skip


# -- numbers -----------------------------------------------------------------------------


def percentile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, max(0, round(q / 100 * len(sorted_values)) - 1))
    return sorted_values[index]


def cpu_percent(samples: list[Sample], start: float, end: float) -> float | None:
    inside = [s for s in samples if start <= s.t <= end]
    if len(inside) < 2:
        return None
    first, last = inside[0], inside[-1]
    return 100 * (last.cpu_s - first.cpu_s) / max(last.t - first.t, 1e-9)


def summarize(
    scenario: Scenario,
    outcome: Outcome,
    before: dict[str, float],
    after: dict[str, float],
    server_samples: list[Sample],
    load_samples: list[Sample],
    window: tuple[float, float],
    acked: list[tuple[str, str]],
    lost: list[Lost],
    verify_s: float,
) -> dict[str, Any]:
    spec, elapsed = outcome.spec, max(outcome.elapsed_s, 1e-9)
    statuses: dict[str, int] = {}
    for record in outcome.records:
        statuses[str(record[2])] = statuses.get(str(record[2]), 0) + 1
    accepted = sum(1 for r in outcome.records if r[2] in (200, 201))
    refused = sum(1 for r in outcome.records if r[2] == 503)
    failed = len(outcome.records) - accepted - refused
    ok_latency = sorted(r[1] for r in outcome.records if r[2] in (200, 201))
    refused_latency = sorted(r[1] for r in outcome.records if r[2] == 503)
    stored = after.get("trio_audio_stored_total", 0) - before.get("trio_audio_stored_total", 0)
    start, end = window
    during = [s for s in server_samples if start <= s.t <= end]
    ms = 1000.0

    def ms_of(values: list[float], q: float) -> float | None:
        value = percentile(values, q)
        return None if value is None else round(value * ms, 2)

    memory: dict[str, Any] = {}
    if during:
        grown = during[-1].rss - during[0].rss
        first, last = during[0], during[-1]
        half = [s for s in during if s.t >= first.t + (last.t - first.t) / 2]
        memory = {
            "rss_start_mb": round(first.rss / 2**20, 1),
            "rss_end_mb": round(last.rss / 2**20, 1),
            "rss_max_mb": round(max(s.rss for s in during) / 2**20, 1),
            "peak_rss_mb": round(max(s.hwm for s in server_samples) / 2**20, 1),
            "rss_growth_second_half_mb": round((half[-1].rss - half[0].rss) / 2**20, 1),
            "rss_per_stored_chunk_bytes": round(grown / stored) if stored else None,
            "curve_mb": [[round(s.t - start, 1), round(s.rss / 2**20, 1)]
                         for s in during[:: max(1, len(during) // 20)]],
        }  # fmt: skip
    offered = len(outcome.records) + outcome.not_sent
    return {
        "name": scenario.name,
        "target": scenario.target,
        "server_args": list(scenario.server_args),
        "spec": spec.to_json(),
        "elapsed_s": round(elapsed, 3),
        "offered_per_s": round(offered / elapsed, 1),
        "sent": len(outcome.records),
        "not_sent": outcome.not_sent,
        "accepted": accepted,
        "refused": refused,
        "failed": failed,
        "statuses": statuses,
        "errors": outcome.errors,
        "accepted_per_s": round(accepted / elapsed, 1),
        "stored_per_s": round(stored / elapsed, 1),
        "refused_per_s": round(refused / elapsed, 1),
        "latency_ms": {"p50": ms_of(ok_latency, 50), "p95": ms_of(ok_latency, 95),
                       "p99": ms_of(ok_latency, 99),
                       "max": round(ok_latency[-1] * ms, 2) if ok_latency else None},
        "refusal_latency_ms": {"p50": ms_of(refused_latency, 50),
                               "p99": ms_of(refused_latency, 99)},
        "server_cpu_percent": _round(cpu_percent(server_samples, start, end)),
        "server_cpu_ms_per_accepted": _per_accepted(cpu_percent(server_samples, start, end),
                                                    accepted / elapsed),
        # every answer, refusals included: what a refusal costs when nearly all are refused
        "server_cpu_ms_per_answer": _per_accepted(cpu_percent(server_samples, start, end),
                                                  (accepted + refused) / elapsed),
        "loadgen_cpu_percent": round(100 * outcome.cpu_s / elapsed, 1),
        "memory": memory,
        "server_counters": {k: after.get(k, 0) - before.get(k, 0) for k in after
                            if k.startswith(("trio_audio_refused", "trio_audio_failed",
                                             "trio_audio_accepted", "trio_audio_stored"))},
        "connections": outcome.connections,
        "verified": len(acked) if scenario.verify else 0,
        "verify_s": round(verify_s, 2),
        "lost": [attrs.asdict(item) for item in lost],
    }  # fmt: skip


def _per_accepted(cpu_percent: float | None, accepted_per_s: float) -> float | None:
    """Server CPU milliseconds per accepted chunk: the cost, whatever else ran beside it."""
    if cpu_percent is None or not accepted_per_s:
        return None
    return round(10 * cpu_percent / accepted_per_s, 3)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)
