"""The naive baseline: what a user might write instead of the service.

One quart-trio handler under hypercorn's trio worker. Per upload, inline on the Trio thread:
read the body, decode it, compute the same features, band spectrum and voice activity as the
service (``trio_audio.audio``), SHA-256 it, and append the metadata and the audio to one file.
No pipeline, no bounded queues (so no 503: under overload requests just wait), no group commit;
``--fsync`` adds an fsync per upload (the naive way to be durable), off by default.
``GET /chunks/{id}`` answers ``{chunk_id, checksum}`` so the bench can account for it too.

With ``--ws-port``, the same for WebSocket streams: a plain trio-websocket handler that does,
per binary frame and inline, what the service does per chunk (16-bit PCM to samples, the
features and band spectrum, Silero over the frame's 32 ms windows, SHA-256, a msgpack append)
and answers ``ack {seq, chunk_id}`` and ``metadata`` (every ``metadata_every``-th frame), the
floor the service's WebSocket path is measured against.

Run: ``python -m trio_audio.bench.baseline --port 0 [--ws-port 0] --file PATH [--fsync]``; it
logs ``serving HTTP on http://HOST:PORT,`` (and ``serving WebSocket on ws://HOST:PORT/ws``)
to stderr once it listens.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from functools import partial

import msgpack
import numpy as np
import trio
from hypercorn.config import Config as HyperConfig
from hypercorn.trio import serve
from quart import Response, request
from quart_trio import QuartTrio
from trio_websocket import ConnectionClosed, WebSocketRequest, serve_websocket

from ..audio import features, vad
from ..audio.decode import decode
from ..models import new_chunk_id, utc_now


class Log:
    """The one file both handlers append to, and what the bench reads back."""

    def __init__(self, path: str, fsync: bool) -> None:
        self.file = open(path, "ab")  # noqa: SIM115 (open for the process's life)
        self.fsync = fsync
        self.checksums: dict[str, str] = {}
        self.counts = {"accepted": 0, "stored": 0}

    def append(self, meta: dict[str, object], body: bytes) -> None:
        self.file.write(msgpack.packb([meta, body]))
        self.file.flush()
        if self.fsync:
            os.fsync(self.file.fileno())
        self.checksums[str(meta["chunk_id"])] = str(meta["checksum"])
        self.counts["stored"] += 1


def analysed(samples: np.ndarray, rate: int, channels: int, body: bytes) -> dict[str, object]:
    """A chunk's metadata, computed inline as the service computes it."""
    mono = features.downmix(samples)
    analysis = features.analyze_spectrum(
        samples, mono, features.power_spectrum(mono, rate)
    ).to_dict()
    pcm = vad.to_pcm16(vad.resample(mono, rate))
    analysis["features"].update(vad.analyze(pcm, 2, 500.0).to_dict())
    return {
        "chunk_id": new_chunk_id(),
        "received_at": utc_now(),
        "size_bytes": len(body),
        "checksum": hashlib.sha256(body).hexdigest(),
        "audio": {"sample_rate": rate, "channels": channels, "frames": len(samples),
                  "duration_ms": round(1000 * len(samples) / rate, 3)},
        **analysis,
    }  # fmt: skip


def ws_handler(log: Log) -> Callable[[WebSocketRequest], Awaitable[None]]:
    """The WebSocket floor: one frame at a time, the work inline, ack and metadata after."""

    async def handle(request: WebSocketRequest) -> None:
        ws = await request.accept()
        seq, rate, channels, every = 0, 16000, 1, 1
        ids: dict[str, object] = {}
        try:
            while True:
                message = await ws.get_message()
                if isinstance(message, bytes):
                    log.counts["accepted"] += 1
                    pcm = np.frombuffer(message, "<i2").reshape(-1, channels)
                    meta = analysed(pcm.astype(np.float32) / 32768.0, rate, channels, message)
                    meta.update(ids, seq=seq)
                    log.append(meta, message)
                    ack = {"type": "ack", "seq": seq, "chunk_id": meta["chunk_id"]}
                    await ws.send_message(json.dumps(ack, separators=(",", ":")))
                    if every and seq % every == 0:
                        text = json.dumps({"type": "metadata", **meta}, separators=(",", ":"))
                        await ws.send_message(text)
                    seq += 1
                    continue
                start = json.loads(message)
                if start.get("type") == "start":
                    fmt = start.get("format") or {}
                    rate = int(fmt.get("sample_rate", rate))
                    channels = int(fmt.get("channels", channels))
                    every = int(start.get("metadata_every", 1))
                    ids = {"user_id": start.get("user_id"), "session_id": start.get("session_id")}
                    await ws.send_message(json.dumps({"type": "started", "next_seq": 0}))
                elif start.get("type") == "end":
                    await ws.send_message(json.dumps({"type": "session_end", "summary": {}}))
                    await ws.aclose()
                    return
        except ConnectionClosed:
            return

    return handle


def create_app(log: Log) -> QuartTrio:
    app = QuartTrio("baseline")
    checksums, counts = log.checksums, log.counts

    @app.post("/upload")
    async def upload() -> Response:
        counts["accepted"] += 1
        body = await request.get_data(cache=False, as_text=False)
        assert isinstance(body, bytes)
        decoded = decode(body, content_type=request.content_type, max_duration_s=600)
        meta = analysed(decoded.samples, decoded.sample_rate, decoded.channels, body)
        meta["user_id"] = request.args.get("user_id", "")
        meta["session_id"] = request.args.get("session_id", "")
        log.append(meta, body)
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


async def main(host: str, port: int, ws_port: int | None, path: str, fsync: bool) -> None:
    hyper = HyperConfig()
    hyper.bind = [f"{host}:{port}"]
    hyper.accesslog = None
    shutdown = trio.Event()
    log = Log(path, fsync)
    async with trio.open_nursery() as nursery:
        app = create_app(log)
        binds = await nursery.start(partial(serve, app, hyper, shutdown_trigger=shutdown.wait))
        where = f"serving HTTP on {binds[0]}, "
        if ws_port is not None:
            handler = ws_handler(log)
            listener = await nursery.start(
                partial(serve_websocket, handler, host, ws_port, ssl_context=None)
            )
            where += f"serving WebSocket on ws://{host}:{listener.port}/ws, "
        print(f"{where}baseline appending to {path}", file=sys.stderr, flush=True)
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                shutdown.set()
                if ws_port is not None:  # the listener has no drain of its own
                    nursery.cancel_scope.cancel()
                break


def cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trio_audio.bench.baseline")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--ws-port", type=int, default=None, help="also serve WebSocket streams")
    parser.add_argument("--file", required=True)
    parser.add_argument("--fsync", action="store_true")
    args = parser.parse_args(argv)
    trio.run(main, args.host, args.port, args.ws_port, args.file, args.fsync)
    return 0


if __name__ == "__main__":
    sys.exit(cli())
