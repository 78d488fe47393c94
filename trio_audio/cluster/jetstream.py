"""The cluster store: the log is a replicated JetStream stream that every node follows.

::

    pipeline (Jobs) ──┐                                   JetStream stream (R=3, fsynced)
    transcriber ──────┼──> writes ──> committer ──publish──>  AUDIO.<user>.<session>.…
    web (deletes) ────┘                  ▲                          │
                                         │ answered once            │ ordered, headers-only
                                         │ its node has it          ▼ consumer (every node)
                                         └──────────────────── follower ──> index (memory)
                                                                    └──> events ──> fan-out

Subjects (``<user>`` and ``<session>`` with ``.`` written as ``~``)::

    AUDIO.<user>.<session>.chunk.<seq>          one chunk: its audio in the body
    AUDIO.<user>.<session>.work.<seq>           its reference for transcription (no body)
    AUDIO.<user>.<session>.update.<chunk_id>    new top-level fields of a chunk
    AUDIO.<user>.<session>.tombstone            chunks deleted (by id, or the whole session)

A session's records are ordered by the stream; ``AUDIO.<user>.>`` filters a user's. The
metadata of every record is a JSON header (``Trio-Audio``), so the follower replays and
follows with ``headers_only`` and never pulls audio; ``read_audio`` fetches one message's
body by its stream sequence with a direct get (any replica answers).

The committer hands each write to one of ``COMMIT_LANES`` lanes by its session; each lane
plans, publishes and answers its writes batch by batch, and the lanes run side by side, so
a node keeps many publishes in flight (other sessions' batches go on while one waits for its
PubAck) instead of waiting batch by batch. One session's writes are in one lane, in order:
each plan sees the session's earlier writes, and a lost compare-and-append is rare.

Writes and their guarantees:

- A write is answered only after its PubAck, which JetStream sends once a quorum (2 of 3)
  has the message (each fsynced: the servers run ``sync_interval: always``), *and* after this
  node's follower has applied it and sent its events, so the node that answered 201 can read
  it at once. (A follower lagging past twice ``store_timeout_s`` gets the write answered from
  its plan: it is stored, and a 503 would make a client's retry store it again.)
- ``(session, seq)`` is stored once across every node: a chunk is published with
  ``Nats-Expected-Last-Subject-Sequence: 0`` on its own subject ``…chunk.<seq>``, which
  JetStream accepts only while that subject is empty (a compare-and-append, checked by the
  stream's leader, for ever, not within a window). The node that loses the race gets err
  10071, waits until its follower has the winner, and plans again: same bytes, 200 with the
  stored chunk; other bytes, 409 ``seq_conflict``.
- ``Nats-Msg-Id`` (the new chunk's id, or a write's own id) makes this node's re-send of a
  publish whose PubAck it did not get (a timeout while the message did land) a no-op: the
  stream drops a duplicate id seen within its duplicate window (``store_dedupe_s``, 2 min
  by default), and answers with the first copy's sequence.
- An upload's chunks are published as one atomic batch (``Nats.publish_batch``), each
  followed by its ``work.<seq>`` reference (the chunk's metadata, no audio: what the
  transcription work stream copies, ``cluster/work.py``): all stored or none, even when
  this node dies halfway through sending them. (A batch carries no ``Nats-Msg-Id``: a re-sent
  batch that did land loses its compare-and-appends, and is answered as above.)
- Limits refuse, never drop: the stream is ``discard: new``; at ``--store-max-bytes`` (or
  when a server has no storage left) a write gets 507 ``insufficient_storage`` and
  ``/readyz`` says the stream is full. ``--store-max-age`` is retention: records older than
  it leave the stream.
- A transcript (an update of the ``transcript`` field) is written once per chunk: it is
  published with the same compare-and-append on the chunk's update subject, and one that
  comes when the chunk is no longer ``pending`` is answered with the chunk as stored. Each
  session is transcribed by one worker at a time (``cluster/work.py``); this guard keeps
  the log right when a worker that lost its hold on a session still finishes a decode.
- Deletes publish a tombstone (every node drops the chunks from its index), then delete the
  chunk messages from the stream (by sequence, or a purge of the session's subjects below the
  tombstone's sequence), so the audio is gone from every replica.

Read-your-writes: on the node that acknowledged a write, always (but for that lag). On
another node once its follower has applied it: milliseconds later on a healthy cluster; a
client that sends the ``Trio-Audio-Position`` a write's answer carried makes the node wait
(up to twice ``store_timeout_s``) until its follower has applied that much (``position``,
``wait_followed``). Audio reads: a direct get (any replica) that finds no message is asked
again of the stream's leader, and again while the cluster does not answer (up to twice
``store_timeout_s``): a replica that lags is no deletion. Only a tombstone makes a chunk gone.

Health: once running, the node asks JetStream every second whether it answers and how the
stream is (``observe.py``); ``on_health`` hears why not, for ``/readyz``.

Error handling: when no server answers a write within ``store_timeout_s`` of the committer
taking it (or the client is disconnected) the write fails with 503 ``unavailable`` and
Retry-After: never a hang, never an answer for a write that is not stored. Reads of the
index keep working; audio reads need the cluster. The client reconnects by itself and the
follower resumes where it stopped.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import secrets
import time
import zlib
from collections.abc import Awaitable, Callable
from typing import Any, Final

import attrs
import trio

from ..config import Config
from ..errors import (
    InsufficientStorage,
    InternalError,
    NotFound,
    PayloadTooLarge,
    ServiceError,
    StoreError,
    StoreUnavailable,
)
from ..metrics import Metrics
from ..models import Job
from ..store.events import (
    ChunkStored,
    ChunkUpdated,
    CommitChannels,
    Committed,
    Delete,
    Update,
    Write,
    deleted_events,
)
from ..store.index import Index, Location, Place, Planned, Stored
from ..store.reads import IndexReads, MetaCache, Read, apply_patch
from ..store.types import StoreStats
from .bridge import (
    Follower,
    Message,
    MessageNotFound,
    NatsError,
    StorageFull,
    Unavailable,
    WrongLastSequence,
    retrying,
)
from .connect import Link, Nats, Security, open_nats, redact
from .observe import Watch

logger = logging.getLogger("trio_audio.cluster.jetstream")

META: Final = "Trio-Audio"  # the header holding a record's metadata (JSON)
SOURCE: Final = "Trio-Audio-Source"  # the connection that sent a chunk (skips its echo)
NODE: Final = "Trio-Audio-Node"  # the node that published a record
EXPECT_EMPTY: Final = {"Nats-Expected-Last-Subject-Sequence": "0"}
PLAN_ATTEMPTS: Final = 4  # plans of one write that lose a compare-and-append, then 503
FOLLOW_BATCH: Final = 512
STREAM_CREATE_S: Final = 20.0  # how long a refused stream creation is retried at start
STREAM_NAME: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")  # also the subjects' first token
HEADER_ROOM: Final = 64 * 1024  # what a chunk's headers may take of a message
COMMIT_LANES: Final = 16  # sessions' writes committed side by side (a session's in one)
MIN_WAIT_S: Final = 0.05  # a publish with less time than this left is not sent
READ_PAUSE_S: Final = 0.1  # between tries of an audio read the cluster cannot answer yet
READS_AT_ONCE: Final = 16  # gets of chunk metadata by stream sequence in flight at once


def servers(store: str) -> list[str]:
    """The server URLs of a ``--store`` value (``nats://h1:4222,nats://h2:4222``)."""
    urls = [u.strip() for u in store.split(",") if u.strip()]
    for url in urls:
        if not url.startswith(("nats://", "tls://")):
            msg = f"store must be a list of nats:// URLs, got {redact(url)!r}"
            raise ValueError(msg)
    return urls


def token(value: str) -> str:
    """An id as one subject token (ids may hold ``.``, which separates tokens)."""
    return value.replace(".", "~")


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


class JetStreamStore(CommitChannels, IndexReads):
    """A ``StoreBackend`` on a JetStream stream (see the module docstring)."""

    def __init__(
        self,
        config: Config,
        *,
        metrics: Metrics | None = None,
        on_health: Callable[[str | None], None] | None = None,
    ) -> None:
        self._config = config
        self._metrics = metrics if metrics is not None else Metrics()
        self._servers = servers(config.store)
        if not STREAM_NAME.fullmatch(config.store_stream):
            msg = f"store_stream must match {STREAM_NAME.pattern}, got {config.store_stream!r}"
            raise ValueError(msg)
        self._stream = config.store_stream
        self._node = secrets.token_hex(6)
        self._index = Index(config.transcript_status(), cluster=True)
        self._cache = MetaCache(int(config.meta_cache_mb * 1024 * 1024))
        self._reader = self._read_stream
        self._metrics.observe_cache(self._cache)
        self._link = Link()
        self._watch = Watch(self._stream, config.store_timeout_s, lambda: self._applied, on_health)
        self._watch.register(self._metrics)
        self._starting: str | None = "connecting to the NATS cluster"  # None: started
        self._send, self._receive = trio.open_memory_channel[Write](config.stage_queue)
        self._events: trio.MemorySendChannel[Committed] | None = None
        self._nats: Nats | None = None
        self._applied = 0  # the last stream sequence the follower applied
        self._announced = 0  # ... and whose events it has sent
        self._progress = trio.Event()  # set (and replaced) each time the follower applies
        self._live = False  # events are sent once replay is done
        self._groups: dict[str, list[tuple[dict[str, Any], Message]]] = {}
        self._pcm: dict[str, bytes] = {}  # speech PCM of chunks this node is publishing
        self._results: dict[int, Any] = {}  # what the follower made of this node's records
        self._replayed: int | None = None
        self._pending: list[str] = []
        self._bytes = 0

    # -- lifecycle -------------------------------------------------------------------------

    async def run(
        self, *, task_status: trio.TaskStatus[JetStreamStore] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Connect, wait for the meta leader, create the stream, replay it, report ready;
        then follow it and commit until the writes end."""
        config = self._config
        try:
            security = Security(config.store_tls_ca, config.store_tls_cert,
                                config.store_tls_key, config.store_creds)  # fmt: skip
            async with open_nats(
                self._servers, name=f"trio-audio-{self._node}", request_s=config.store_timeout_s,
                security=security, link=self._link,
            ) as nats:  # fmt: skip
                self._nats = nats
                self._starting = "waiting for the JetStream meta leader"
                logger.info("connected to NATS; waiting for the JetStream meta leader")
                state = None
                refused_since = None
                while state is None:
                    await nats.wait_meta_leader()
                    try:
                        state = await nats.ensure_stream(
                            self._stream,
                            [f"{self._stream}.>"],
                            config.store_replicas,
                            config.store_dedupe_s,
                            max_bytes=config.store_max_bytes,
                            max_age_s=config.store_max_age_s,
                        )
                    except Unavailable as exc:
                        logger.info("the stream is not available yet (%s); retrying", exc)
                        await trio.sleep(0.5)
                    except NatsError as exc:
                        # A cluster still forming may lack the peers for a while: retry, then
                        # give up with the reason.
                        now = trio.current_time()
                        refused_since = refused_since if refused_since is not None else now
                        if now - refused_since < STREAM_CREATE_S:
                            logger.info("the stream cannot be created yet (%s); retrying", exc)
                            await trio.sleep(0.5)
                            continue
                        msg = (
                            f"cannot create the stream {self._stream} with "
                            f"{config.store_replicas} replicas: {exc} (a cluster of fewer "
                            "servers needs a lower --store-replicas)"
                        )
                        raise StoreError(msg) from None
                self._starting = f"replaying the stream {self._stream} ({state.messages} records)"
                # Replay skips the work references (half the records: nothing to index);
                # following then takes everything from the first record replay left.
                kinds = [f"{self._stream}.*.*.{kind}" for kind in ("chunk.*", "update.*")]
                indexed = [*kinds, f"{self._stream}.*.*.tombstone"]
                replaying = await retrying(lambda: nats.follow(self._stream, indexed, 1))
                await self._replay(replaying, state.messages)
                await replaying.close()
                follower = await retrying(
                    lambda: nats.follow(self._stream, [f"{self._stream}.>"], self._applied + 1)
                )
                async with contextlib.AsyncExitStack() as stack:
                    if self._events is not None:
                        await stack.enter_async_context(self._events)
                    await stack.enter_async_context(self._receive)
                    nursery = await stack.enter_async_context(trio.open_nursery())
                    nursery.start_soon(self._follow, follower)
                    self._starting = None  # replayed: it serves (the watch says when not)
                    nursery.start_soon(self._watch.run, nats)
                    task_status.started(self)
                    await self._commit_all()
                    nursery.cancel_scope.cancel()
        finally:
            self._send.close()
            self._nats = None

    @property
    def node(self) -> str:
        """This process's id on the cluster (in the headers of what it publishes)."""
        return self._node

    @property
    def nats(self) -> Nats:
        """The connection (while ``run`` runs); ``StoreUnavailable`` otherwise."""
        return self._nats_or_fail()

    @property
    def health(self) -> str | None:
        """Why this node cannot serve now (None: it can): while starting, the step it is at
        (and why the connection fails, if it does); once running, the watch's problem."""
        if self._starting is not None:
            problem = self._link.problem if self._nats is None else None
            return f"{self._starting}: {problem}" if problem else self._starting
        return self._watch.problem

    @property
    def position(self) -> int:
        """The last stream sequence this node has applied and announced: a read elsewhere
        that waits for it (``wait_followed``) sees every write this node answered."""
        return self._announced

    async def wait_followed(self, seq: int) -> bool:
        """Wait until this node has applied stream sequence *seq*; False after twice
        ``store_timeout_s``."""
        return await self._wait_applied(seq)

    async def applied_more(self) -> None:
        """Return once the follower has applied more of the stream."""
        await self._progress.wait()

    def pending_key(self, chunk_id: str) -> tuple[str, str, int] | None:
        """``(user_id, session_id, seq)`` of the chunk while it is stored and ``pending``
        transcription (None: done, failed or deleted); unpacks nothing."""
        if self._index.status(chunk_id) != "pending":
            return None
        return self._index.key(chunk_id)

    def pending_now(self) -> list[tuple[str, str, str]]:
        """``(user_id, session_id, chunk_id)`` of every chunk ``pending`` transcription now,
        in user, session and seq order."""
        return self._index.pending_chunks()

    async def _replay(self, follower: Follower, messages: int) -> None:
        """Apply the stream's records up to its end (no events: nobody watches yet)."""
        started = time.perf_counter()
        count = 0
        while messages:
            batch = await follower.take(FOLLOW_BATCH * 8, 1.0)
            count += len(batch)
            for message in batch:
                await self._apply(message)
            if not batch or batch[-1].pending == 0:
                break  # at the end (nothing for a second: none of it is to be indexed, or
                # the cluster is slow, and following goes on from where this stopped)
        self._replayed = count
        self._announced = self._applied
        # Nothing is queued for the transcriber at start-up: on a cluster pending chunks come
        # as work, partition by partition (cluster/work.py).
        self._pending = []
        self._live = True
        logger.info(
            "replayed %d records (%d chunks) from stream %s in %.2f s",
            count,
            len(self._index),
            self._stream,
            time.perf_counter() - started,
        )

    async def _follow(self, follower: Follower) -> None:
        """Apply what the stream delivers, in order, and send the events it makes."""
        while True:
            batch = await follower.take(FOLLOW_BATCH, 1.0)
            if not batch:
                continue
            events: list[Committed] = []
            for message in batch:
                events += await self._apply(message)
            # Events before answers (as the local store): by the time a writer hears
            # "stored", the fan-out has its event.
            if self._events is not None:
                for event in events:
                    await self._events.send(event)
            self._announced = self._applied
            self._progress.set()
            self._progress = trio.Event()

    # -- applying the stream ---------------------------------------------------------------

    async def _apply(self, message: Message) -> list[Committed]:
        """Apply one followed record to the index; the events it makes."""
        if message.seq <= self._applied:
            return []
        self._applied = message.seq
        self._bytes += message.size
        parts = message.subject.split(".")
        kind = parts[3] if len(parts) > 3 else ""
        if kind == "work":  # a chunk's reference for the work stream: nothing to index
            return []
        try:
            record = json.loads(message.headers[META])
        except (KeyError, ValueError):
            logger.warning("stream record %d on %s has no metadata", message.seq, message.subject)
            return []
        mine = message.headers.get(NODE) == self._node
        if kind == "chunk":
            return self._apply_chunk(record, message)
        if kind == "update":
            return await self._apply_update(record, message, mine)
        if kind == "tombstone":
            if "session" in record:
                user_id, session_id = record["session"]
                ids = [
                    chunk_id
                    for _, chunk_id in self._index.chunks_after(user_id, session_id, None)
                    if (self._index.stream_seq(chunk_id) or 0) < message.seq
                ]
            else:
                ids = record["chunk_ids"]
            removed = self._index.apply_tombstone({"chunk_ids": ids})
            for chunk_id, _ in removed:
                self._pcm.pop(chunk_id, None)
                self._cache.drop(chunk_id)
            if mine:
                self._results[message.seq] = removed
            return deleted_events(removed)
        logger.warning("unknown record kind on %s", message.subject)
        return []

    async def _apply_update(
        self, record: dict[str, Any], message: Message, mine: bool
    ) -> list[Committed]:
        """Note an update's place in the index; once live, its event with the chunk JSON
        (the cached metadata with the update applied, or read back whole)."""
        chunk_id = record.get("chunk_id", "")
        if not self._index.apply_update(record, Place("", message.seq, 0)):
            if mine:
                self._results[message.seq] = None
            return []
        cached = self._cache.get(chunk_id) if self._live else None
        if cached is not None:
            apply_patch(cached, record)
            self._cache.put(chunk_id, cached)
            meta = cached
        else:
            self._cache.drop(chunk_id)
            if not self._live:
                return []
            try:
                (meta,) = await self.metas([chunk_id])
            except ServiceError as exc:
                logger.warning("chunk %s updated, but not read back: %s", chunk_id, exc)
                return []
        chunk = self._index.chunk_json(meta)
        if mine:
            self._results[message.seq] = chunk
        return [ChunkUpdated(chunk)]

    async def _read_stream(self, locations: list[Location]) -> list[Read]:
        """The metadata at each of *locations* (None: its message is gone): the headers of
        its chunk message, with its update messages applied; gets by stream sequence, a
        few at once."""
        nats = self._nats_or_fail()
        limiter = trio.CapacityLimiter(READS_AT_ONCE)

        async def one(seq: int) -> dict[str, Any] | None:
            async with limiter:
                try:
                    message = await nats.get(self._stream, seq)
                except MessageNotFound:
                    return None
                except Unavailable:
                    msg = "the store cluster does not answer; retry later"
                    raise StoreUnavailable(msg, self._config.retry_after_s) from None
                except NatsError as exc:
                    msg = f"the store cluster failed to read record {seq}: {exc}"
                    raise InternalError(msg) from None
            value: dict[str, Any] = json.loads(message.headers[META])
            return value

        seqs = sorted({p.offset for loc in locations for p in (loc.record, *loc.updates)})
        got: dict[int, dict[str, Any] | None] = {}

        async def fetch(seq: int) -> None:
            got[seq] = await one(seq)

        async with trio.open_nursery() as nursery:
            for seq in seqs:
                nursery.start_soon(fetch, seq)
        out: list[Read] = []
        for location in locations:
            base = got[location.record.offset]
            meta = dict(base) if base is not None else None
            for update in location.updates:
                patch = got[update.offset]
                if meta is None or patch is None:
                    meta = None
                    break
                apply_patch(meta, patch)
            out.append((meta, None))
        return out

    def _apply_chunk(self, meta: dict[str, Any], message: Message) -> list[Committed]:
        group = meta.get("group")
        members = [(meta, message)]
        if group is not None:  # a multipart upload is indexed whole or not at all
            held = self._groups.setdefault(group[0], [])
            held.append((meta, message))
            if len(held) < group[2]:
                return []
            members = self._groups.pop(group[0])
        events: list[Committed] = []
        for member, msg in members:
            session = self._index.users.get(member["user_id"], {}).get(member["session_id"])
            if session is not None and session.chunks.row_of(member["seq"]) is not None:
                # Only a lost compare-and-append could do this; keep the first copy.
                logger.warning("stream record %d repeats a stored seq; ignored", msg.seq)
                continue
            self._index.insert_meta(member, Place("", msg.seq, 0), msg.size)
            if self._live:
                self._cache.put(member["chunk_id"], member)
            chunk = self._index.chunk_json(member)
            if msg.headers.get(NODE) == self._node:
                self._results[msg.seq] = chunk
                self._metrics.stored(msg.size)
            if self._live:
                pcm = self._pcm.pop(member["chunk_id"], None)
                events.append(ChunkStored(chunk, msg.headers.get(SOURCE), pcm))
        return events

    async def _catch_up(self, lost: list[WrongLastSequence]) -> bool:
        """After a lost compare-and-append: wait until this node has the winner, so the next
        plan sees it. A winner still in flight (no sequence known) gets a moment first."""
        last = max(e.last_seq for e in lost)
        if last == 0:
            await trio.sleep(0.05)
            try:
                last = (await self._nats_or_fail().stream_state(self._stream)).last_seq
            except NatsError:
                return False
        return await self._wait_applied(last)

    async def _wait_applied(self, seq: int) -> bool:
        """Wait until the follower has applied *seq* and sent its events; False after twice
        ``store_timeout_s``."""
        with trio.move_on_after(self._config.store_timeout_s * 2):
            while self._announced < seq:
                await self._progress.wait()
            return True
        return False

    # -- the committer ---------------------------------------------------------------------

    async def _commit_all(self) -> None:
        """Hand each write to the lane of its session (``COMMIT_LANES``); each lane commits
        its writes batch by batch, and the lanes' publishes are in flight together. A
        session's writes stay in order in one lane: its plans see its earlier writes."""
        lanes = [trio.open_memory_channel[tuple[float, Write]](self._config.stage_queue)
                 for _ in range(COMMIT_LANES)]  # fmt: skip
        async with trio.open_nursery() as nursery:
            for _, receive in lanes:
                nursery.start_soon(self._lane, receive)
            async with contextlib.AsyncExitStack() as stack:
                for send, _ in lanes:
                    await stack.enter_async_context(send)
                while (batch := await self._next_batch()) is not None:
                    now = trio.current_time()
                    for write in batch:
                        await lanes[self._lane_of(write)][0].send((now, write))

    def _lane_of(self, write: Write) -> int:
        """The lane of *write*'s session (a chunk's session for an update; a delete's
        first session)."""
        if isinstance(write, Job):
            key = (write.user_id, write.session_id)
        elif isinstance(write, Delete) and write.session is not None:
            key = write.session
        else:
            chunk_id = write.chunk_id if isinstance(write, Update) else write.chunk_ids[0]
            found = self._index.key(chunk_id)
            if found is None:
                return 0
            key = found[:2]
        return zlib.crc32(f"{key[0]}\x00{key[1]}".encode()) % COMMIT_LANES

    async def _lane(self, receive: trio.MemoryReceiveChannel[tuple[float, Write]]) -> None:
        """Commit what arrives on *receive*, everything queued at once, batch by batch."""
        async with receive:
            async for first in receive:
                batch = [first]
                with contextlib.suppress(trio.WouldBlock, trio.EndOfChannel):
                    while len(batch) < self._config.commit_batch_max:
                        batch.append(receive.receive_nowait())
                deadline = min(t for t, _ in batch) + self._config.store_timeout_s
                await self._commit([w for _, w in batch], deadline)

    async def _commit(self, batch: list[Write], deadline: float) -> None:
        """Commit *batch*; a publish not acknowledged by *deadline* fails with 503."""
        started = trio.current_time()
        writes = [w for w in batch if not w.reply.done]
        for _ in range(PLAN_ATTEMPTS):
            if not writes:
                break
            writes = await self._commit_once(writes, deadline)
        for write in writes:
            write.reply.fail(StoreUnavailable("other nodes keep taking these seqs; retry"))
        self._metrics.observe_stage("store", trio.current_time() - started)

    async def _commit_once(self, writes: list[Write], deadline: float) -> list[Write]:
        """Plan, publish and answer *writes*; those that lost a compare-and-append."""
        reserved: dict[tuple[str, str], dict[int, dict[str, Any]]] = {}
        pending: list[Pending] = []
        known: dict[str, dict[str, Any]] = {}
        for chunk_id in dict.fromkeys(
            c for w in writes if isinstance(w, Job) for c in self._index.collisions(w)
        ):
            with contextlib.suppress(NotFound):
                (known[chunk_id],) = await self.metas([chunk_id])
        for write in writes:
            try:
                pending.append(self._plan(write, reserved, known))
            except ServiceError as exc:
                self._metrics.failed(exc.code)
                write.reply.fail(exc)
        async with trio.open_nursery() as nursery:
            for item in pending:
                nursery.start_soon(self._publish_all, item, deadline)
        seqs = [m.seq for item in pending for m in item.messages if m.seq is not None]
        if not await self._wait_applied(max(seqs, default=0)):
            # Stored (the quorum acknowledged it) but not yet followed here: answered from
            # the plan, since a 503 would make a client's retry store it again.
            logger.warning("the follower lags; answering %d writes from their plan", len(seqs))
        again: list[Write] = []
        for item in pending:
            errors = [m.error for m in item.messages if m.error is not None]
            lost = [e for e in errors if isinstance(e, WrongLastSequence)]
            if lost and len(lost) == len(errors) and await self._catch_up(lost):
                again.append(item.write)
                continue
            if errors:
                self._fail(item.write, errors[0])
            else:
                await self._answer(item)
        async with trio.open_nursery() as nursery:
            for item in pending:
                if isinstance(item.write, Delete) and all(m.seq for m in item.messages):
                    nursery.start_soon(self._remove_deleted, item)
        return again

    def _plan(
        self,
        write: Write,
        reserved: dict[tuple[str, str], dict[int, dict[str, Any]]],
        known: dict[str, dict[str, Any]],
    ) -> Pending:
        """The messages *write* publishes (all or nothing), or the error that refuses it."""
        index, stream = self._index, self._stream
        write_id = secrets.token_hex(8)
        if isinstance(write, Job):
            plan = index.plan_chunks(write, reserved, known)
            session = f"{stream}.{token(write.user_id)}.{token(write.session_id)}"
            messages = []
            room = (self._nats.max_payload if self._nats else 1 << 20) - HEADER_ROOM
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
                    META: json.dumps(planned.meta, separators=(",", ":")),
                    NODE: self._node,
                }
                if write.source is not None:
                    headers[SOURCE] = write.source
                seq = planned.meta["seq"]
                messages.append(Publish(f"{session}.chunk.{seq}", body, headers))
                reference = {"chunk_id": planned.meta["chunk_id"], "seq": seq}
                work = {META: json.dumps(reference, separators=(",", ":")), NODE: self._node}
                messages.append(Publish(f"{session}.work.{seq}", b"", work))
            return Pending(write, plan, messages)
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
                removed.append((index.stream_seq(chunk_id) or 0, subjects))
        return Pending(write, {"chunk_ids": chunk_ids, "removed": removed}, messages)

    def _headers(self, record: dict[str, Any], msg_id: str) -> dict[str, str]:
        return {
            "Nats-Msg-Id": msg_id,
            META: json.dumps(record, separators=(",", ":")),
            NODE: self._node,
        }

    async def _publish_all(self, item: Pending, deadline: float) -> None:
        """Publish a write's messages in order; stop at the first that fails. The chunks of
        an upload (and their work references) go as one atomic batch: all stored or none,
        even when this node dies halfway through sending them."""
        if isinstance(item.write, Job):
            assert isinstance(item.plan, list)
            for planned in item.plan:
                if planned.meta is not None and planned.part.speech_pcm is not None:
                    self._pcm[planned.meta["chunk_id"]] = planned.part.speech_pcm
        if isinstance(item.write, Job) and item.messages:
            await self._publish_batch(item.messages, deadline)
        else:
            for message in item.messages:
                await self._publish(message, deadline)
                if message.error is not None:
                    break
        failed = any(m.error is not None or m.seq is None for m in item.messages)
        if failed and isinstance(item.write, Job):
            for planned in item.plan if isinstance(item.plan, list) else []:
                if planned.meta is not None:
                    self._pcm.pop(planned.meta["chunk_id"], None)

    async def _publish_batch(self, messages: list[Publish], deadline: float) -> None:
        """*messages* as one atomic batch (see ``_acked``)."""
        batch = [(m.subject, m.body, dict(m.headers)) for m in messages]
        seqs, error = await self._acked(
            lambda nats, wait_s: nats.publish_batch(batch, wait_s), deadline
        )
        for n, message in enumerate(messages):
            message.seq, message.error = (seqs[n] if seqs else None), error

    async def _publish(self, message: Publish, deadline: float) -> None:
        """One publish (see ``_acked``; a re-send has the same ``Nats-Msg-Id``, so the stream
        drops it if the first copy landed)."""

        async def one(nats: Nats, wait_s: float) -> list[int]:
            seq, _ = await nats.publish(
                message.subject, message.body, dict(message.headers), wait_s
            )
            return [seq]

        seqs, message.error = await self._acked(one, deadline)
        message.seq = seqs[0] if seqs else None

    async def _acked(
        self, publish: Callable[[Nats, float], Awaitable[list[int]]], deadline: float
    ) -> tuple[list[int] | None, NatsError | None]:
        """*publish*, sent again once when its PubAck does not come, both by *deadline*
        (``store_timeout_s`` after the committer took the write); its sequences, or the
        error. (A batch that did land the first time then loses its compare-and-appends,
        which ``_commit`` handles as for any write another node took first.)"""
        nats = self._nats_or_fail()
        error: NatsError | None = Unavailable("no answer within store_timeout_s")
        for attempt in range(2):
            left = deadline - trio.current_time()
            wait_s = min(self._config.store_timeout_s / 2, left) if attempt == 0 else left
            if wait_s < MIN_WAIT_S:
                break
            try:
                started = trio.current_time()
                seqs = await publish(nats, wait_s)
                self._metrics.observe_stage("publish", trio.current_time() - started)
                return seqs, None
            except Unavailable as exc:
                error = exc
                if not nats.connected:
                    break
                if attempt == 0:
                    logger.info("no PubAck in %.1f s, sending again", wait_s)
            except NatsError as exc:
                return None, exc
        return None, error

    def _nats_or_fail(self) -> Nats:
        if self._nats is None:
            msg = "the store is closed"
            raise StoreUnavailable(msg)
        return self._nats

    def _fail(self, write: Write, error: NatsError) -> None:
        if isinstance(error, StorageFull):
            logger.warning("a write was refused, the stream is full: %s", error)
            self._watch.refused_full(str(error))
            service: ServiceError = InsufficientStorage(
                f"the store cluster cannot take more: {error}"
            )
        elif isinstance(error, Unavailable):
            logger.warning("a write failed, the cluster does not answer: %s", error)
            service = StoreUnavailable(
                "the store cluster does not answer; retry later", self._config.retry_after_s
            )
        elif isinstance(error, WrongLastSequence):
            service = StoreUnavailable("another node took this seq meanwhile; retry")
        else:
            logger.error("a write was refused by JetStream: %s", error)
            service = InternalError(f"the store cluster refused the write: {error}")
        self._metrics.failed(service.code)
        write.reply.fail(service)

    async def _answer(self, item: Pending) -> None:
        """Answer a write whose messages all have their PubAck: from what the follower made
        of them, or (when it lags) from the plan."""
        write = item.write
        index = self._index
        if item.messages:
            self._watch.stored()
        followed = all(m.seq is not None and m.seq <= self._applied for m in item.messages)
        results = [self._results.pop(m.seq, None) for m in item.messages if m.seq is not None]
        if isinstance(write, Job):
            assert isinstance(item.plan, list)
            stored = []
            for planned in item.plan:
                if planned.meta is None:
                    assert planned.existing is not None
                    stored.append(Stored(index.chunk_json(planned.existing), created=False))
                else:
                    stored.append(Stored(index.chunk_json(planned.meta), created=True))
            write.reply.set(stored)
        elif isinstance(write, Update):
            chunk = results[0] if results else None
            if (not item.messages or not followed) and index.has(write.chunk_id):
                try:
                    now = await self.get(write.chunk_id)
                except NotFound:
                    now = None
                if now is not None and not item.messages:
                    write.reply.set(now)  # transcribed already
                    return
                if now is not None:
                    chunk = {**now, **write.fields}
            if chunk is None:
                write.reply.fail(NotFound(f"chunk {write.chunk_id!r} was deleted"))
            else:
                write.reply.set(chunk)
        elif followed:
            write.reply.set([chunk_id for r in results if r for chunk_id, _ in r])
        else:
            assert isinstance(item.plan, dict)
            write.reply.set(list(item.plan["chunk_ids"]))

    async def _remove_deleted(self, item: Pending) -> None:
        """Delete the tombstoned chunks' messages from the stream (their audio goes from
        every replica); a failure leaves them hidden by the tombstone, and is logged."""
        nats = self._nats_or_fail()
        write = item.write
        assert isinstance(write, Delete) and isinstance(item.plan, dict)
        try:
            if write.session is not None:
                user_id, session_id = write.session
                prefix = f"{self._stream}.{token(user_id)}.{token(session_id)}"
                before = item.messages[0].seq
                for kind in ("chunk", "update", "work"):
                    await nats.purge(self._stream, f"{prefix}.{kind}.>", before)
                return
            for entry_seq, subjects in item.plan.get("removed", []):
                with contextlib.suppress(MessageNotFound):
                    await nats.delete(self._stream, entry_seq)
                for subject in subjects:
                    await nats.purge(self._stream, subject)
        except NatsError as exc:
            logger.warning("deleted chunks stay in the stream until the next delete: %s", exc)

    # -- the writers' side -----------------------------------------------------------------

    async def purge_user(self, user_id: str) -> list[str]:
        """Delete every chunk of a user on every node (a tombstone per session, then the
        messages purged from the stream); the ids deleted."""
        deleted: list[str] = []
        for session_id in self.session_ids(user_id):
            with contextlib.suppress(NotFound):
                deleted += await self.delete_session(user_id, session_id)
        return deleted

    # -- reads -----------------------------------------------------------------------------

    def stats(self) -> StoreStats:
        return StoreStats(
            chunks=len(self._index),
            audio_bytes=self._index.audio_bytes,
            log_bytes=self._bytes,
            dead_bytes=0,
            compactions=0,
            replayed_records=self._replayed,
            snapshot=None,
            backend="jetstream",
        )

    async def read_audio(self, chunk_id: str) -> tuple[bytes, str]:
        """The exact bytes uploaded for *chunk_id*, fetched from the stream by sequence.

        A replica that has not caught up answers a direct get with "no message": that is
        asked again of the stream's leader. Only a chunk the leader no longer has, once this
        node has applied the stream that far and no longer indexes the chunk, is gone (a
        tombstone); one still indexed aged out (``--store-max-age``) or was removed by
        hand. While the cluster does not answer, the read is tried again for up to twice
        ``store_timeout_s``, then 503."""
        seq = self._index.stream_seq(chunk_id)
        if seq is None:
            msg = f"no chunk {chunk_id!r}"
            raise NotFound(msg)
        deadline = trio.current_time() + self._config.store_timeout_s * 2
        while True:
            nats = self._nats_or_fail()
            try:
                try:
                    message = await nats.get(self._stream, seq)
                except MessageNotFound:
                    message = await nats.get(self._stream, seq, direct=False)
                try:
                    meta = json.loads(message.headers[META])
                except (KeyError, ValueError):
                    meta = {}
                return message.data, str(meta.get("content_type", "application/octet-stream"))
            except MessageNotFound:
                break
            except Unavailable:
                if trio.current_time() > deadline:
                    msg = "the store cluster does not answer; retry later"
                    raise StoreUnavailable(msg, self._config.retry_after_s) from None
                await trio.sleep(READ_PAUSE_S)
            except NatsError as exc:
                msg = f"the store cluster failed to read chunk {chunk_id!r}: {exc}"
                raise InternalError(msg) from None
        with contextlib.suppress(NatsError):  # a tombstone before it: this node applies it
            await self._wait_applied((await nats.stream_state(self._stream)).last_seq)
        if not self._index.has(chunk_id):
            msg = f"chunk {chunk_id!r} was deleted"
        else:
            msg = f"chunk {chunk_id!r} is no longer in the stream (aged out or removed)"
        raise NotFound(msg)
