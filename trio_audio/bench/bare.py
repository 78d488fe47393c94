"""The bare ceilings: what the two front doors cost when they do nothing else.

The service's capacity is quoted as a ratio of these, measured in the same run on the same
pinned core, so a noisy machine moves both sides alike:

- HTTP: one quart-trio route under hypercorn's trio worker that reads the body and answers
  201 with a small JSON (``chunk_id``): no decoding, no analysis, no store.
- WebSocket: a trio-websocket listener that answers ``start`` with ``started`` and each
  binary frame with a small JSON ``ack {seq, chunk_id}``, and ``end`` with ``session_end``.

With ``--refuse``, every ``POST /upload`` is read to its end and answered 503 ``overloaded``
with ``Retry-After`` by a plain ASGI function in front of the app, on a connection that stays
open: the least an explicit refusal of an upload can cost under hypercorn, to set beside what
the service's refusals cost (``--server-arg=--admit-max=1 --server-arg=--admit-wait-s=0``
makes the service refuse nearly everything).

Nothing is kept, so the bench's accounting pass is skipped for these targets. ``/metrics``
answers an empty page so the runner can scrape it like the service's.

Run: ``python -m trio_audio.bench.bare --port 0 --ws-port 0``; it logs ``serving HTTP on
http://HOST:PORT,`` and ``serving WebSocket on ws://HOST:PORT/ws`` to stderr once it listens.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from functools import partial
from typing import Any, Final

import trio
from hypercorn.config import Config as HyperConfig
from hypercorn.trio import serve
from quart import Response, request
from quart_trio import QuartTrio
from trio_websocket import ConnectionClosed, WebSocketRequest, serve_websocket

from ..models import new_chunk_id


def create_app() -> QuartTrio:
    app = QuartTrio("bare")

    @app.post("/upload")
    async def upload() -> Response:
        body = await request.get_data()
        chunk = {"chunk_id": new_chunk_id(), "size_bytes": len(body)}
        return Response(json.dumps(chunk), status=201, content_type="application/json")

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response("", content_type="text/plain")

    return app


REFUSAL: Final = json.dumps({"code": "overloaded", "status": 503}).encode()
REFUSAL_HEADERS: Final = [
    (b"content-type", b"application/problem+json"),
    (b"content-length", str(len(REFUSAL)).encode()),
    (b"retry-after", b"1"),
]


def refusing(app: Any) -> Any:
    """*app* behind an ASGI function that refuses every upload once its body is read."""

    async def front(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != "/upload":
            await app(scope, receive, send)
            return
        while (await receive()).get("more_body", False):
            pass
        await send({"type": "http.response.start", "status": 503, "headers": REFUSAL_HEADERS})
        await send({"type": "http.response.body", "body": REFUSAL})

    return front


async def ws_handler(request: WebSocketRequest) -> None:
    ws = await request.accept()
    seq = 0
    try:
        while True:
            message = await ws.get_message()
            if isinstance(message, bytes):
                ack = {"type": "ack", "seq": seq, "chunk_id": new_chunk_id()}
                await ws.send_message(json.dumps(ack, separators=(",", ":")))
                seq += 1
                continue
            kind = json.loads(message).get("type")
            if kind == "start":
                await ws.send_message(json.dumps({"type": "started", "next_seq": 0}))
            elif kind == "end":
                await ws.send_message(json.dumps({"type": "session_end", "summary": {}}))
                await ws.aclose()
                return
    except ConnectionClosed:
        return


async def main(port: int, ws_port: int, refuse: bool = False) -> None:
    hyper = HyperConfig()
    hyper.bind = [f"127.0.0.1:{port}"]
    hyper.accesslog = None
    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(
            partial(
                serve,
                refusing(create_app()) if refuse else create_app(),
                hyper,
                shutdown_trigger=shutdown.wait,
            )
        )
        listener = await nursery.start(
            partial(serve_websocket, ws_handler, "127.0.0.1", ws_port, ssl_context=None)
        )
        print(f"serving HTTP on {binds[0]}, serving WebSocket on ws://127.0.0.1:{listener.port}/ws",
              file=sys.stderr, flush=True)  # fmt: skip
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                shutdown.set()
                nursery.cancel_scope.cancel()
                break


def cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trio_audio.bench.bare")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--ws-port", type=int, default=0)
    parser.add_argument("--refuse", action="store_true", help="answer every upload 503")
    args = parser.parse_args(argv)
    trio.run(main, args.port, args.ws_port, args.refuse)
    return 0


if __name__ == "__main__":
    sys.exit(cli())
