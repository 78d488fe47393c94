"""Cluster numbers for the README: the service on a 3-node JetStream cluster vs the local log.

``python -m trio_audio.bench.cluster [--seconds 10] [--replay 100000]`` (``nox -s
bench_cluster``) starts three ``nats-server`` processes (R=3, ``sync_interval: always``) and
measures, on this machine:

- acknowledged HTTP uploads/s and their p50/p99 latency with 1, 2 and 3 service nodes on the
  cluster (a load generator process per node, 32 connections in all, each its own session:
  sessions sticky to nodes), next to one node on the local log (``fsync=always``) in the same
  run; and the CPU each acknowledged upload cost the service nodes and, apart, the
  ``nats-server`` processes (their user+system CPU time over the run, from ``/proc``);
- WebSocket frames/s acknowledged, one node, local log and cluster;
- how long a new node takes to replay a stream of ``--replay`` chunks (published straight
  into the stream, 3.2 KB of audio each, each with its work reference: two records per
  chunk, as nodes write them) until it serves HTTP.

Every process runs on this machine's cores: the numbers say what one box does with all of
it, not what N boxes would; CPU per upload is what says how N boxes would scale.
``--nodes 1,2 --replay 0 --no-ws`` is the short run (about a minute with ``--seconds 10``).
``--rounds N [--rate R]`` instead loads one local-log node and one cluster node in turn, N
times, for their CPU per upload side by side (``side_by_side``); ``--client-batches N``
what the NATS path alone costs a client (``client_batches``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import attrs
import trio

from ..cluster.dev import LocalCluster
from .loadgen import Spec
from .procs import cpu_s
from .runner import cpus_but, on_cpu, other_cpus

SERVING = re.compile(r"serving HTTP on (http://\S+),")
SERVING_WS = re.compile(r"serving WebSocket on (ws://\S+)")
REPLAYED = re.compile(r"replayed (\d+) records .* in ([0-9.]+) s")


class Node:
    """``trio-audio serve`` as a child process with its log in a file."""

    def __init__(self, directory: Path, *args: str, cpu: int | None = None) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.log = directory / "service.log"
        self.started = time.monotonic()
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [*on_cpu(cpu), sys.executable, "-m", "trio_audio", "serve", "--port", "0",
                 "--ws-port", "0", "--data-dir", str(directory / "data"), "--asr-engine", "none",
                 "--rate-limit-per-s", "0", *args],
                stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        self.url = self.ws_url = ""
        self.ready_s = 0.0

    def wait_ready(self, timeout: float = 600) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log.read_text(errors="replace")
            http, ws = SERVING.search(text), SERVING_WS.search(text)
            if http and ws:
                self.url, self.ws_url = http.group(1), ws.group(1)
                self.ready_s = time.monotonic() - self.started
                return
            if self.proc.poll() is not None:
                raise RuntimeError("service exited:\n" + text[-3000:])
            time.sleep(0.05)
        raise TimeoutError("service did not start")

    def cpu_s(self) -> float:
        return cpu_s(self.proc.pid)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def measured(
    specs: list[Spec],
    workdir: Path,
    nodes: list[Node],
    servers: list[int],
    cpu: int | None = None,
) -> dict[str, Any]:
    """``load`` with the CPU per acknowledged upload of *nodes* and of the *servers* (pids)."""
    before = [n.cpu_s() for n in nodes], [cpu_s(p) for p in servers]
    result = load(specs, workdir, cpu)
    node_s = sum(n.cpu_s() for n in nodes) - sum(before[0])
    server_s = sum(cpu_s(p) for p in servers) - sum(before[1])
    acked = max(1, result["acked"])
    result["cpu_ms_per_upload_nodes"] = round(1000 * node_s / acked, 2)
    if servers:
        result["cpu_ms_per_upload_nats"] = round(1000 * server_s / acked, 2)
    return result


def load(specs: list[Spec], workdir: Path, cpu: int | None = None) -> dict[str, Any]:
    """Run one load generator process per spec at once (on every CPU but *cpu*, the nodes',
    when they are pinned); the combined figures."""
    procs = []
    outs = []
    for i, spec in enumerate(specs):
        spec_path, out_path = workdir / f"spec{i}.json", workdir / f"out{i}.json"
        spec_path.write_text(json.dumps(spec.to_json()))
        outs.append(out_path)
        command = [*other_cpus(cpu), sys.executable, "-m", "trio_audio.bench.loadgen"]
        procs.append(subprocess.Popen([*command, str(spec_path), str(out_path)]))
    for proc in procs:
        proc.wait()
    latencies: list[float] = []
    acked = refused = failed = 0
    elapsed = 0.0
    for out_path in outs:
        data = json.loads(out_path.read_text())
        elapsed = max(elapsed, data["elapsed_s"])
        for _, latency, status, _, _ in data["records"]:
            if status in (200, 201):
                acked += 1
                latencies.append(latency)
            elif status == 503:
                refused += 1
            else:
                failed += 1
    latencies.sort()

    def pct(q: float) -> float:
        return round(1000 * latencies[min(len(latencies) - 1, int(q * len(latencies)))], 1)

    return {
        "acked_per_s": round(acked / elapsed, 1) if elapsed else 0.0,
        "p50_ms": pct(0.5) if latencies else None,
        "p99_ms": pct(0.99) if latencies else None,
        "acked": acked,
        "refused": refused,
        "failed": failed,
    }


def http_specs(
    nodes: list[Node], seconds: float, run_id: str, connections: int = 32, chunk_s: float = 0.1
) -> list[Spec]:
    per = max(1, connections // len(nodes))
    specs = [
        Spec(kind="http", url=n.url, concurrency=per, duration_s=seconds, chunk_s=chunk_s,
             run_id=f"{run_id}-{i}")
        for i, n in enumerate(nodes)
    ]  # fmt: skip
    return specs


def ws_spec(node: Node, seconds: float, run_id: str) -> Spec:
    return Spec(kind="ws", url=node.ws_url, concurrency=8, duration_s=seconds, frame_ms=100,
                window=32, run_id=run_id)  # fmt: skip


async def publish_records(store: str, stream: str, count: int, template: dict[str, Any]) -> float:
    """Publish *count* chunk records straight into *stream*; the seconds it took."""
    from ..cluster.connect import open_nats
    from ..cluster.stream import META, token

    body = b"\x00\x01" * 1600  # 3.2 KB of "audio"
    started = time.perf_counter()
    async with open_nats(store.split(","), name="bench", request_s=30) as nats:
        await nats.wait_meta_leader()
        await nats.ensure_stream(stream, [f"{stream}.>"], 3, 120)
        sends, receives = trio.open_memory_channel[int](0)

        async def publisher(receive: trio.MemoryReceiveChannel[int]) -> None:
            async with receive:
                async for n in receive:
                    session = f"s{n // 1000}"
                    meta = {**template, "chunk_id": f"bench{n:012d}", "session_id": session,
                            "seq": n % 1000, "user_id": f"u{n % 50}"}  # fmt: skip
                    prefix = f"{stream}.{token(meta['user_id'])}.{session}"
                    await nats.publish(f"{prefix}.chunk.{n % 1000}", body,
                                       {META: json.dumps(meta)}, 30)  # fmt: skip
                    # ... and its work reference, as a node publishes it with the chunk
                    reference = {"chunk_id": meta["chunk_id"], "seq": meta["seq"]}
                    await nats.publish(f"{prefix}.work.{n % 1000}", b"",
                                       {META: json.dumps(reference)}, 30)  # fmt: skip

        async with trio.open_nursery() as nursery:
            async with receives:
                for _ in range(64):
                    nursery.start_soon(publisher, receives.clone())
            async with sends:
                for n in range(count):
                    await sends.send(n)
    return time.perf_counter() - started


async def client_batches(store: str, stream: str, count: int, tasks: int) -> dict[str, float]:
    """What the NATS path costs a client alone: *count* uploads' atomic batches (a 3.2 KB
    chunk with a 600-byte metadata header, and its work reference) published from *tasks*
    tasks while a follower takes the stream back, as a node does; batches/s and this
    process's CPU microseconds per batch."""
    from ..cluster.connect import open_nats

    async with open_nats(store.split(","), name="bench", request_s=30) as nats:
        await nats.wait_meta_leader()
        await nats.ensure_stream(stream, [f"{stream}.>"], 3, 120)
        body, meta = b"\x01" * 3200, json.dumps({"x": "y" * 600})
        numbers = iter(range(count))
        follower = await nats.follow(stream, [f"{stream}.>"], 1)
        taken = 0

        async def publisher(task: int) -> None:
            for n in numbers:
                subject = f"{stream}.u.s{task}"
                await nats.publish_batch([(f"{subject}.chunk.{n}", body, {"Trio-Audio": meta}),
                                          (f"{subject}.work.{n}", b"", {"Trio-Audio": "{}"})],
                                         30)  # fmt: skip

        async def follow() -> None:
            nonlocal taken
            while taken < 2 * count:
                taken += len(await follower.take(512, 1.0))

        started, cpu = time.perf_counter(), time.process_time()
        try:
            with trio.fail_after(120):  # a batch the follower never sees: say so, not hang
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(follow)
                    for task in range(tasks):
                        nursery.start_soon(publisher, task)
        finally:
            await follower.close()
        return {
            "batches_per_s": round(count / (time.perf_counter() - started)),
            "cpu_us_per_batch": round(1e6 * (time.process_time() - cpu) / count, 1),
        }


def pin_threads(pid: int, cpus: set[int]) -> None:
    """Move every thread of process *pid* (a ``nats-server``: Go starts its threads early)
    to *cpus*."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(int(task.name), cpus)


def side_by_side(
    rounds: int,
    seconds: float,
    rate: float = 0.0,
    connections: int = 32,
    cpu: int | None = None,
    chunk_s: float = 0.1,
) -> dict[str, Any]:
    """*rounds* of the HTTP load on one local-log node and on one cluster node, in turn
    (each started once and warmed up; which goes first alternates): each round's CPU ms per
    upload of both, and the ratio. Interleaving keeps a machine's changing load from
    favouring either side. With *rate*, both get the same uploads/s (open loop), so their
    CPU per upload is compared at the same throughput; without, each gets *connections*
    connections as fast as it answers them (the slower node then batches less, and pays more
    per upload for it, unless there are connections enough to keep its stages full). With
    *cpu*, both nodes run on that CPU alone and the servers and load on the others, so the
    ``nats-server``s do not take the cluster node's CPU (on separate machines they would not)."""

    def specs(node: Node, run_id: str) -> list[Spec]:
        base = http_specs([node], seconds, run_id, connections, chunk_s)
        if not rate:
            return base
        return [attrs.evolve(spec, mode="open", rate=rate, concurrency=64) for spec in base]

    closed = f"closed loop, {connections} connections"
    out: dict[str, Any] = {"rate": rate or closed, "rounds": []}
    with tempfile.TemporaryDirectory(prefix="trio-audio-bench-") as tmp:
        work = Path(tmp)
        with LocalCluster(work / "nats", nodes=3) as cluster:
            servers = [n.process.pid for n in cluster.nodes if n.process is not None]
            if cpu is not None:
                for pid in servers:
                    pin_threads(pid, cpus_but(cpu))
            local = Node(work / "local", cpu=cpu)
            remote = Node(work / "c", "--store", cluster.store, "--store-stream", "B", cpu=cpu)
            try:
                for node in (local, remote):
                    node.wait_ready()
                    load(http_specs([node], 2, f"warm-{node.proc.pid}"), work)
                for n in range(rounds):
                    got: dict[str, dict[str, Any]] = {}
                    order = [("local", local, []), ("cluster", remote, servers)]
                    for name, node, pids in order if n % 2 == 0 else order[::-1]:
                        got[name] = measured(specs(node, f"{name}{n}"), work, [node], pids, cpu)
                    one, two = got["local"], got["cluster"]
                    out["rounds"].append({
                        "local_per_s": one["acked_per_s"],
                        "cluster_per_s": two["acked_per_s"],
                        "local_cpu_ms": one["cpu_ms_per_upload_nodes"],
                        "cluster_cpu_ms": two["cpu_ms_per_upload_nodes"],
                        "nats_cpu_ms": two["cpu_ms_per_upload_nats"],
                        "local_p50_p99_ms": [one["p50_ms"], one["p99_ms"]],
                        "cluster_p50_p99_ms": [two["p50_ms"], two["p99_ms"]],
                        "ratio": round(two["cpu_ms_per_upload_nodes"]
                                       / max(0.01, one["cpu_ms_per_upload_nodes"]), 2),
                    })  # fmt: skip
            finally:
                local.stop()
                remote.stop()
    ratios = sorted(r["ratio"] for r in out["rounds"])
    out["median_ratio"] = ratios[len(ratios) // 2] if ratios else None
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trio_audio.bench.cluster")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--replay", type=int, default=100_000)
    parser.add_argument("--nodes", default="1,2,3", help="cluster node counts to run")
    parser.add_argument("--no-ws", action="store_true", help="skip the WebSocket runs")
    parser.add_argument(
        "--rounds",
        type=int,
        default=0,
        help="instead: this many rounds of one local-log node then one cluster node, "
        "interleaved (both started once), for the CPU per upload side by side",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="with --rounds: offer this many uploads/s to each (open loop) instead of 32 "
        "connections as fast as they are answered (closed loop)",
    )
    parser.add_argument(
        "--connections",
        type=int,
        default=32,
        help="with --rounds and no --rate: the closed loop's connections per node",
    )
    parser.add_argument(
        "--chunk-s", type=float, default=0.1, help="with --rounds: audio per upload"
    )
    parser.add_argument(
        "--cpu",
        type=int,
        default=None,
        help="with --rounds: run both nodes on this CPU alone, the servers and load on the others",
    )
    parser.add_argument(
        "--client-batches",
        type=int,
        default=0,
        help="instead: publish this many uploads' batches from 16 tasks and follow them, "
        "three times, for what the NATS path costs a client alone",
    )
    args = parser.parse_args(argv)
    if args.client_batches:
        with (
            tempfile.TemporaryDirectory(prefix="trio-audio-bench-") as tmp,
            LocalCluster(Path(tmp) / "nats", nodes=3) as cluster,
        ):
            runs = [trio.run(client_batches, cluster.store, f"C{n}", args.client_batches, 16)
                    for n in range(3)]  # fmt: skip
        print(json.dumps(runs, indent=2))
        return 0
    if args.rounds:
        print(
            json.dumps(
                side_by_side(
                    args.rounds, args.seconds, args.rate, args.connections, args.cpu, args.chunk_s
                ),
                indent=2,
            )
        )
        return 0
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="trio-audio-bench-") as tmp:
        work = Path(tmp)
        local = Node(work / "local")
        local.wait_ready()
        results["local, 1 node: http"] = measured(
            http_specs([local], args.seconds, "l"), work, [local], []
        )
        if not args.no_ws:
            results["local, 1 node: ws frames"] = load([ws_spec(local, args.seconds, "lw")], work)
        local.stop()
        with LocalCluster(work / "nats", nodes=3) as cluster:
            servers = [n.process.pid for n in cluster.nodes if n.process is not None]
            for n in [int(x) for x in args.nodes.split(",")]:
                flags = ["--store", cluster.store, "--store-stream", f"B{n}"]
                nodes = [Node(work / f"c{n}-{i}", *flags) for i in range(n)]
                for node in nodes:
                    node.wait_ready()
                results[f"cluster R=3, {n} node(s): http"] = measured(
                    http_specs(nodes, args.seconds, f"c{n}"), work, nodes, servers
                )
                if n == 1 and not args.no_ws:
                    results["cluster R=3, 1 node: ws frames"] = load(
                        [ws_spec(nodes[0], args.seconds, "cw")], work
                    )
                for node in nodes:
                    node.stop()
            if args.replay:
                template = {
                    "user_id": "u", "session_id": "s", "seq": 0, "chunk_id": "",
                    "received_at": "2026-01-01T00:00:00.000Z", "timestamp": None,
                    "size_bytes": 3200, "checksum": "0" * 64, "content_type": "audio/L16",
                    "audio": {"container": "raw", "encoding": "pcm_s16le", "sample_rate": 16000,
                              "channels": 1, "duration_ms": 100.0, "frames": 1600},
                    "features": {"rms_dbfs": -20.0, "peak_dbfs": -6.0, "silence_ratio": 0.0,
                                 "dominant_hz": 440.0, "spectral_centroid_hz": 440.0,
                                 "speech_segments": []},
                    "transcript": {"status": "disabled", "text": "", "words": []},
                    "processing_ms": {},
                }  # fmt: skip
                took = trio.run(publish_records, cluster.store, "REPLAY", args.replay, template)
                rate = round(args.replay / took, 1)
                results["publish, 64 concurrent, chunks/s (2 records each)"] = rate
                node = Node(work / "replay", "--store", cluster.store, "--store-stream", "REPLAY")
                node.wait_ready()
                match = REPLAYED.search(node.log.read_text())
                results[f"new node, replay {args.replay} chunks"] = {
                    "replay_s": float(match.group(2)) if match else None,
                    "records": int(match.group(1)) if match else None,
                    "start_to_serving_s": round(node.ready_s, 2),
                }
                node.stop()
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
