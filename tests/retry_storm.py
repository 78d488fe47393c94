"""What a retry storm costs: ``python -m tests.retry_storm SECONDS CLIENTS:MODE ...``.

For each ``CLIENTS:MODE`` a fresh ``trio-audio serve`` (``--asr-engine none``) takes
CLIENTS uploaders for SECONDS: each uploads 1 s WAVs in a loop and sends a refused (503)
upload again at once, ignoring ``Retry-After`` -- on the same keep-alive connection
(``keepalive``) or on a new connection each time (``new``). Prints a JSON line per run:
goodput (stored uploads/s), p50/p99 from an upload's first try to its 201, the 503s and the
connections opened. E.g. ``python -m tests.retry_storm 10 8:keepalive 256:keepalive 256:new``.
With ``--url URL`` after SECONDS the uploads go to URL (a proxy in front of a service started
by hand) instead.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
from typing import Any

import trio

from trio_audio.bench.http1 import Connection, HttpError, request_bytes

from .audio_samples import wav

BODY = wav(440, 1.0)


async def uploader(
    host: str, port: int, n: int, mode: str, stop_at: float, stats: dict[str, Any]
) -> None:
    conn = Connection(host, port)
    seq = 0
    while trio.current_time() < stop_at:
        first = trio.current_time()
        target = f"/upload?user_id=u{n}&session_id=s&seq={seq}"
        data = request_bytes("POST", target, f"{host}:{port}", BODY, "audio/wav")
        while trio.current_time() < stop_at:
            if mode == "new" and conn.stream is not None:
                await conn.stream.aclose()
                conn.stream = None
            try:
                response = await conn.request(data)
            except (HttpError, OSError):
                stats["errors"] += 1
                continue
            if response.status in (200, 201):
                stats["ok"] += 1
                stats["latencies"].append(trio.current_time() - first)
                seq += 1
                break
            stats[str(response.status)] = stats.get(str(response.status), 0) + 1
    stats["opened"] += conn.opened


async def storm(url: str, clients: int, mode: str, seconds: float) -> dict[str, Any]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    stats: dict[str, Any] = {"ok": 0, "errors": 0, "latencies": [], "opened": 0}
    stop_at = trio.current_time() + seconds
    async with trio.open_nursery() as nursery:
        for n in range(clients):
            nursery.start_soon(uploader, host, int(port), n, mode, stop_at, stats)
    latencies = sorted(stats.pop("latencies")) or [float("nan")]
    return {
        "clients": clients,
        "mode": mode,
        "goodput_per_s": round(stats["ok"] / seconds, 1),
        "p50_s": round(latencies[len(latencies) // 2], 3),
        "p99_s": round(latencies[max(0, int(len(latencies) * 0.99) - 1)], 3),
        **stats,
    }


def main(seconds: float, runs: list[str]) -> None:
    url = None
    if runs[0] == "--url":
        url, runs = runs[1], runs[2:]
    for run in runs:
        clients, mode = run.split(":")
        if url is not None:
            print(json.dumps(trio.run(storm, url, int(clients), mode, seconds)))
            continue
        with tempfile.TemporaryDirectory() as data_dir:
            server = subprocess.Popen(
                [sys.executable, "-m", "trio_audio", "serve", "--port", "0", "--ws-port", "0",
                 "--asr-engine", "none", "--data-dir", data_dir],
                stderr=subprocess.PIPE, text=True,
            )  # fmt: skip
            assert server.stderr is not None
            while not (found := re.search(r"serving HTTP on (http://\S+),",
                                          server.stderr.readline())):  # fmt: skip
                pass
            print(json.dumps(trio.run(storm, found.group(1), int(clients), mode, seconds)))
            server.terminate()
            server.wait()


if __name__ == "__main__":
    main(float(sys.argv[1]), sys.argv[2:])
