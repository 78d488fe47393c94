"""The one place where asyncio runs: the ``nats-py`` client inside our ``trio.run``.

``nats-py`` is asyncio-only. ``connect.open_nats`` opens a ``trio-asyncio`` loop in the
calling trio task, connects there, and hands back a ``Nats`` whose methods are plain trio
coroutines (each one an ``aio_as_trio`` hop into the loop). Nothing outside this module and
``connect.py`` imports asyncio or ``nats``; callers see the few operations the JetStream store
needs and the errors below.

Errors (what a caller may catch)::

    NatsError
     ├── Unavailable        no server answered in time (down, partitioned, no meta leader)
     ├── WrongLastSequence  a compare-and-append lost: the subject has a message already
     ├── MessageNotFound    no message at that stream sequence (deleted or purged)
     ├── StorageFull        the stream is at its limits, or a server has no storage left
     ├── NotAuthorized      the servers refused this client's credentials or permissions
     └── ApiFailure         JetStream refused the request for another reason

Which JetStream error code means which is decided here, in ``_translate``, and nowhere else.

Besides the log's operations it offers what cluster transcription needs: a work-queue stream
fed by a stream source, durable pull consumers with explicit acks (``Puller``), a key-value
bucket for leases (create-if-absent and compare-and-set updates), core NATS publish,
subscribe (``Inbox``) and request, and a health probe for ``/readyz``.

Connecting (TLS, credentials, what the connection went through) is ``connect.py``'s, the one
other module that sees nats-py.

Resource handling: ``open_nats`` keeps reconnecting for ever once connected (the client
buffers nothing we rely on: every write waits for its PubAck); on exit it closes the
connection and then the loop. A follower's messages are queued inside the loop (at most
``FOLLOW_QUEUE``; then delivery waits, and flow control holds the server back) and taken in
batches.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final, Generic, TypeVar

import attrs
import nats
import nats.errors
import nats.js.errors
import trio
import trio_asyncio  # type: ignore[import-untyped]
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    KeyValueConfig,
    RetentionPolicy,
    StreamConfig,
    StreamSource,
    SubjectTransform,
)

if TYPE_CHECKING:
    from .connect import Link

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
    if isinstance(exc, nats.errors.AuthorizationError) or "authoriz" in str(exc).lower():
        return NotAuthorized(f"{type(exc).__name__}: {exc}")
    if isinstance(
        exc,
        nats.errors.TimeoutError
        | nats.errors.NoRespondersError
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
    """Messages a subscription's callback queues in the asyncio loop, taken from trio."""

    def __init__(self, loop: Any) -> None:
        self._loop = loop
        self._queue: collections.deque[M] = collections.deque()
        self._arrived: asyncio.Event | None = None
        self._sub: Any = None

    def _put(self, message: M) -> None:
        self._queue.append(message)
        assert self._arrived is not None
        self._arrived.set()

    async def _take(self, most: int, wait_s: float) -> list[M]:
        assert self._arrived is not None
        if not self._queue:
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), wait_s)
            except TimeoutError:
                return []
        out: list[M] = []
        while self._queue and len(out) < most:
            out.append(self._queue.popleft())
        self._taken()
        return out

    def _taken(self) -> None:
        """After a take, in the loop."""

    async def _take_in_loop(self, most: int, wait_s: float) -> list[M]:
        taken: list[M] = await trio_asyncio.aio_as_trio(self._take, loop=self._loop)(most, wait_s)
        return taken


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
        assert self._room is not None
        self._room.set()

    async def close(self) -> None:
        """Stop the consumer (its messages still queued are dropped)."""
        with contextlib.suppress(NatsError):
            await _call(self._loop, self._sub.unsubscribe)

    async def take(self, most: int, wait_s: float) -> list[Message]:
        """Up to *most* messages in stream order; waits up to *wait_s* for the first."""
        return await self._take_in_loop(most, wait_s)


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
        return await self._take_in_loop(INBOX_QUEUE, wait_s)


class Nats:
    """A connected client; its methods are trio coroutines (see the module docstring)."""

    def __init__(self, loop: Any, client: Client, timeout: float, link: Link) -> None:
        self._loop = loop
        self.link = link
        self._nc = client
        self._js = client.jetstream(timeout=timeout)
        self._buckets: dict[str, Any] = {}  # bucket name -> nats-py KeyValue handle
        self.timeout = timeout

    @property
    def connected(self) -> bool:
        return bool(self._nc.is_connected)

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

    async def ensure_stream(
        self,
        name: str,
        subjects: list[str],
        replicas: int,
        duplicate_window_s: float,
        *,
        max_bytes: int = 0,
        max_age_s: float = 0.0,
    ) -> StreamState:
        """Create the stream (or update its settings) and return its state. At *max_bytes*
        it refuses new messages (``discard: new``, ``StorageFull``): acknowledged messages
        are never dropped to make room. *max_age_s* is retention: messages older than it
        leave the stream. 0: the limit the stream has stays (none on a new stream), so a
        node started without the flags does not lift the limits another node set."""
        config = StreamConfig(
            name=name,
            subjects=subjects,
            num_replicas=replicas,
            allow_direct=True,
            allow_atomic=True,  # multipart uploads: all their chunks are stored, or none
            duplicate_window=duplicate_window_s,
            discard=DiscardPolicy.NEW,
            max_bytes=max_bytes if max_bytes > 0 else -1,
            max_age=max_age_s if max_age_s > 0 else 0,
        )
        try:
            info = await _call(self._loop, self._js.add_stream, config)
        except ApiFailure as exc:
            if exc.err_code != 10058:  # stream name already in use with another config
                raise
            existing = (await _call(self._loop, self._js.stream_info, name)).config
            if max_bytes <= 0:  # not given here: the limit another node set stays
                config.max_bytes = existing.max_bytes
            if max_age_s <= 0:
                config.max_age = existing.max_age
            info = await _call(self._loop, self._js.update_stream, config)
        return await self.stream_state(info.config.name)

    async def stream_state(self, name: str) -> StreamState:
        info = await _call(self._loop, self._js.stream_info, name)
        state = info.state
        leader = info.cluster.leader if info.cluster is not None else None
        return StreamState(state.messages, state.bytes, state.first_seq, state.last_seq, leader)

    async def publish(
        self, subject: str, body: bytes, headers: dict[str, str], wait_s: float
    ) -> tuple[int, bool]:
        """Publish and wait for the PubAck: (stream sequence, duplicate?)."""
        if not self.connected:
            msg = "not connected to any NATS server"
            raise Unavailable(msg)
        ack = await _call(
            self._loop, self._js.publish, subject, body, timeout=wait_s, headers=headers
        )
        return int(ack.seq), bool(ack.duplicate)

    async def publish_batch(
        self, messages: list[tuple[str, bytes, dict[str, str]]], wait_s: float
    ) -> list[int]:
        """Publish *messages* as one atomic batch (``allow_atomic`` streams, server 2.12+):
        the stream stores all of them, in order and next to each other, or none (a refused
        compare-and-append, or a publisher that dies before the commit: the server drops
        an uncommitted batch). Their stream sequences, once the commit's PubAck came.
        ``Nats-Msg-Id`` is not allowed in a batch and is left out."""
        if not self.connected:
            msg = "not connected to any NATS server"
            raise Unavailable(msg)
        batch_id = secrets.token_hex(16)

        async def send() -> list[int]:
            for n, (subject, body, headers) in enumerate(messages, 1):
                batch_headers = {k: v for k, v in headers.items() if k != "Nats-Msg-Id"}
                batch_headers["Nats-Batch-Id"] = batch_id
                batch_headers["Nats-Batch-Sequence"] = str(n)
                if n < len(messages):
                    await self._nc.publish(subject, body, headers=batch_headers)
                    continue
                batch_headers["Nats-Batch-Commit"] = "1"
                reply = await self._nc.request(subject, body, timeout=wait_s, headers=batch_headers)
            answer = json.loads(reply.data)
            if "error" in answer:
                nats.js.errors.APIError.from_error(answer["error"])  # raises
            last, count = int(answer["seq"]), int(answer.get("count", len(messages)))
            return list(range(last - count + 1, last + 1))

        seqs: list[int] = await _call(self._loop, send)
        return seqs

    async def get(self, stream: str, seq: int, *, direct: bool = True) -> Message:
        """The message at *seq*: a direct get (any replica answers, one that lags may say
        ``MessageNotFound``), or with *direct* False through the API (the stream's leader)."""
        raw = await _call(self._loop, self._js._jsm.get_msg, stream, seq=seq, direct=direct)
        data = raw.data or b""
        headers = dict(raw.headers or {})
        return Message(raw.subject or "", int(raw.seq or seq), headers, len(data), data)

    async def delete(self, stream: str, seq: int) -> None:
        await _call(self._loop, self._js._jsm.delete_msg, stream, seq)

    async def purge(self, stream: str, subject: str, before_seq: int | None = None) -> None:
        """Remove the messages on *subject* (a filter) with a sequence below *before_seq*."""
        await _call(self._loop, self._js._jsm.purge_stream, stream, seq=before_seq, subject=subject)

    # -- work queues, leases and core subjects (cluster transcription) ---------------------

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

    async def ensure_work_stream(
        self, name: str, source: str, src: str, dest: str, replicas: int
    ) -> None:
        """A work-queue stream fed by the server from *source*'s messages on *src*, their
        subjects rewritten to *dest* (a subject transform, e.g. with ``partition()``).

        A new one starts at *source*'s next message: the servers copy no history (what is
        pending in it is found in the log by whoever takes a partition). One that exists
        with another *src* (the full chunk records of earlier versions) is moved onto *src*
        from the next message on; a *dest* of its own is left as it is (``work_transform``
        tells it, and the caller decides)."""
        origin = await self.stream_state(source)
        start = origin.last_seq + 1

        def config(transform: SubjectTransform) -> StreamConfig:
            return StreamConfig(
                name=name,
                subjects=[],
                sources=[StreamSource(name=source, opt_start_seq=start,
                                      subject_transforms=[transform])],
                retention=RetentionPolicy.WORK_QUEUE,
                num_replicas=replicas,
            )  # fmt: skip

        try:
            await _call(self._loop, self._js.add_stream, config(SubjectTransform(src, dest)))
            return
        except ApiFailure as exc:
            if exc.err_code != 10058:  # the stream exists with another config
                raise
        info = await _call(self._loop, self._js.stream_info, name)
        transforms = [t for s in info.config.sources or [] for t in s.subject_transforms or []]
        if transforms and transforms[0].src != src:
            logger.info("work stream %s: source moved from %s to %s", name, transforms[0].src, src)
            transform = SubjectTransform(src, transforms[0].dest)
            await _call(self._loop, self._js.update_stream, config(transform))

    async def consumer_pending(self, stream: str, durable: str) -> tuple[int, int]:
        """(messages not yet delivered, delivered and not acknowledged) of a consumer."""
        info = await _call(self._loop, self._js.consumer_info, stream, durable)
        return int(info.num_pending or 0), int(info.num_ack_pending or 0)

    async def work_transform(self, name: str) -> str | None:
        """The destination of the first subject transform of *name*'s first source."""
        info = await _call(self._loop, self._js.stream_info, name)
        for source in info.config.sources or []:
            for transform in source.subject_transforms or []:
                return str(transform.dest)
        return None

    async def pull(
        self, stream: str, durable: str, subject: str, ack_wait_s: float, max_ack_pending: int
    ) -> Puller:
        """A durable pull consumer of *subject* (created if missing), explicit acks."""
        config = ConsumerConfig(
            durable_name=durable,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=ack_wait_s,
            max_deliver=-1,
            max_ack_pending=max_ack_pending,
            filter_subject=subject,
        )

        async def subscribe() -> Any:
            return await self._js.pull_subscribe(subject, durable=durable, stream=stream,
                                                 config=config)  # fmt: skip

        return Puller(self._loop, await _call(self._loop, subscribe))

    async def ensure_kv(self, bucket: str, ttl_s: float, replicas: int) -> None:
        """A key-value bucket whose entries expire *ttl_s* after their last write."""
        config = KeyValueConfig(bucket=bucket, ttl=ttl_s, replicas=replicas, history=1)
        await _call(self._loop, self._js.create_key_value, config)

    async def _bucket(self, bucket: str) -> Any:
        """The bucket's handle (in the loop); nats-py asks the server for it on each
        ``key_value`` call, so it is asked once."""
        kv = self._buckets.get(bucket)
        if kv is None:
            kv = self._buckets[bucket] = await self._js.key_value(bucket)
        return kv

    async def kv_get(self, bucket: str, key: str) -> tuple[bytes, int] | None:
        """A key's value and revision (None: absent, deleted or expired)."""

        async def get() -> tuple[bytes, int] | None:
            kv = await self._bucket(bucket)
            try:
                entry = await kv.get(key)
            except nats.js.errors.KeyNotFoundError:
                return None
            return entry.value or b"", int(entry.revision or 0)

        result: tuple[bytes, int] | None = await _call(self._loop, get)
        return result

    async def kv_put(self, bucket: str, key: str, value: bytes, last: int | None) -> int:
        """Write *key* only while its revision is *last* (None: only while it is absent);
        its new revision. ``WrongLastSequence`` when someone else wrote it meanwhile."""

        async def put() -> int:
            kv = await self._bucket(bucket)
            try:
                if last is None:
                    return int(await kv.create(key, value))
                return int(await kv.update(key, value, last=last))
            except nats.js.errors.KeyWrongLastSequenceError as exc:
                raise WrongLastSequence(str(exc), 0) from None

        revision: int = await _call(self._loop, put)
        return revision

    async def kv_delete(self, bucket: str, key: str, last: int) -> None:
        """Delete *key* while its revision is still *last*."""

        async def delete() -> None:
            kv = await self._bucket(bucket)
            try:
                await kv.delete(key, last=last)
            except nats.js.errors.KeyWrongLastSequenceError as exc:
                raise WrongLastSequence(str(exc), 0) from None

        await _call(self._loop, delete)

    async def kv_keys(self, bucket: str, prefix: str) -> list[str]:
        """The keys of *bucket* under ``prefix.`` that have a value (from the bucket's
        stream state; a deleted key's marker counts too)."""
        subjects = f"$KV.{bucket}.{prefix}.>"
        info = await _call(self._loop, self._js.stream_info, f"KV_{bucket}", subjects)
        cut = len(f"$KV.{bucket}.")
        return [subject[cut:] for subject in (info.state.subjects or {})]

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
            inbox._arrived = asyncio.Event()
            inbox._sub = await self._nc.subscribe(subject, cb=inbox._on_message)

        await _call(self._loop, subscribe)
        return inbox

    async def follow(self, stream: str, subjects: list[str], start_seq: int) -> Follower:
        """An ordered headers-only consumer of *subjects* (filters) from *start_seq* (see
        ``Follower``)."""
        follower = Follower(self._loop)
        config = _start_config(start_seq)
        if len(subjects) > 1:
            config = config or ConsumerConfig()
            config.filter_subjects = subjects

        async def subscribe() -> None:
            follower._arrived, follower._room = asyncio.Event(), asyncio.Event()
            follower._sub = await self._js.subscribe(
                subjects[0],
                stream=stream,
                cb=follower._on_message,
                ordered_consumer=True,
                headers_only=True,
                idle_heartbeat=HEARTBEAT_S,
                config=config,
                pending_msgs_limit=1_000_000,
            )

        await _call(self._loop, subscribe)
        return follower


def _start_config(start_seq: int) -> ConsumerConfig | None:
    if start_seq <= 1:
        return None
    return ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start_seq)
