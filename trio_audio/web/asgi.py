"""The front door: an ASGI layer between hypercorn and the quart-trio app.

It keeps every keep-alive connection answerable after a refusal, and it answers the requests
that arrive while the service drains. Only ``http`` scopes pass through it; WebSocket and
lifespan scopes go to the app untouched. HTTP/2 (over TLS) gets the same handling: there the
wait for a refused body keeps hypercorn's connection alive (its ``H2Protocol`` fails with a
``KeyError`` on body data for a stream that has ended, and resets the whole connection), and
the ``Connection`` header is dropped by h2.

Why it is needed (hypercorn 0.18, quart-trio 0.12): hypercorn ends an exchange inside the
app's last ``send`` call (``H11Protocol._maybe_recycle``: start the connection's next request
cycle and restart its idle timer, or close it). Just before, it hands the app
``http.disconnect``, and quart-trio answers that by cancelling the nursery that very ``send``
runs in, so the recycle is cut at its first checkpoint. After a response sent before the
request body was read (401, 413, 429, 503), the close is what gets cut: the socket stays open,
the rest of the body and the next request are parsed into a connection with no stream, and
the next request is never answered. After an ordinary response, the idle timer is what gets
cut: an idle keep-alive connection is then neither closed after ``keep_alive_timeout`` nor at
shutdown, and holds a graceful shutdown for its whole deadline.

What it does, per HTTP request:

- The ``http.disconnect`` that hypercorn hands the app from inside its last ``send`` is held
  back until that ``send`` returns, so quart-trio cannot cancel it: hypercorn's recycle or
  close always completes. (A shielded cancel scope around the ``send`` does the same and costs
  about 35 us per request; holding the message costs an event, and only when it must wait.)
- A response sent before the whole body arrived: when at most ``drain_max_bytes`` of body
  remain (by ``Content-Length``; a chunked body counts as unknown and is read up to that
  bound), the response goes out at once and the exchange ends once the rest of the body is in
  (the app keeps receiving it, and drops it with the request) or after ``drain_timeout_s``; the
  connection then carries on. A larger remainder gets ``Connection: close``, and the connection
  closes after the response.
- Once *shutdown* is set, every response carries ``Connection: close``, and a request that
  arrives then gets 503 ``overloaded`` with ``Retry-After`` and ``Connection: close`` without
  reaching the app, but for the probes (``/healthz``, ``/readyz``, ``/metrics``), which the
  app still answers so a load balancer sees the drain. Hypercorn closes idle keep-alive
  connections itself (its idle timer, which the uncut recycle keeps running).

Resource handling: a refusal's unread body costs at most ``drain_max_bytes`` of reading and
``drain_timeout_s`` of waiting (no task is runnable while it waits).
"""

from __future__ import annotations

import json
from typing import Any, Final

import trio
from hypercorn.typing import (
    ASGIFramework,
    ASGIReceiveCallable,
    ASGIReceiveEvent,
    ASGISendCallable,
    ASGISendEvent,
    Scope,
)

from ..errors import Overloaded
from ..metrics import Metrics
from .admission import Admission

DRAIN_MAX_BYTES: Final = 512 * 1024
"""The most unread body a refusal reads to keep its connection. Measured per refusal of
server CPU, reading the body and keeping the connection against closing it and taking the
client's new connection: 2.1 against 3.4 ms at 32 KB, 2.4 against 3.7 ms at 256 KB, about
even at 512 KB, 6.7 against 3.9 ms at 1 MB (README, Notes)."""
DRAIN_TIMEOUT_S: Final = 2.0
"""How long a refusal waits for the rest of its body before the connection closes."""
PROBLEM_TYPE: Final = b"application/problem+json"
ADMITTED_PATHS: Final = frozenset({"/upload"})  # what the admission gate holds back
# Answered by the app even while draining (with ``Connection: close``): a probe must see
# ``/readyz`` say draining and ``/healthz`` say alive, and a scrape must still get ``/metrics``.
PROBE_PATHS: Final = frozenset({"/healthz", "/readyz", "/metrics"})


class FrontDoor:
    """The ASGI app hypercorn serves: *app* behind the rules above.

    *shutdown* is the service's drain signal; *retry_after_s* goes in the ``Retry-After`` of
    a refusal sent while draining.
    """

    def __init__(
        self,
        app: ASGIFramework,
        shutdown: trio.Event,
        *,
        retry_after_s: int = 1,
        drain_max_bytes: int = DRAIN_MAX_BYTES,
        drain_timeout_s: float = DRAIN_TIMEOUT_S,
        admission: Admission | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.app = app
        self.shutdown = shutdown
        self.retry_after_s = retry_after_s
        self.admission = admission
        self.metrics = metrics
        self.drain_max_bytes = drain_max_bytes
        self.drain_timeout_s = drain_timeout_s

    async def __call__(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        exchange = Exchange(self, scope["headers"], receive, send)
        if self.shutdown.is_set() and scope["path"] not in PROBE_PATHS:
            if self.metrics is not None:
                self.metrics.refuse("shutting_down")
            error = Overloaded("the service is shutting down; retry on a new connection",
                               retry_after=self.retry_after_s)  # fmt: skip
            await exchange.refuse(error, scope["path"], close=True)
            return
        gate = self.admission if scope["path"] in ADMITTED_PATHS else None
        if gate is None:
            await self.app(scope, exchange.receive, exchange.send)
            return
        try:
            await gate.acquire()  # before the body is read
        except Overloaded as error:
            if self.metrics is not None:
                self.metrics.refuse("admission")
            client = scope.get("client")
            await gate.pace(tuple(client) if client else None, self.shutdown)
            # The drain may have begun while the refusal was held: then it closes too.
            await exchange.refuse(error, scope["path"], close=self.shutdown.is_set())
            return
        try:
            await self.app(scope, exchange.receive, exchange.send)
        finally:
            gate.release()


class Exchange:
    """One request and its response, as the front door sees them.

    Kept cheap on the common path (the body is in before the response ends): no cancel
    scope and no header scan; events are made only when something has to wait.
    """

    def __init__(
        self,
        door: FrontDoor,
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

    def _expected(self) -> int | None:
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
        expected = self._expected()
        if expected is None:
            return True  # chunked: read up to the bound, then close
        return expected - self.received <= self.door.drain_max_bytes

    async def _drain(self) -> None:
        """Wait while the rest of the body is received, bounded in time and bytes.

        Someone else receives it: the app, or ``_discard`` for a refusal of our own.
        """
        if self.body_in:
            return
        self.drain_limit = self.received + self.door.drain_max_bytes
        self.settled = trio.Event()
        with trio.move_on_after(self.door.drain_timeout_s):
            await self.settled.wait()

    async def _discard(self) -> None:
        while (await self.receive())["type"] != "http.disconnect":
            pass

    async def refuse(self, error: Overloaded, path: str, *, close: bool) -> None:
        """503 + ``Retry-After`` without the app: the service is shutting down (*close*:
        ``Connection: close``) or has no room (the connection stays, its body drained within
        the bounds, or is closed when too much body is left).

        The unread body is read (within the drain bounds) before the connection closes, so the
        close does not reset it under a client still sending, which can cost the client the
        answer already on its way.
        """
        body = json.dumps(error.problem(instance=path), separators=(",", ":")).encode()
        headers = [
            (b"content-type", PROBLEM_TYPE),
            (b"content-length", str(len(body)).encode()),
            (b"retry-after", str(error.retry_after).encode()),
        ]
        start: Any = {"type": "http.response.start", "status": error.status, "headers": headers}
        async with trio.open_nursery() as nursery:
            # Hypercorn hands over the body and then ``http.disconnect``: someone must take
            # them until the end, or its queue fills and the close waits forever.
            nursery.start_soon(self._discard)
            await self._send(self._closing(start) if close or not self._can_drain() else start)
            await self._send({"type": "http.response.body", "body": body, "more_body": True})
            if self._can_drain():
                await self._drain()
            await self._send({"type": "http.response.body", "body": b"", "more_body": False})
            nursery.cancel_scope.cancel()  # the exchange is over
