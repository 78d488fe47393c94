"""The JetStream calls a connected ``Nats`` answers, as trio coroutines over the bridge.

``LogCalls`` are the log's: create the stream (or update its limits), its state, publish (one
message, or an atomic batch) and wait for the PubAck, get, delete and purge messages, and
follow the stream (``bridge.Follower``). ``WorkCalls`` are what cluster transcription adds: a
work-queue stream fed by a stream source, durable pull consumers with explicit acks
(``bridge.Puller``) and a key-value bucket for leases (create-if-absent and compare-and-set
updates). Each call is one ``bridge._call`` hop into the asyncio loop, its errors translated
there; ``connect.Nats`` is both, over one connection.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import attrs
import msgspec
import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
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

from .acks import Acks, Sent
from .bridge import (
    HEARTBEAT_S,
    ApiFailure,
    Follower,
    Message,
    Puller,
    StreamState,
    Unavailable,
    WrongLastSequence,
    _call,
    _translate,
)

logger = logging.getLogger("trio_audio.cluster.bridge")
_decode = msgspec.json.Decoder().decode  # PubAcks (one per write)


class _Client:
    """What the calls run over: the asyncio loop, the client and its JetStream context."""

    _loop: Any
    _nc: Client
    _js: Any
    _acks: Acks

    @property
    def connected(self) -> bool:
        return bool(self._nc.is_connected)


class LogCalls(_Client):
    """The log's stream (see the module docstring)."""

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
        answer = _pub_ack(await self._acks.request([(subject, body, headers)], wait_s))
        return int(answer["seq"]), bool(answer.get("duplicate", False))

    async def publish_batch(
        self, messages: list[tuple[str, bytes, dict[str, str]]], wait_s: float
    ) -> list[int]:
        """Publish *messages* as one atomic batch (``send``) and wait for its PubAck: their
        stream sequences."""
        return await (await self.send(messages, atomic=True)).seqs(wait_s)

    async def send(
        self, messages: list[tuple[str, bytes, dict[str, str]]], *, atomic: bool = False
    ) -> InFlight:
        """Queue a publish and return at once: one message, or with *atomic* several as one
        atomic batch (``allow_atomic`` streams, server 2.12+: the stream stores all of them,
        in order and next to each other, or none: a refused compare-and-append, or a
        publisher that dies before the commit, and the server drops an uncommitted batch).
        One task's sends go out in the order it made them. ``Nats-Msg-Id`` is not allowed
        in a batch and is left out of one."""
        if not self.connected:
            msg = "not connected to any NATS server"
            raise Unavailable(msg)
        if not atomic:
            assert len(messages) == 1, "several messages go as an atomic batch"
            return InFlight(self._acks, await self._acks.send(messages), 1)
        batch_id = self._acks.unique()
        outgoing = []
        for n, (subject, body, headers) in enumerate(messages, 1):
            batch_headers = {k: v for k, v in headers.items() if k != "Nats-Msg-Id"}
            batch_headers["Nats-Batch-Id"] = batch_id
            batch_headers["Nats-Batch-Sequence"] = str(n)
            if n == len(messages):
                batch_headers["Nats-Batch-Commit"] = "1"
            outgoing.append((subject, body, batch_headers))
        return InFlight(self._acks, await self._acks.send(outgoing), len(messages))

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

    async def follow(self, stream: str, subjects: list[str], start_seq: int) -> Follower:
        """An ordered headers-only consumer of *subjects* (filters) from *start_seq* (see
        ``Follower``)."""
        follower = Follower(self._loop)
        config = _start_config(start_seq)
        if len(subjects) > 1:
            config = config or ConsumerConfig()
            config.filter_subjects = subjects

        async def subscribe() -> None:
            follower._room = asyncio.Event()
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


class WorkCalls(LogCalls):
    """Transcription's work queue, its pull consumers and the lease bucket."""

    _buckets: dict[str, Any]  # bucket name -> nats-py KeyValue handle

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


@attrs.frozen
class InFlight:
    """A publish sent (``LogCalls.send``), its PubAck still to come."""

    _acks: Acks
    _sent: Sent
    _count: int  # messages it stores

    @property
    def answered_at(self) -> float:
        """Trio time its PubAck came (0: not yet)."""
        return self._sent.answered_at

    async def answered(self) -> None:
        """Return once its PubAck (or the error in its place) came."""
        await self._sent.answered.wait()

    async def seqs(self, wait_s: float) -> list[int]:
        """Its messages' stream sequences, once its PubAck came within *wait_s* (see
        ``result``)."""
        return self._seqs(await self._acks.answer(self._sent, wait_s))

    def result(self, waited_s: float) -> list[int]:
        """Its messages' stream sequences as things stand, without waiting (forget it
        first). The bridge's error for what came instead, ``Unavailable`` when nothing came
        in the *waited_s* seconds its caller waited."""
        return self._seqs(self._acks.result(self._sent, waited_s))

    def _seqs(self, reply: bytes) -> list[int]:
        answer = _pub_ack(reply)
        last, count = int(answer["seq"]), int(answer.get("count", self._count))
        return list(range(last - count + 1, last + 1))

    def forget(self) -> None:
        """Stop waiting for it (not sent at all, if it is still queued)."""
        self._acks.forget(self._sent)


def _pub_ack(reply: bytes) -> dict[str, Any]:
    """A PubAck's fields, or the bridge's error for the one JetStream answered with."""
    try:
        answer: dict[str, Any] = _decode(reply)
        if "error" in answer:
            nats.js.errors.APIError.from_error(answer["error"])  # raises
        int(answer["seq"])  # a PubAck without a sequence is no PubAck
    except nats.errors.Error as exc:
        raise _translate(exc) from exc
    except (msgspec.DecodeError, KeyError, TypeError, ValueError) as exc:
        msg = f"JetStream answered a publish with {reply[:200]!r}"
        raise ApiFailure(msg, None) from exc
    return answer


def _start_config(start_seq: int) -> ConsumerConfig | None:
    if start_seq <= 1:
        return None
    return ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start_seq)
