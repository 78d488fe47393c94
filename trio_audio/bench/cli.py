"""``trio-audio bench``: the load generator's command line and the full suite.

``trio-audio bench`` (``suite``) runs every scenario the README's Performance table quotes:
closed-loop uploads (the capacity C), the naive baseline on the same uploads, fsync modes,
open loop at 0.8 C and at 5 C (overload), and WebSocket streams; ``--repeat N`` runs it N
times and reports the spread. ``trio-audio bench http`` / ``ws`` run one load.
``trio-audio bench ceiling --cpu 0`` runs the HTTP and WebSocket loads against the service,
the same work done plainly (``bench/baseline.py``: the analysis inline in a plain quart-trio
handler and a plain trio-websocket handler, no fsync: the floor to beat) and the bare front
doors (``bench/bare.py``: the ceiling) in turn, server pinned to one CPU and the load on the
others, and reports the service against both (``--repeat`` rounds). Each run writes
its JSON to ``--out`` (default ``bench-results/``) and prints a report.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

DEFAULT_OUT = Path("bench-results")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "what",
        nargs="?",
        default="suite",
        choices=("suite", "http", "ws", "ceiling"),
        help="the full suite, one HTTP or WebSocket load, or both against the bare front "
        "doors (default: %(default)s)",
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=10.0,
        help="seconds of load per run (default: %(default)s)",
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="suite: run it this many times (default: %(default)s)"
    )
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help="where the JSON goes (default: %(default)s)"
    )
    parser.add_argument(
        "--chunk-s", type=float, default=1.0, help="audio per HTTP upload (default: %(default)s)"
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=32,
        help="HTTP workers (closed loop) / WebSocket connections (default: %(default)s)",
    )
    parser.add_argument(
        "--mode",
        choices=("closed", "open"),
        default="closed",
        help="closed loop (each worker waits for its answer) or open loop "
        "(a fixed --rate) (default: %(default)s)",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="open loop: uploads/s, or frames/s per WebSocket "
        "(default: %(default)s; open loop needs it set)",
    )
    parser.add_argument(
        "--window", type=int, default=32, help="WebSocket frames in flight (default: %(default)s)"
    )
    parser.add_argument(
        "--metadata-every",
        type=int,
        default=1,
        help="WebSocket: ask for the metadata of every Nth frame (0: none) (default: %(default)s)",
    )
    parser.add_argument(
        "--frame-ms",
        type=float,
        default=100.0,
        help="audio per WebSocket frame (default: %(default)s)",
    )
    parser.add_argument(
        "--target",
        choices=("server", "baseline", "bare"),
        default="server",
        help="the service, the naive one-request-at-a-time baseline, or the bare front door "
        "that only reads and acks (default: %(default)s)",
    )
    parser.add_argument(
        "--cpu",
        type=int,
        default=None,
        help="pin the server to this CPU and the load to the others (default: not pinned)",
    )
    parser.add_argument(
        "--server-python",
        default="",
        help="the interpreter that runs the service: another venv's, to compare two versions "
        "under the same load (default: this one)",
    )
    parser.add_argument(
        "--url",
        default="",
        help="load this running server instead (no CPU/RSS) (default: none: start a server)",
    )
    parser.add_argument(
        "--ws-url", default="", help="with --url: its WebSocket (ws://../ws) (default: none)"
    )
    parser.add_argument(
        "--server-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="a serve flag, repeatable: --server-arg=--fsync=never (default: none)",
    )
    parser.add_argument(
        "--no-verify", action="store_true", help="skip the accounting pass (default: off: verify)"
    )
    parser.add_argument("--profile", action="store_true",
                        help="http/ws: record the server with py-spy, if installed "
                             "(default: off)")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    import trio

    from .report import render

    args.out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    result: dict[str, Any] = {"started": stamp, "machine": machine(), "command": sys.argv[1:]}
    scenarios = trio.run(_run, args, stamp, args.out)
    result["scenarios"] = scenarios
    result["summary"] = spread(scenarios)
    result["machine"]["loadavg_after"] = loadavg()
    path = args.out / f"bench-{stamp}.json"
    path.write_text(json.dumps(result, indent=1))
    print(render(result))
    print(f"\nresult: {path}")
    # Lost chunks, or a load that nothing took (a broken run, not a measurement): exit 1.
    return 1 if any(s["lost"] or not s["accepted"] for s in scenarios) else 0


async def _run(args: argparse.Namespace, stamp: str, out: Path) -> list[dict[str, Any]]:
    from .loadgen import Spec
    from .runner import Scenario, run_scenario

    results: list[dict[str, Any]] = []

    async def one(name: str, spec: Spec, **kw: Any) -> dict[str, Any]:
        load = loadavg()
        spec = Spec(**{**spec.to_json(), "run_id": f"r{stamp}-{len(results)}"})
        verify = not args.no_verify and kw.get("target") != "bare"  # the bare one keeps nothing
        scenario = Scenario(name=name, spec=spec, verify=verify, cpu=args.cpu,
                            python=args.server_python or sys.executable, **kw)  # fmt: skip
        print(f"[{time.strftime('%H:%M:%S')}] {name} (load average {load[0]:.2f})",
              file=sys.stderr, flush=True)  # fmt: skip
        result = await run_scenario(scenario, out)
        result["loadavg_before"] = load
        results.append(result)
        lost = result["lost"]
        print(f"    accepted/s {result['accepted_per_s']}  refused/s {result['refused_per_s']}  "
              f"failed {result['failed']} {result['statuses']}  "
              f"p99 {result['latency_ms']['p99']} ms  lost: "
              f"{len(lost) if lost else 0}", file=sys.stderr, flush=True)  # fmt: skip
        return result

    server_args = tuple(args.server_arg)
    target = "external" if args.url else args.target
    http = Spec(kind="http", duration_s=args.duration, chunk_s=args.chunk_s,
                concurrency=args.concurrency, mode=args.mode, rate=args.rate)  # fmt: skip
    ws = Spec(kind="ws", duration_s=args.duration, frame_ms=args.frame_ms,
              concurrency=args.concurrency, mode=args.mode, rate=args.rate,
              window=args.window, metadata_every=args.metadata_every)  # fmt: skip
    profile = out / f"profile-{stamp}.txt" if args.profile else None
    if args.what == "http":
        await one("http", http, target=target, server_args=server_args, url=args.url,
                  profile=profile)  # fmt: skip
    elif args.what == "ws":
        ws_url = args.ws_url or (args.url.replace("http", "ws", 1) + "/ws" if args.url else "")
        await one("ws", Spec(**{**ws.to_json(), "url": ws_url}), target=target,
                  server_args=server_args, url=args.url, profile=profile)  # fmt: skip
    elif args.what == "ceiling":
        for _ in range(args.repeat):
            for spec in (http, ws):
                for side in ("server", "baseline", "bare"):
                    await one(f"{spec.kind} {side}", spec, target=side, server_args=server_args)
    if args.what != "suite":
        if profile is not None:
            from .runner import profile_summary

            results[-1]["profile"] = {"file": str(profile), **profile_summary(profile)}
        return results
    closed = Spec(kind="http", duration_s=args.duration, chunk_s=args.chunk_s, concurrency=32)
    for _ in range(args.repeat):
        capacity = (await one("http closed c=32, fsync always", closed))["accepted_per_s"]
        await one("baseline closed c=32", closed, target="baseline")
        await one("baseline closed c=32, fsync each", closed, target="baseline",
                  server_args=("--fsync",))  # fmt: skip
        await one("http closed c=32, fsync interval", closed, server_args=("--fsync", "interval"))
        await one("http closed c=32, fsync never", closed, server_args=("--fsync", "never"))
        steady = Spec(**{**closed.to_json(), "mode": "open", "rate": round(0.8 * capacity),
                         "concurrency": 256})  # fmt: skip
        await one("http open 0.8x capacity", steady)
        overload = Spec(**{**steady.to_json(), "rate": round(5 * capacity), "concurrency": 512,
                           "duration_s": 2 * args.duration})  # fmt: skip
        await one("http open 5x capacity (overload)", overload)
        await one(
            "ws closed 16 conns, window 32",
            Spec(kind="ws", duration_s=args.duration, concurrency=16, window=32),
        )
        await one("ws real time 64 conns, 10 frames/s",
                  Spec(kind="ws", duration_s=args.duration, concurrency=64, mode="open",
                       rate=10.0))  # fmt: skip
    return results


def loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "loadavg_before": loadavg()}  # fmt: skip


def spread(scenarios: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per scenario name: median and range of the headline numbers over the repeats."""
    names: dict[str, list[dict[str, Any]]] = {}
    for s in scenarios:
        names.setdefault(s["name"], []).append(s)
    out = []
    for name, runs in names.items():
        row: dict[str, Any] = {"name": name, "runs": len(runs)}
        for key, read in (("accepted_per_s", lambda s: s["accepted_per_s"]),
                          ("stored_per_s", lambda s: s["stored_per_s"]),
                          ("refused_per_s", lambda s: s["refused_per_s"]),
                          ("p50_ms", lambda s: s["latency_ms"]["p50"]),
                          ("p99_ms", lambda s: s["latency_ms"]["p99"]),
                          ("server_cpu_percent", lambda s: s["server_cpu_percent"]),
                          ("cpu_ms_per_accepted", lambda s: s.get("server_cpu_ms_per_accepted")),
                          ("peak_rss_mb", lambda s: s["memory"].get("peak_rss_mb"))):  # fmt: skip
            values = [v for v in map(read, runs) if v is not None]
            if values:
                row[key] = {"median": statistics.median(values), "min": min(values),
                            "max": max(values)}  # fmt: skip
        row["lost"] = sum(len(s["lost"]) for s in runs)
        out.append(row)
    rows = {row["name"]: row for row in out}
    for kind in ("http", "ws"):  # ceiling: the service against the floor and the bare door
        server = rows.get(f"{kind} server")
        for side in ("bare", "baseline"):
            other = rows.get(f"{kind} {side}")
            if not server or not other or "accepted_per_s" not in server:
                continue
            if "accepted_per_s" not in other:
                continue
            ratio = server["accepted_per_s"]["median"] / max(other["accepted_per_s"]["median"], 1)
            server[f"share_of_{side}"] = round(ratio, 3)
            if "cpu_ms_per_accepted" in server and "cpu_ms_per_accepted" in other:
                cost = (
                    other["cpu_ms_per_accepted"]["median"] / server["cpu_ms_per_accepted"]["median"]
                )
                server[f"cpu_share_of_{side}"] = round(cost, 3)
    return out
