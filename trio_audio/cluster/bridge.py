"""The one place where asyncio runs: the ``nats-py`` client inside our ``trio.run``.

``nats-py`` is asyncio-only. ``connect.open_nats`` opens a ``trio-asyncio`` loop in the
calling trio task, connects there, and hands back a ``connect.Nats`` whose methods are plain
trio coroutines, most of them a hop into the loop through ``_call`` here (its JetStream calls
are ``calls.py``'s; publishes that wait for a PubAck go without a hop each, ``acks.py``).
Nothing outside this module, ``calls.py``, ``acks.py`` and ``connect.py`` imports asyncio or
``nats``; callers see the few operations the JetStream store needs and the errors below.

Errors (what a caller may catch)::

    NatsError
     ├── Unavailable        no server answered in time (down, partitioned, no meta leader)
     ├── WrongLastSequence  a compare-and-append lost: the subject has a message already
     ├── MessageNotFound    no message at that stream sequence (deleted or purged)
     ├── StorageFull        the stream is at its limits, or a server has no storage left
     ├── NotAuthorized      the servers refused this client's credentials or permissions
     └── ApiFailure         JetStream refused the request for another reason

Which JetStream error code means which is decided here, in ``_translate``, and nowhere else.

What the loop delivers is taken from trio here: a followed stream's messages (``Follower``),
a durable pull consumer's work with explicit acks (``Puller``) and a core NATS
subscription's messages (``Inbox``).

Connecting (TLS, credentials, what the connection went through) is ``connect.py``'s, the one
other module that sees nats-py's client; the calls that build on this hop are ``calls.py``.

Resource handling: ``open_nats`` keeps reconnecting for ever once connected (the client
buffers nothing we rely on: every write waits for its PubAck); on exit it closes the
connection and then the loop. A follower's messages are queued inside the loop (at most
``FOLLOW_QUEUE``; then delivery waits, and flow control holds the server back) and taken in
batches from trio, woken by a ``trio.Event`` the loop's callback sets.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final, Generic, TypeVar

import attrs
import nats
import nats.errors
import nats.js.errors
import trio
import trio_asyncio  # type: ignore[import-untyped]
from nats.aio.msg import Msg

logger = logging.getLogger("trio_audio.cluster.bridge")
T = TypeVar("T")
M = TypeVar("M")

WRONG_LAST_SEQUENCE: Final = 10071  # JetStream's err_code for a lost compare-and-append
WRONG_LAST_SEQUENCE_IN_FLIGHT: Final = 10164  # the same, lost to a write still in flight
# A write the stream cannot take: 10077 the stream's store refused it (``discard: new`` at
# max_bytes/max_msgs/max_age, or a store write failed), 10023 the server is out of its
# storage (its disk, or its ``max_file_store``), 10047/10028 no storage (file/memory) left
# for a new stream or replica, 10002 the account's JetStream limits are reached.
STORAGE_FULL: Final = frozenset({10077, 10023, 10047, 10028, 10002})
FOLLOW_QUEUE: Final = 8192  # followed messages held for the trio side; then delivery waits
HEARTBEAT_S: Final = 1.0  # the follower's idle heartbeat: two missed and it re-subscribes
INBOX_QUEUE: Final = 4096  # core NATS messages held for the trio side; then the newest drop


class NatsError(Exception):
    """Base of the errors the bridge raises."""


class Unavailable(NatsError):
    """No answer in time: the cluster (or its meta leader, or the stream's) is unreachable."""


class NoResponders(Unavailable):
    """Nobody listens on that subject (a core request no process is subscribed to)."""


async def retrying(call: Callable[[], Awaitable[T]], pause_s: float = 0.5) -> T:
    """``await call()`` until the cluster answers it (``Unavailable``: log, wait, again)."""
    while True:
        try:
            return await call()
        except Unavailable as exc:
            logger.info("the cluster does not answer (%s); retrying", exc)
            await trio.sleep(pause_s)


class WrongLastSequence(NatsError):
    """A compare-and-append was refused: the subject's last message is ``last_seq`` (0: a
    message still being replicated, whose sequence is not known yet)."""

    def __init__(self, detail: str, last_seq: int) -> None:
        super().__init__(detail)
        self.last_seq = last_seq


class MessageNotFound(NatsError, LookupError):
    """No message at that sequence."""


class StorageFull(NatsError):
    """The stream or the servers cannot store more (see ``STORAGE_FULL``)."""


class NotAuthorized(NatsError):
    """The servers refused this client: a wrong user, password, token or credentials file, or
    no permission for a subject."""


class ApiFailure(NatsError):
    """JetStream refused a request (``err_code``, its description)."""

    def __init__(self, detail: str, err_code: int | None) -> None:
        super().__init__(detail)
        self.err_code = err_code


@attrs.frozen
class Message:
    """One followed message: its subject, stream sequence, headers and body size."""

    subject: str
    seq: int
    headers: dict[str, str]
    size: int
    data: bytes = b""
    pending: int = 0  # messages after this one in the stream (when it was delivered)


@attrs.frozen
class StreamState:
    messages: int
    bytes: int
    first_seq: int
    last_seq: int
    leader: str | None = None  # the server that leads the stream's replicas


def _translate(exc: BaseException) -> NatsError:
    """The bridge's error for an exception from nats-py."""
    if isinstance(exc, nats.js.errors.NotFoundError):
        return MessageNotFound(str(exc))
    if isinstance(exc, nats.js.errors.APIError):
        code = exc.err_code
        if code in (WRONG_LAST_SEQUENCE, WRONG_LAST_SEQUENCE_IN_FLIGHT):
            last = str(exc.description or "").rsplit(":", 1)[-1].strip()
            return WrongLastSequence(str(exc.description), int(last) if last.isdigit() else 0)
        if code in STORAGE_FULL:
            return StorageFull(f"{exc.description} (JetStream error {code})")
        if isinstance(exc, nats.js.errors.ServiceUnavailableError):
            return Unavailable(str(exc))
        return ApiFailure(str(exc.description or exc), code)
    if isinstance(exc, nats.errors.NoRespondersError):
        return NoResponders(f"{type(exc).__name__}: {exc}".rstrip(": "))
    if isinstance(exc, nats.errors.AuthorizationError) or "authoriz" in str(exc).lower():
        return NotAuthorized(f"{type(exc).__name__}: {exc}")
    if isinstance(
        exc,
        nats.errors.TimeoutError
        | nats.js.errors.NoStreamResponseError
        | nats.errors.ConnectionClosedError
        | nats.errors.ConnectionReconnectingError
        | nats.errors.StaleConnectionError
        | nats.errors.OutboundBufferLimitError
        | nats.errors.NoServersError
        | TimeoutError
        | ConnectionError,
    ):
        return Unavailable(f"{type(exc).__name__}: {exc}".rstrip(": "))
    return ApiFailure(f"{type(exc).__name__}: {exc}", None)


async def _call(loop: Any, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Run the asyncio coroutine function *fn* in *loop*; nats-py errors translated. The loop
    is named, not found from context: callers run in tasks started outside ``open_nats``."""
    try:
        return await trio_asyncio.aio_as_trio(fn, loop=loop)(*args, **kwargs)
    except nats.errors.Error as exc:
        raise _translate(exc) from exc
    except (TimeoutError, ConnectionError) as exc:
        raise _translate(exc) from exc


class _Arrivals(Generic[M]):
    """Messages a subscription's callback queues in the asyncio loop, taken from trio.

    trio-asyncio runs the loop's callbacks in trio's own thread, inside a trio task, so the
    callback wakes the taker with a ``trio.Event`` and ``take`` is plain trio: no hop into
    the loop (an asyncio task, a ``wait_for`` timer) for each batch taken."""

    def __init__(self, loop: Any) -> None:
        self._loop = loop
        self._queue: collections.deque[M] = collections.deque()
        self._arrived = trio.Event()
        self._sub: Any = None

    def _put(self, message: M) -> None:
        self._queue.append(message)
        self._arrived.set()

    async def _take(self, most: int, wait_s: float) -> list[M]:
        if not self._queue:
            self._arrived = trio.Event()
            with trio.CancelScope(deadline=trio.current_time() + wait_s):
                await self._arrived.wait()
        out: list[M] = []
        while self._queue and len(out) < most:
            out.append(self._queue.popleft())
        if out:
            self._taken()
        return out

    def _taken(self) -> None:
        """After a take that took something."""


class Follower(_Arrivals[Message]):
    """An ordered, headers-only push consumer over a stream, from a start sequence.

    nats-py's ordered consumer re-creates itself from the next sequence when it sees a gap or
    misses two heartbeats (a server died, the connection moved), so what ``take`` returns is
    the stream in order, each message once; deleted messages are simply absent."""

    def __init__(self, loop: Any) -> None:
        super().__init__(loop)
        self._room: asyncio.Event | None = None

    async def _on_message(self, msg: Msg) -> None:
        assert self._room is not None
        while len(self._queue) >= FOLLOW_QUEUE:  # the client stops reading; flow control
            self._room.clear()  # then holds the server back
            await self._room.wait()
        meta = msg.metadata
        headers = dict(msg.headers or {})
        size = int(headers.pop("Nats-Msg-Size", len(msg.data)))
        self._put(
            Message(msg.subject, meta.sequence.stream, headers, size, msg.data, meta.num_pending)
        )

    def _taken(self) -> None:
        if self._room is not None:  # (an asyncio event set from trio: it only wakes a
            self._room.set()  # waiting callback, by the loop's call_soon)

    async def close(self) -> None:
        """Stop the consumer (its messages still queued are dropped)."""
        with contextlib.suppress(NatsError):
            await _call(self._loop, self._sub.unsubscribe)

    async def take(self, most: int, wait_s: float) -> list[Message]:
        """Up to *most* messages in stream order; waits up to *wait_s* for the first."""
        return await self._take(most, wait_s)


@attrs.frozen
class Work:
    """One message of a durable pull consumer, to be acknowledged (or extended) by the caller:
    its subject, headers, stream sequence and how often it was delivered."""

    subject: str
    seq: int
    headers: dict[str, str]
    delivered: int
    handle: Any = attrs.field(eq=False, repr=False)


class Puller:
    """A durable pull consumer with explicit acks (``Nats.pull``)."""

    def __init__(self, loop: Any, sub: Any) -> None:
        self._loop = loop
        self._sub = sub

    async def take(self, most: int, wait_s: float) -> list[Work]:
        """Up to *most* messages; waits up to *wait_s* for the first ([] when none came)."""

        async def fetch() -> list[Msg]:
            try:
                msgs: list[Msg] = await self._sub.fetch(most, timeout=wait_s)
            except nats.errors.TimeoutError:
                return []
            return msgs

        msgs = await _call(self._loop, fetch)
        return [
            Work(m.subject, m.metadata.sequence.stream, dict(m.headers or {}),
                 m.metadata.num_delivered, m)
            for m in msgs
        ]  # fmt: skip

    async def ack(self, work: Work) -> None:
        """Acknowledge *work* and wait for the server to confirm it."""
        await _call(self._loop, work.handle.ack_sync, 5.0)

    async def in_progress(self, work: Work) -> None:
        """Restart *work*'s ack wait (the caller still holds it)."""
        await _call(self._loop, work.handle.in_progress)

    async def close(self) -> None:
        with contextlib.suppress(NatsError):
            await _call(self._loop, self._sub.unsubscribe)


@attrs.frozen
class CoreMessage:
    """A core NATS message: subject, body, and the subject a reply goes to (if any)."""

    subject: str
    data: bytes
    reply: str = ""


class Inbox(_Arrivals[CoreMessage]):
    """A core NATS subscription whose messages are queued in the loop (at most
    ``INBOX_QUEUE``; beyond that the newest are dropped: core NATS is best effort anyway)."""

    def __init__(self, loop: Any) -> None:
        super().__init__(loop)
        self.dropped = 0

    async def _on_message(self, msg: Msg) -> None:
        if len(self._queue) >= INBOX_QUEUE:
            self.dropped += 1
            return
        self._put(CoreMessage(msg.subject, msg.data, msg.reply or ""))

    async def take(self, wait_s: float) -> list[CoreMessage]:
        """Every queued message; waits up to *wait_s* for the first."""
        return await self._take(INBOX_QUEUE, wait_s)
