"""The two WebSocket transports the session protocol runs on, and the dedicated listener.

* ``serve_ws`` runs the trio-websocket listener on ``ws_port`` (the fast path) and wraps each
  connection in a ``TrioWebsocketTransport``.
* ``QuartTransport`` wraps quart-trio's WebSocket, which serves ``/ws`` on the HTTP port
  (the route is in ``app.py``).

Both only move frames: they implement ``base.Transport`` and turn their library's "the peer
has gone" into ``base.Disconnected``; everything else is the session's (``session.Session``).
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from typing import Any, Final
from urllib.parse import parse_qsl, urlsplit

import trio
from trio_websocket import ConnectionClosed, WebSocketRequest, serve_websocket
from wsproto.events import TextMessage
from wsproto.utilities import LocalProtocolError

from ...errors import ServiceError
from ...memory import message_limit
from ...pipeline.pipeline import Ingress
from ..origins import header_map
from .base import Disconnected
from .session import Session
from .state import WsContext

CLOSE_NOT_FOUND: Final = 4404
PROBLEM_TYPE: Final = b"application/problem+json"
LIBRARY_QUEUE: Final = 1  # frames trio-websocket reads ahead of the session (memory: one)


class TrioWebsocketTransport:
    """A trio-websocket server connection."""

    def __init__(self, connection: Any, request_headers: Any) -> None:
        self.connection = connection
        self.query: Mapping[str, str] = dict(parse_qsl(urlsplit(connection.path).query))
        self.headers: Mapping[str, str] = {
            _text_of(name).lower(): _text_of(value) for name, value in request_headers
        }

    async def receive(self) -> str | bytes:
        try:
            message: str | bytes = await self.connection.get_message()
        except ConnectionClosed:
            raise Disconnected from None
        return message

    async def send(self, message: str) -> None:
        try:
            await self.connection.send_message(message)
        except (ConnectionClosed, LocalProtocolError):  # gone, or closing after its error
            raise Disconnected from None

    async def send_many(self, messages: list[str]) -> None:
        """The frames of all *messages* in one write to the socket.

        trio-websocket writes one message at a time, each a lock, a socket send and their
        trips through the scheduler; an acked frame's ``ack`` and ``metadata`` (and the next
        frames' when they are ready together) go out as one write here. It frames them with
        the connection's own wsproto state and sends under its own lock, as ``send_message``
        does (the library has no public call for several messages).
        """
        if len(messages) == 1:
            await self.send(messages[0])
            return
        connection = self.connection
        if connection._close_reason:
            raise Disconnected
        try:
            data = b"".join(connection._wsproto.send(TextMessage(data=m)) for m in messages)
        except LocalProtocolError:  # closing: the peer's close arrived
            raise Disconnected from None
        async with connection._stream_lock:
            try:
                await connection._stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                await connection._abort_web_socket()
                raise Disconnected from None

    async def close(self, code: int, reason: str) -> None:
        await self.connection.aclose(code, reason)


def _text_of(value: str | bytes) -> str:
    return value.decode("latin-1") if isinstance(value, bytes) else value


class QuartTransport:
    """quart-trio's WebSocket on the HTTP port (a client that goes away cancels the handler)."""

    def __init__(self, websocket: Any) -> None:
        self.websocket = websocket
        self.query: Mapping[str, str] = dict(websocket.args)
        self.headers: Mapping[str, str] = {k.lower(): v for k, v in websocket.headers.items()}

    async def receive(self) -> str | bytes:
        message: str | bytes | None = await self.websocket.receive()
        if message is None:
            # Quart reads an ASGI frame as ``bytes or text``: an empty binary frame (whose
            # text is None) comes out as None. It is an empty chunk, as on the listener.
            return b""
        return message

    async def send(self, message: str) -> None:
        await self.websocket.send(message)

    async def send_many(self, messages: list[str]) -> None:
        for message in messages:  # the ASGI send takes one message an event
            await self.websocket.send(message)

    async def close(self, code: int, reason: str) -> None:
        await self.websocket.close(code, reason)


async def _reject(request: WebSocketRequest, error: ServiceError, path: str) -> None:
    """Refuse the handshake with *error*'s status and problem document, then close the socket
    (trio-websocket 0.12 leaves a rejected connection's reader waiting for the client)."""
    body = json.dumps(error.problem(instance=path), separators=(",", ":")).encode()
    try:
        await request.reject(
            error.status, extra_headers=[(b"content-type", PROBLEM_TYPE)], body=body
        )
    finally:
        with trio.move_on_after(1, shield=True):
            await request._connection._close_stream()


async def serve_ws(
    ctx: WsContext,
    ingress: Ingress,
    tls: ssl.SSLContext | None = None,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """The trio-websocket listener on ``host:ws_port`` at ``/ws``; reports the bound port.

    Resource handling: owns its *ingress* clone. On shutdown it stops accepting, lets every
    session drain and close (1001), then closes the clone so the pipeline can end.
    """
    config = ctx.config

    async def handler(request: WebSocketRequest) -> None:
        if ctx.origins is not None:
            path = urlsplit(request.path).path
            headers = header_map(request.headers)
            # wsproto keeps Host out of the other headers (trio-websocket has no accessor)
            headers["host"] = request._event.host
            error = ctx.origins.refusal("WEBSOCKET", path, headers, listener=True)
            if error is not None:
                await _reject(request, error, path)
                return
        connection = await request.accept()
        if urlsplit(request.path).path != "/ws":
            # Not request.reject(): in trio-websocket 0.12 a rejected connection's task
            # never ends, so each one would leak until shutdown.
            await connection.aclose(CLOSE_NOT_FOUND, "the WebSocket endpoint is /ws")
            return
        transport = TrioWebsocketTransport(connection, request.headers)
        await Session(transport, ctx, ingress).run()

    async with ingress, trio.open_nursery() as sessions, trio.open_nursery() as listener:
        serve: Callable[..., Awaitable[Any]] = partial(
            serve_websocket,
            handler,
            config.host,
            config.ws_port,
            tls,
            handler_nursery=sessions,
            max_message_size=message_limit(config),
            message_queue_size=LIBRARY_QUEUE,
        )
        server = await listener.start(serve)
        task_status.started(server.port)
        await ctx.shutdown.wait()
        ctx.stop_sessions()
        listener.cancel_scope.cancel()
