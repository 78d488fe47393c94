"""The naive baseline: what a user might write instead of the service.

One quart-trio handler under hypercorn's trio worker. Per upload, inline on the Trio thread:
read the body, decode it, compute the same features, band spectrum and voice activity as the
service (``trio_audio.audio``), SHA-256 it, and append the metadata and the audio to one file.
No pipeline, no bounded queues (so no 503: under overload requests just wait), no group commit;
``--fsync`` adds an fsync per upload (the naive way to be durable), off by default.
``GET /chunks/{id}`` answers ``{chunk_id, checksum}`` so the bench can account for it too.

Run: ``python -m trio_audio.bench.baseline --port 0 --file PATH [--fsync]``; it logs
``serving HTTP on http://HOST:PORT,`` to stderr once it listens.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import sys
from functools import partial

import msgpack
import trio
from hypercorn.config import Config as HyperConfig
from hypercorn.trio import serve
from quart import Response, request
from quart_trio import QuartTrio

from ..audio import features, vad
from ..audio.decode import decode
from ..models import new_chunk_id, utc_now


def create_app(path: str, fsync: bool) -> QuartTrio:
    app = QuartTrio("baseline")
    log = open(path, "ab")  # noqa: SIM115 (open for the app's life)
    checksums: dict[str, str] = {}
    counts = {"accepted": 0, "stored": 0}

    @app.post("/upload")
    async def upload() -> Response:
        counts["accepted"] += 1
        body = await request.get_data(cache=False, as_text=False)
        assert isinstance(body, bytes)
        decoded = decode(body, content_type=request.content_type, max_duration_s=600)
        mono = features.downmix(decoded.samples)
        analysis = features.analyze_spectrum(
            decoded.samples, mono, features.power_spectrum(mono, decoded.sample_rate)
        ).to_dict()
        pcm = vad.to_pcm16(vad.resample(mono, decoded.sample_rate))
        analysis["features"].update(vad.analyze(pcm, 2, 500.0).to_dict())
        checksum = hashlib.sha256(body).hexdigest()
        meta = {
            "chunk_id": new_chunk_id(),
            "user_id": request.args.get("user_id", ""),
            "session_id": request.args.get("session_id", ""),
            "received_at": utc_now(),
            "size_bytes": len(body),
            "checksum": checksum,
            "audio": {"sample_rate": decoded.sample_rate, "channels": decoded.channels,
                      "frames": decoded.frames, "duration_ms": decoded.duration_ms},
            **analysis,
        }  # fmt: skip
        log.write(msgpack.packb([meta, body]))
        log.flush()
        if fsync:
            os.fsync(log.fileno())
        checksums[str(meta["chunk_id"])] = checksum
        counts["stored"] += 1
        text = json.dumps(meta, separators=(",", ":"))
        return Response(text, status=201, content_type="application/json")

    @app.get("/chunks/<chunk_id>")
    async def get_chunk(chunk_id: str) -> Response:
        checksum = checksums.get(chunk_id)
        if checksum is None:
            return Response('{"code":"not_found"}', 404, content_type="application/json")
        text = json.dumps({"chunk_id": chunk_id, "checksum": checksum}, separators=(",", ":"))
        return Response(text, content_type="application/json")

    @app.get("/metrics")
    async def metrics() -> Response:
        text = (f"trio_audio_accepted_total {counts['accepted']}\n"
                f"trio_audio_stored_total {counts['stored']}\n")  # fmt: skip
        return Response(text, content_type="text/plain")

    return app


async def main(host: str, port: int, path: str, fsync: bool) -> None:
    hyper = HyperConfig()
    hyper.bind = [f"{host}:{port}"]
    hyper.accesslog = None
    shutdown = trio.Event()
    app = create_app(path, fsync)
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(partial(serve, app, hyper, shutdown_trigger=shutdown.wait))
        print(f"serving HTTP on {binds[0]}, baseline appending to {path}", file=sys.stderr)
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                shutdown.set()
                break


def cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trio_audio.bench.baseline")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--file", required=True)
    parser.add_argument("--fsync", action="store_true")
    args = parser.parse_args(argv)
    trio.run(main, args.host, args.port, args.file, args.fsync)
    return 0


if __name__ == "__main__":
    sys.exit(cli())
