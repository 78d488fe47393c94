"""What a write sends to the JetStream stream, and its sending until the PubAck comes.

``Planner.plan`` turns a write into its messages (all or nothing) or the error that refuses
it: an upload's chunks, each on its own ``chunk.<seq>`` subject with
``Nats-Expected-Last-Subject-Sequence: 0`` (a compare-and-append: ``(session, seq)`` is
stored once across every node) and ``Nats-Msg-Id`` (the chunk's id), each followed by its
``work.<seq>`` reference (the chunk's metadata, no audio); an update on the chunk's
``update.<chunk_id>`` subject (a transcript with the same compare-and-append: the first
one is the one the log keeps); a delete as tombstones.

``Publisher.publish_all`` sends a batch of writes' messages in their order, all in flight
together: an upload's as one atomic batch (all stored or none, even when this node dies
halfway through sending them), the others each on its own, each sent again once when its
PubAck does not come (the same ``Nats-Msg-Id``: the stream drops the copy if the first
landed), all within ``store_timeout_s`` of the writes' coming to the committer.
"""

from __future__ import annotations

import logging
import secrets
from typing import Any, Final

import attrs
import trio

from ..config import Config
from ..errors import NotFound, PayloadTooLarge
from ..metrics import Metrics
from ..models import Job
from ..store.events import Update, Write
from ..store.index import Index, Planned
from ..store.plan import plan_chunks
from .bridge import NatsError, Unavailable
from .calls import InFlight
from .stream import EXPECT_EMPTY, META, NODE, SOURCE, Stream, to_header, token

logger = logging.getLogger("trio_audio.cluster.jetstream")

HEADER_ROOM: Final = 64 * 1024  # what a chunk's headers may take of a message
MIN_WAIT_S: Final = 0.05  # a publish with less time than this left is not sent


@attrs.define(eq=False)
class Publish:
    """One message a write sends, and what came of it."""

    subject: str
    body: bytes
    headers: dict[str, str]
    seq: int | None = None
    error: NatsError | None = None


@attrs.define(eq=False)
class Pending:
    """A write of the batch in flight: its plan and its messages."""

    write: Write
    plan: list[Planned] | dict[str, Any]
    messages: list[Publish]


class Planner:
    """A write's messages (see the module docstring)."""

    def __init__(self, stream: Stream, index: Index) -> None:
        self._stream = stream
        self._index = index

    def plan(
        self,
        write: Write,
        reserved: dict[tuple[str, str], dict[int, dict[str, Any]]],
        known: dict[str, dict[str, Any]],
    ) -> Pending:
        """The messages *write* publishes (all or nothing), or the error that refuses it."""
        index, stream = self._index, self._stream.name
        if isinstance(write, Job):
            plan = plan_chunks(index, write, reserved, known)
            session = f"{stream}.{token(write.user_id)}.{token(write.session_id)}"
            messages = []
            nats = self._stream.nats
            room = (nats.max_payload if nats else 1 << 20) - HEADER_ROOM
            for planned in plan:
                if planned.meta is None:
                    continue
                body = planned.part.body
                if len(body) > room:
                    msg = f"a chunk of {len(body)} bytes is over the cluster's {room} byte limit"
                    raise PayloadTooLarge(msg)
                headers = {
                    **EXPECT_EMPTY,
                    "Nats-Msg-Id": planned.meta["chunk_id"],
                    META: to_header(planned.meta),
                    NODE: self._stream.node,
                }
                if write.source is not None:
                    headers[SOURCE] = write.source
                seq = planned.meta["seq"]
                messages.append(Publish(f"{session}.chunk.{seq}", body, headers))
                reference = {"chunk_id": planned.meta["chunk_id"], "seq": seq}
                work = {META: to_header(reference), NODE: self._stream.node}
                messages.append(Publish(f"{session}.work.{seq}", b"", work))
            return Pending(write, plan, messages)
        write_id = secrets.token_hex(8)  # (an upload's chunks are deduplicated by their ids)
        if isinstance(write, Update):
            key = index.key(write.chunk_id)
            if key is None:
                msg = f"no chunk {write.chunk_id!r}"
                raise NotFound(msg)
            record = {"chunk_id": write.chunk_id, "set": write.fields}
            subject = f"{stream}.{token(key[0])}.{token(key[1])}.update.{write.chunk_id}"
            headers = self._headers(record, write_id)
            if "transcript" in write.fields:
                # One worker at a time holds a session (cluster/work.py), but one that
                # lost its hold may still finish a decode: the first transcript of a chunk is
                # the one the log keeps (a compare-and-append on the chunk's update subject),
                # and a later one is answered with the chunk as stored.
                if index.status(write.chunk_id) != "pending":
                    return Pending(write, record, [])
                headers.update(EXPECT_EMPTY)
            return Pending(write, record, [Publish(subject, b"", headers)])
        if write.session is not None:
            user_id, session_id = write.session
            if not index.session_chunk_ids(user_id, session_id):
                msg = f"user {user_id!r} has no session {session_id!r}"
                raise NotFound(msg)
            record = {"session": [user_id, session_id]}
            subject = f"{stream}.{token(user_id)}.{token(session_id)}.tombstone"
            wanted: dict[str, Any] = {"chunk_ids": index.session_chunk_ids(user_id, session_id)}
            return Pending(write, wanted, [Publish(subject, b"", self._headers(record, write_id))])
        chunk_ids = index.present(write.chunk_ids)
        if not chunk_ids:
            msg = f"no chunk {', '.join(repr(c) for c in write.chunk_ids[:3])}"
            raise NotFound(msg)
        by_session: dict[tuple[str, str], list[str]] = {}
        for chunk_id in chunk_ids:
            key = index.key(chunk_id)
            assert key is not None
            by_session.setdefault((key[0], key[1]), []).append(chunk_id)
        messages = []
        removed = []
        for i, ((user_id, session_id), ids) in enumerate(by_session.items()):
            record = {"chunk_ids": ids}
            prefix = f"{stream}.{token(user_id)}.{token(session_id)}"
            headers = self._headers(record, f"{write_id}-{i}")
            messages.append(Publish(f"{prefix}.tombstone", b"", headers))
            for chunk_id in ids:
                key = index.key(chunk_id)
                seq = key[2] if key is not None else -1
                subjects = [f"{prefix}.update.{chunk_id}", f"{prefix}.work.{seq}"]
                removed.append((index.stream_seq(chunk_id) or 0, subjects, i))
        return Pending(write, {"chunk_ids": chunk_ids, "removed": removed}, messages)

    def _headers(self, record: dict[str, Any], msg_id: str) -> dict[str, str]:
        return {
            "Nats-Msg-Id": msg_id,
            META: to_header(record),
            NODE: self._stream.node,
        }


@attrs.define(eq=False)
class _Request:
    """One publish that waits for a PubAck: a write's atomic batch, or one message."""

    messages: list[Publish]
    atomic: bool

    def outgoing(self) -> list[tuple[str, bytes, dict[str, str]]]:
        return [(m.subject, m.body, m.headers) for m in self.messages]  # (not changed)

    def settle(self, seqs: list[int] | None, error: NatsError | None) -> None:
        for n, message in enumerate(self.messages):
            message.seq, message.error = (seqs[n] if seqs else None), error


class Publisher:
    """Writes' messages sent, each with its sequence or its error (see the module
    docstring)."""

    def __init__(
        self, config: Config, metrics: Metrics, stream: Stream, pcm: dict[str, bytes]
    ) -> None:
        self._config = config
        self._metrics = metrics
        self._stream = stream
        self._pcm = pcm  # speech PCM of chunks being published (the follower's, see there)

    async def publish_all(self, items: list[Pending], deadline: float) -> None:
        """Publish the messages of *items*, in their order, all in flight together: every
        request is sent before any PubAck is waited for, so the batch waits one round trip,
        not one per write, and one session's writes reach the stream in the order they
        were planned (unless a publish whose PubAck never came is sent again: it can land
        after later ones). An upload's chunks (and their work references) go as one atomic
        batch: all stored or none, even when this node dies halfway through sending them;
        a delete's tombstones (one per session) each on its own."""
        for item in items:
            if isinstance(item.write, Job) and isinstance(item.plan, list):
                for planned in item.plan:
                    if planned.meta is not None and planned.record.speech_pcm is not None:
                        self._pcm[planned.meta["chunk_id"]] = planned.record.speech_pcm
        requests = []
        for item in items:
            if isinstance(item.write, Job):
                requests += [_Request(item.messages, atomic=True)] if item.messages else []
            else:
                requests += [_Request([message], atomic=False) for message in item.messages]
        await self._send(requests, deadline)
        for item in items:
            failed = any(m.error is not None or m.seq is None for m in item.messages)
            if failed and isinstance(item.write, Job) and isinstance(item.plan, list):
                for planned in item.plan:
                    if planned.meta is not None:
                        self._pcm.pop(planned.meta["chunk_id"], None)

    async def _send(self, requests: list[_Request], deadline: float) -> None:
        """Send *requests* in order, then wait for their PubAcks; those with no answer are
        sent again once (a re-send has the same ``Nats-Msg-Id``, so the stream drops it if
        the first copy landed; a re-sent batch that did land the first time loses its
        compare-and-appends, which the committer handles as for any write another node
        took first), all by *deadline* (``store_timeout_s`` after the writes came to the
        committer). Each request ends with its sequences or its error."""
        nats = self._stream.connection()
        for request in requests:
            request.settle(None, Unavailable("no answer within store_timeout_s"))
        todo = requests
        for attempt in range(2):
            started = trio.current_time()
            left = deadline - started
            wait_s = min(self._config.store_timeout_s / 2, left) if attempt == 0 else left
            if wait_s < MIN_WAIT_S or not todo:
                break
            sent: list[tuple[_Request, InFlight]] = []
            try:
                for request in todo:
                    try:
                        flight = await nats.send(request.outgoing(), atomic=request.atomic)
                    except NatsError as exc:
                        request.settle(None, exc)
                    else:
                        sent.append((request, flight))
                with trio.move_on_at(started + wait_s):
                    for _, flight in sent:
                        await flight.answered()
            finally:
                # All at once, with no checkpoint between: the loop's sender never skips
                # an unanswered request yet sends a later one.
                for _, flight in sent:
                    flight.forget()
            todo = []
            for request, flight in sent:
                try:
                    seqs = flight.result(wait_s)
                except Unavailable as exc:
                    request.settle(None, exc)
                    if nats.connected:
                        todo.append(request)
                except NatsError as exc:
                    request.settle(None, exc)
                else:
                    self._metrics.observe_stage("publish", flight.answered_at - started)
                    request.settle(seqs, None)
            if todo and attempt == 0:
                logger.info(
                    "no PubAck in %.1f s for %d publishes, sending again", wait_s, len(todo)
                )
