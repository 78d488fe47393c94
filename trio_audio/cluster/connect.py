"""Connecting to the NATS servers: TLS, credentials, and what the connection went through.

``open_nats`` opens a ``trio-asyncio`` loop in the calling trio task, connects there with
``Security``'s TLS context and credentials file, and hands back a ``Nats``: the connection's
health and core NATS, over the JetStream calls of ``calls.py``. ``Link``
keeps the connection's story for ``/readyz``, the logs and ``/metrics``: why it is not
connected now (a refused login, TLS, nothing reachable), reconnects, disconnects.

Secrets: URLs are logged through ``redact`` (a password or token becomes ``***``); the
credentials file's content is read by nats-py and never logged.

Resource handling: ``open_nats`` keeps reconnecting for ever once connected; on exit it closes
the connection (shielded, at most 5 s) and then the loop.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, Final

import attrs
import nats
import nats.errors
import trio
import trio_asyncio  # type: ignore[import-untyped]
from nats.aio.client import Client

from ..config import redact
from .acks import Acks
from .bridge import Inbox, NatsError, Unavailable, _call, _translate
from .calls import WorkCalls

logger = logging.getLogger("trio_audio.cluster.bridge")

LOG_AGAIN_S: Final = 60.0  # a connection error already logged is logged again after this
CLOSE_WAIT_S: Final = 3.0  # how long a stop waits for a connect attempt to give up


@attrs.frozen
class Security:
    """How this client proves itself to the servers and checks them: a CA file to verify
    their certificates (TLS), a client certificate and key (mutual TLS), and a NATS
    credentials file (a user JWT and its NKey seed). Empty: not used."""

    ca: str = ""
    cert: str = ""
    key: str = ""
    creds: str = ""

    def tls(self) -> ssl.SSLContext | None:
        """The TLS context (None: no TLS options given; ``tls://`` URLs then use the
        system's CAs)."""
        if not (self.ca or self.cert):
            return None
        context = ssl.create_default_context(cafile=self.ca or None)
        if self.cert:
            context.load_cert_chain(self.cert, self.key or None)
        return context


@attrs.define
class Link:
    """What the connection has been through, for ``/readyz``, the logs and ``/metrics``."""

    problem: str | None = "connecting"  # why it is not connected now (None: it is)
    reconnects: int = 0
    disconnects: int = 0
    errors: int = 0
    logged: dict[str, float] = attrs.Factory(dict)  # reason: when it was last logged

    def note(self, reason: str) -> None:
        """An error of the connection: the problem now (a refused login is not hidden by
        the broken pipe that follows it), logged once a minute per reason."""
        now = time.monotonic()
        self.errors += 1
        refused = "refused this client" in reason
        if refused or not (self.problem and "refused this client" in self.problem):
            self.problem = reason
        if now - self.logged.get(reason, -LOG_AGAIN_S) >= LOG_AGAIN_S:
            self.logged[reason] = now
            logger.log(logging.ERROR if refused else logging.WARNING, "%s", reason)


class Nats(WorkCalls):
    """A connected client; its methods are trio coroutines: the JetStream calls
    (``calls.py``), the connection's health and core NATS publish, subscribe (``Inbox``) and
    request."""

    def __init__(self, loop: Any, client: Client, timeout: float, link: Link) -> None:
        self._loop = loop
        self.link = link
        self._nc = client
        self._js = client.jetstream(timeout=timeout)
        self._buckets: dict[str, Any] = {}  # bucket name -> nats-py KeyValue handle
        self._acks = Acks(loop, client)
        self.timeout = timeout

    @property
    def max_payload(self) -> int:
        return int(self._nc.max_payload)

    async def wait_meta_leader(self, deadline_s: float | None = None) -> None:
        """Return once JetStream answers an API call (the cluster has a meta leader)."""
        started = time.monotonic()
        while True:
            try:
                await _call(self._loop, self._js.account_info)
                return
            except Unavailable:
                if deadline_s is not None and time.monotonic() - started > deadline_s:
                    raise
                logger.info("waiting for the JetStream meta leader")
                await trio.sleep(0.25)

    async def health(self, wait_s: float) -> str | None:
        """Why JetStream cannot serve now (None: it can): no connection, or no answer from
        its API within *wait_s* (no meta leader yet, or no quorum for one)."""
        if not self.connected:
            return "not connected to any NATS server"
        js = self._nc.jetstream(timeout=wait_s)
        try:
            await _call(self._loop, js.account_info)
        except NatsError as exc:
            return f"JetStream does not answer (no meta leader?): {exc}"
        return None

    async def publish_core(
        self, subject: str, data: bytes, headers: dict[str, str] | None = None
    ) -> None:
        """A core NATS publish (fire and forget: no stream, no acknowledgement)."""
        await _call(self._loop, self._nc.publish, subject, data, headers=headers)

    async def request(self, subject: str, data: bytes, wait_s: float) -> bytes:
        """A core NATS request; the reply's body (``Unavailable``: no answer in time)."""
        msg = await _call(self._loop, self._nc.request, subject, data, timeout=wait_s)
        return bytes(msg.data)

    async def subscribe_core(self, subject: str) -> Inbox:
        """A core NATS subscription of *subject* (see ``Inbox``)."""
        inbox = Inbox(self._loop)

        async def subscribe() -> None:
            inbox._sub = await self._nc.subscribe(subject, cb=inbox._on_message)

        await _call(self._loop, subscribe)
        return inbox


def _describe(exc: BaseException) -> str:
    """A connection error as the operator should read it."""
    text = str(exc).strip() or type(exc).__name__
    if "authorization" in text.lower() or isinstance(
        exc, nats.errors.AuthorizationError | nats.errors.InvalidUserCredentialsError
    ):
        return f"the NATS servers refused this client's credentials ({text})"
    if isinstance(exc, ssl.SSLError | nats.errors.SecureConnFailedError):
        return f"TLS with the NATS servers failed ({text})"
    if isinstance(exc, BrokenPipeError | ConnectionResetError):
        return ("a NATS server closed the connection as it opened (does it want a client "
                f"certificate, TLS or a login?) ({type(exc).__name__})")  # fmt: skip
    if isinstance(exc, ConnectionRefusedError | OSError | asyncio.TimeoutError):
        return f"no NATS server is reachable ({type(exc).__name__}: {text})"
    return f"NATS: {text}"


CANCEL_POLL_S: Final = 0.05  # how often a connect being cancelled is cancelled again


async def _connecting(loop: Any, connect: Callable[[], Awaitable[Client]]) -> Client:
    """``await connect()`` in *loop*, as a task this side owns. nats-py's connect loop
    swallows a cancellation that lands while it closes a failed attempt and tries again for
    ever, so a stop while connecting (refused credentials, nothing reachable) cancels it
    again and again until it ends (at most ``CLOSE_WAIT_S``), instead of waiting on it."""
    task = loop.create_task(connect())
    done = trio.Event()  # set from the loop's callback: the loop runs on this trio thread
    task.add_done_callback(lambda _: done.set())
    try:
        await done.wait()
    finally:
        if not task.done():
            with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_WAIT_S):
                while not task.done():
                    task.cancel()
                    with trio.move_on_after(CANCEL_POLL_S):
                        await done.wait()
    try:
        client: Client = task.result()
    except (TimeoutError, nats.errors.Error, OSError) as exc:
        raise _translate(exc) from exc
    return client


@asynccontextmanager
async def open_nats(
    servers: list[str],
    *,
    name: str,
    request_s: float = 2.0,
    security: Security | None = None,
    link: Link | None = None,
) -> AsyncIterator[Nats]:
    """A trio-asyncio loop and a client connected to *servers* (trying until one answers),
    with *security*'s TLS and credentials; *link* follows how the connection is.

    Reconnects for ever afterwards; requests made while disconnected fail with
    ``Unavailable`` after their timeout. A refused login or unreachable servers are logged
    once per change of reason (at ERROR and WARNING), never with the URLs' secrets."""
    security = security or Security()
    link = link if link is not None else Link()
    shown = ", ".join(redact(url) for url in servers)
    closing = trio.Event()  # set once this side closes: its own disconnect is no problem
    async with trio_asyncio.open_loop() as loop:

        async def connect() -> Client:
            async def note_disconnect() -> None:
                if closing.is_set():
                    logger.info("closed the NATS connection")
                    return
                link.disconnects += 1
                link.problem = "disconnected from NATS; reconnecting"
                logger.warning("disconnected from NATS")

            async def note_reconnect() -> None:
                link.reconnects += 1
                link.problem = None
                logger.info("reconnected to NATS")

            async def note_error(exc: Exception) -> None:
                link.note(f"{_describe(exc)}; still trying {shown}")

            options: dict[str, Any] = {}
            tls = security.tls()
            if tls is not None:
                options["tls"] = tls
            if security.creds:
                options["user_credentials"] = security.creds
            client: Client = await nats.connect(
                servers=servers,
                name=name,
                allow_reconnect=True,
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.25,
                connect_timeout=2,
                ping_interval=2,
                max_outstanding_pings=2,
                disconnected_cb=note_disconnect,
                reconnected_cb=note_reconnect,
                error_cb=note_error,
                **options,
            )
            link.problem = None
            return client

        logger.info("connecting to NATS at %s (waiting until one answers)", shown)
        while True:
            try:
                client = await _connecting(loop, connect)
                break
            except NatsError as exc:
                logger.info("no NATS server answers yet (%s); retrying", exc)
                await trio.sleep(0.5)
        connection = Nats(loop, client, request_s, link)
        try:
            yield connection
        finally:
            closing.set()
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                try:
                    await _call(loop, connection._acks.close)
                    await _call(loop, client.close)
                except NatsError as exc:
                    logger.debug("closing the NATS connection: %s", exc)
