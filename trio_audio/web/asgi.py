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

What it does, per HTTP request (the first two through ``exchange.py``'s ``Exchange``):

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

- With auth off, the rules of ``origins.py`` first: a ``Host`` not ours is a 421, a foreign
  ``Origin`` on a WebSocket handshake or a request that changes something a 403, a simple
  (``text/plain``, form-urlencoded) upload a 415.
- An upload (``POST /upload``) is refused before its body is read when it can be (401, 429,
  a full ingest queue, no admission slot in time); else its body is read here, by the rules
  of ``bodies.py`` (minimum rate, size, bytes in flight), and only then does it take its
  admission slot and reach the app, which receives the body again from memory.

Resource handling: a refusal's unread body costs at most ``drain_max_bytes`` of reading and
``drain_timeout_s`` of waiting (no task is runnable while it waits), but a 503 for an
upload, whose rest is read up to ``max_body_bytes`` (``BodyRules.linger_s``) so its client
gets the answer; every upload body's bytes are counted in ``max_body_bytes_inflight``.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Final
from urllib.parse import parse_qs

import trio
from hypercorn.typing import (
    ASGIFramework,
    ASGIReceiveCallable,
    ASGISendCallable,
    HTTPScope,
    Scope,
)

from ..errors import (
    Overloaded,
    PayloadTooLarge,
    RequestTimeout,
    RetryLater,
    ServiceError,
    Unauthorized,
)
from ..metrics import Metrics
from ..pipeline.pipeline import Ingress
from .access import Access
from .admission import Admission
from .bodies import Body, BodyRules, ClientGone
from .exchange import Exchange, deny_websocket
from .origins import Origins, header_map

DRAIN_MAX_BYTES: Final = 512 * 1024
"""The most unread body a refusal reads to keep its connection. Measured per refusal of
server CPU, reading the body and keeping the connection against closing it and taking the
client's new connection: 2.1 against 3.4 ms at 32 KB, 2.4 against 3.7 ms at 256 KB, about
even at 512 KB, 6.7 against 3.9 ms at 1 MB (README, Notes)."""
DRAIN_TIMEOUT_S: Final = 2.0
"""How long a refusal waits for the rest of its body before the connection closes."""
REFUSALS: Final = {408: "slow_body", 413: "body_too_large"}  # metrics' reasons, by status
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
        bodies: BodyRules | None = None,
        origins: Origins | None = None,
        access: Access | None = None,
        ingress: Ingress | None = None,
    ) -> None:
        self.app = app
        self.shutdown = shutdown
        self.retry_after_s = retry_after_s
        self.admission = admission
        self.bodies = bodies
        self.origins = origins if origins is not None and origins.enforce else None
        self.access = access
        self.ingress = ingress
        self.metrics = metrics
        self.drain_max_bytes = drain_max_bytes
        self.drain_timeout_s = drain_timeout_s

    async def __call__(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        if scope["type"] == "websocket" and self.origins is not None:
            error = self.origins.refusal("WEBSOCKET", scope["path"], header_map(scope["headers"]))
            if error is not None:
                await deny_websocket(error, scope["path"], receive, send)
                return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        exchange = Exchange(self, scope["headers"], receive, send)
        if self.origins is not None:
            headers = header_map(scope["headers"])
            error = self.origins.refusal(scope["method"], scope["path"], headers)
            if error is not None:
                self._refused(error.code)
                await exchange.refuse(error, scope["path"], close=False)
                return
        if self.shutdown.is_set() and scope["path"] not in PROBE_PATHS:
            if self.metrics is not None:
                self.metrics.refuse("shutting_down")
            error = Overloaded("the service is shutting down; retry on a new connection",
                               retry_after=self.retry_after_s)  # fmt: skip
            await exchange.refuse(error, scope["path"], close=True)
            return
        if scope["path"] not in ADMITTED_PATHS:
            await self.app(scope, exchange.receive, exchange.send)
        elif self.bodies is not None and scope["method"] == "POST":
            await self._upload(scope, exchange, self.bodies)
        else:
            await self._admitted(scope, exchange, exchange.receive)

    async def _admitted(self, scope: HTTPScope, exchange: Exchange, receive: Any) -> None:
        """The app behind the admission gate (503 when it has no slot in time)."""
        gate = self.admission
        if gate is None:
            await self.app(scope, receive, exchange.send)
            return
        try:
            await gate.acquire()
        except Overloaded as error:
            self._refused("admission")
            client = scope.get("client")
            await gate.pace(tuple(client) if client else None, self.shutdown)
            # The drain may have begun while the refusal was held: then it closes too.
            await exchange.refuse(error, scope["path"], close=self.shutdown.is_set())
            return
        try:
            await self.app(scope, receive, exchange.send)
        finally:
            gate.release()

    async def _upload(self, scope: HTTPScope, exchange: Exchange, rules: BodyRules) -> None:
        """Read the body by the rules of ``bodies.py``, then admit it: a body still on its
        way holds no slot. A length over the limit goes to the app (413 before reading)."""
        declared = exchange.expected()
        if declared is not None and declared > rules.max_bytes:
            await self.app(scope, exchange.receive, exchange.send)
            return
        try:
            self._before_body(scope)
        except (Unauthorized, RetryLater) as error:
            await self._refuse_upload(exchange, error, scope["path"], rules)
            return
        gate = self.admission
        if gate is not None:
            try:  # no room inside: refused before the body is read, as before
                await gate.room()
            except Overloaded as error:
                self._refused("admission")
                client = scope.get("client")
                await gate.pace(tuple(client) if client else None, self.shutdown)
                await self._refuse_upload(exchange, error, scope["path"], rules)
                return
        body = Body(rules)
        try:
            try:
                await body.read(exchange.receive, declared)
            except ClientGone:
                return
            except (RequestTimeout, PayloadTooLarge, Overloaded) as error:
                self._refused(REFUSALS.get(error.status, "body_budget"))
                body.release()
                await self._refuse_upload(exchange, error, scope["path"], rules)
                return
            await self._admitted(scope, exchange, partial(body.replay, exchange.receive))
        finally:
            body.release()

    @staticmethod
    async def _refuse_upload(
        exchange: Exchange, error: ServiceError, path: str, rules: BodyRules
    ) -> None:
        """A 503 (no room) reads and drops the rest of the body, however big, so its client,
        still sending, gets the answer instead of a reset; other refusals as any early answer
        (the rest drained within ``drain_max_bytes``, or the connection closed)."""
        if isinstance(error, Overloaded):
            await exchange.refuse(error, path, close=False, drain_bytes=rules.max_bytes,
                                  drain_s=rules.linger_s)  # fmt: skip
        else:
            await exchange.refuse(error, path, close=False)

    def _before_body(self, scope: HTTPScope) -> None:
        """What an upload can be refused for before its body is read: no valid token (401),
        its user over the rate limit (429; a multipart upload names its user in the body,
        and is counted by the app), no room in the ingest queue (503)."""
        access = self.access
        if access is not None:
            headers = header_map(scope["headers"])
            user = access.user_for_request(headers)
            if not headers.get("content-type", "").lower().startswith("multipart/form-data"):
                query = parse_qs(scope["query_string"].decode("latin-1"))
                named = query.get("user_id", [None])[0]
                if owner := user or named:
                    access.take(owner)
        if self.ingress is not None and self.ingress.full:
            raise self.ingress.refuse("queue_full")

    def _refused(self, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.refuse(reason)
