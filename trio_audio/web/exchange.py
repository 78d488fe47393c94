"""One HTTP exchange as the front door (``asgi.py``) handles it: the ``http.disconnect``
held back until the app's last ``send`` returns, a refused body drained within its bounds
(or the connection closed), ``Connection: close`` while draining, and the refusals the door
answers itself, without the app (an HTTP problem document, or a refused WebSocket
handshake). See ``asgi.py`` for why and when.
"""

from __future__ import annotations

import json
from typing import Any, Final, Protocol

import trio
from hypercorn.typing import (
    ASGIReceiveCallable,
    ASGIReceiveEvent,
    ASGISendCallable,
    ASGISendEvent,
)

from ..errors import RetryLater, ServiceError, Unauthorized

PROBLEM_TYPE: Final = b"application/problem+json"


class Door(Protocol):
    """What an exchange asks of its front door: the drain signal and the drain bounds."""

    shutdown: trio.Event
    drain_max_bytes: int
    drain_timeout_s: float


class Exchange:
    """One request and its response, as the front door sees them.

    Kept cheap on the common path (the body is in before the response ends): no cancel
    scope and no header scan; events are made only when something has to wait.
    """

    def __init__(
        self,
        door: Door,
        headers: Any,
        receive: ASGIReceiveCallable,
        send: ASGISendCallable,
    ) -> None:
        self.door = door
        self.headers = headers
        self._receive = receive
        self._send = send
        self.received = 0
        self.body_in = False  # the whole body was received, or the client went away
        self.drain_limit: int | None = None  # while draining: read no more than this
        self.settled: trio.Event | None = None  # while draining: body in, or past the limit
        self.closing = False
        self.finishing = False  # the app's last send is under way
        self.finished: trio.Event | None = None  # set once it is done, if someone waits

    async def receive(self) -> ASGIReceiveEvent:
        message = await self._receive()
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if not message.get("more_body", False):
                self._body_done()
            elif self.drain_limit is not None and self.received > self.drain_limit:
                self._body_done(whole=False)
        elif message["type"] == "http.disconnect":
            self._body_done()
            if self.finishing:
                # Hypercorn sends this from inside the app's last send, which it has not
                # finished; quart-trio cancels that send once it sees it. Hold it until then.
                self.finished = trio.Event()
                await self.finished.wait()
        return message

    def _body_done(self, *, whole: bool = True) -> None:
        self.body_in = self.body_in or whole
        if self.settled is not None:
            self.settled.set()

    async def send(self, message: ASGISendEvent) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            if self.door.shutdown.is_set() or not self._can_drain():
                message = self._closing(message)
            await self._send(message)
        elif kind == "http.response.body" and not message.get("more_body", False):
            if not self.closing and not self.body_in:
                await self._drain()
            self.finishing = True  # hypercorn recycles or closes the connection in this call
            try:
                await self._send(message)
            finally:
                self.finishing = False
                if self.finished is not None:
                    self.finished.set()
        else:
            await self._send(message)

    def _closing(self, message: Any) -> Any:
        self.closing = True
        headers = [(n, v) for n, v in message.get("headers", []) if n.lower() != b"connection"]
        return {**message, "headers": [*headers, (b"connection", b"close")]}

    def expected(self) -> int | None:
        """The body's declared length; None when it is chunked (unknown)."""
        length = 0
        for name, value in self.headers:
            name = name.lower()
            if name == b"transfer-encoding":
                return None
            if name == b"content-length":
                length = int(value) if value.strip().isdigit() else 0
        return length

    def _can_drain(self) -> bool:
        if self.body_in:
            return True
        expected = self.expected()
        if expected is None:
            return True  # chunked: read up to the bound, then close
        return expected - self.received <= self.door.drain_max_bytes

    async def _drain(self, limit: int | None = None, timeout_s: float | None = None) -> None:
        """Wait while the rest of the body is received, bounded in time and bytes (*limit*,
        or the door's ``drain_max_bytes``).

        Someone else receives it: the app, or ``_discard`` for a refusal of our own.
        """
        if self.body_in:
            return
        self.drain_limit = self.received + (limit or self.door.drain_max_bytes)
        self.settled = trio.Event()
        with trio.move_on_after(timeout_s or self.door.drain_timeout_s):
            await self.settled.wait()

    async def _discard(self) -> None:
        while (await self.receive())["type"] != "http.disconnect":
            pass

    async def refuse(
        self,
        error: ServiceError,
        path: str,
        *,
        close: bool,
        drain_bytes: int | None = None,
        drain_s: float | None = None,
    ) -> None:
        """*error* without the app, e.g. 503 + ``Retry-After``: the service is shutting down
        (*close*: ``Connection: close``) or has no room (the connection stays, its body
        drained within the bounds, or is closed when too much body is left). *drain_bytes*:
        read (and drop) at most that much more body before the end, whatever is left (0: none),
        for at most *drain_s* (default: the door's ``drain_timeout_s``).

        The unread body is read (within the drain bounds) before the connection closes, so the
        close does not reset it under a client still sending, which can cost the client the
        answer already on its way.
        """
        body = json.dumps(error.problem(instance=path), separators=(",", ":")).encode()
        headers = [
            (b"content-type", PROBLEM_TYPE),
            (b"content-length", str(len(body)).encode()),
        ]
        if isinstance(error, RetryLater):
            headers.append((b"retry-after", str(error.retry_after).encode()))
        if isinstance(error, Unauthorized):
            headers.append((b"www-authenticate", b'Bearer realm="trio-audio"'))
        start: Any = {"type": "http.response.start", "status": error.status, "headers": headers}
        self.closing = close
        try:
            await self._answer(start, body, drain_bytes, drain_s)
        except* (trio.BusyResourceError, trio.BrokenResourceError):
            # The client hung up on reading the status line: hypercorn then closes its side
            # outside its send lock, under the answer's last send. Nobody is left to tell.
            pass

    async def _answer(
        self, start: Any, body: bytes, drain_bytes: int | None, drain_s: float | None
    ) -> None:
        drains = self._can_drain() if drain_bytes is None else drain_bytes > 0
        async with trio.open_nursery() as nursery:
            # Hypercorn hands over the body and then ``http.disconnect``: someone must take
            # them until the end, or its queue fills and the close waits forever.
            nursery.start_soon(self._discard)
            await self._send(self._closing(start) if self.closing or not drains else start)
            # In one piece when nothing is to be read: a client that hangs up once it has the
            # answer must not race a last empty send with hypercorn's close.
            await self._send({"type": "http.response.body", "body": body, "more_body": drains})
            if drains:
                await self._drain(drain_bytes, drain_s)
                await self._send({"type": "http.response.body", "body": b"", "more_body": False})
            nursery.cancel_scope.cancel()  # the exchange is over


async def deny_websocket(
    error: ServiceError, path: str, receive: ASGIReceiveCallable, send: ASGISendCallable
) -> None:
    """Refuse a WebSocket handshake with *error*'s status and problem document (the ASGI
    ``websocket.http.response`` extension, which hypercorn implements)."""
    await receive()  # websocket.connect
    body = json.dumps(error.problem(instance=path), separators=(",", ":")).encode()
    headers = [(b"content-type", PROBLEM_TYPE), (b"content-length", str(len(body)).encode())]
    start: Any = {"type": "websocket.http.response.start", "status": error.status,
                  "headers": headers}  # fmt: skip
    await send(start)
    await send({"type": "websocket.http.response.body", "body": body, "more_body": False})
