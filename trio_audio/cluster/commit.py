"""The JetStream store's committer: writes planned, published and answered, batch by batch.

::

    pipeline (Jobs) ──┐                                   JetStream stream (R=3, fsynced)
    transcriber ──────┼──> writes ──> Committer ──publish──>  AUDIO.<user>.<session>.…
    web (deletes) ────┘                  ▲                          │
                                         │ answered once            │
                                         │ its node has it          ▼
                                         └──────────────────── follower (follow.py)

The committer takes everything waiting as one batch (as the local log's group commit), then
plans, publishes and answers it: its publishes are sent in its order, all before any PubAck
is waited for, so the whole batch is in flight at once, and a session's records reach the
stream (and every node's watchers) in order (but for a publish whose PubAck never came, sent
again: it can land after later ones). Each plan sees the batch's earlier writes, so a lost
compare-and-append is rare. (Batches committed side by side in lanes by session cost more
CPU per upload and gave fewer uploads/s, docs/cluster.md.)

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
- An upload's chunks are published as one atomic batch (``Nats.send(..., atomic=True)``), each
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

Error handling: when no server answers a write within ``store_timeout_s`` of its coming to
the committer (or the client is disconnected) the write fails with 503 ``unavailable`` and
Retry-After: never a hang, never an answer for a write that is not stored.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final

import trio

from ..errors import InsufficientStorage, InternalError, NotFound, ServiceError, StoreUnavailable
from ..models import Job
from ..store.events import Delete, Update, Write
from ..store.index import Stored
from ..store.plan import NotRead
from ..store.reads import IndexReads
from .bridge import MessageNotFound, NatsError, StorageFull, Unavailable, WrongLastSequence
from .follow import LogFollower
from .observe import Watch
from .publish import Pending, Planner, Publisher
from .stream import Shared, token

logger = logging.getLogger("trio_audio.cluster.jetstream")

PLAN_ATTEMPTS: Final = 4  # plans of one write that lose a compare-and-append, then 503
NOT_READ_WAIT_S: Final = 0.25  # for the follower to apply a chunk that came to a planned seq
REMOVALS_AT_ONCE: Final = 4  # deletes whose messages are being removed from the stream at once


class Committer:
    """Commits the writes of the store's channel (see the module docstring)."""

    def __init__(
        self, shared: Shared, reads: IndexReads, follower: LogFollower, watch: Watch
    ) -> None:
        self._config, self._metrics = shared.config, shared.metrics
        self._stream, self._index = shared.stream, shared.index
        self._reads = reads  # the store's reads: colliding chunks, an update's chunk now
        self._follower = follower
        self._watch = watch
        self._planner = Planner(shared.stream, shared.index)
        self._publisher = Publisher(shared.config, shared.metrics, shared.stream, follower.pcm)
        self._removals: trio.Nursery  # (set by ``commit_all``)
        self._removing = trio.CapacityLimiter(REMOVALS_AT_ONCE)

    async def commit_all(
        self,
        next_batch: Callable[[], Awaitable[list[Write] | None]],
        backlog: Callable[[], int],
    ) -> None:
        """Commit the writes batch by batch, each batch everything waiting (as the local
        log's group commit): its publishes all in flight together, in its order. Removals
        of deleted chunks' messages go on beside the next batches.

        A write's ``store_timeout_s`` runs from when it came: writes already waiting
        (*backlog*) when a batch ends came while it ran, so the next batch's time runs from
        when that one began (from its own start, with frozen servers, a write could wait
        twice as long). That holds while a batch takes every write waiting, blocked senders
        included: ``commit_batch_max`` at least ``stage_queue``, as the defaults are."""
        timeout = self._config.store_timeout_s
        began = trio.current_time()
        async with trio.open_nursery() as nursery:
            self._removals = nursery
            while True:
                waited = backlog() > 0
                if (batch := await next_batch()) is None:
                    break
                now = trio.current_time()
                since, began = (began if waited else now), now
                await self._commit(batch, since + timeout)

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
                (known[chunk_id],) = await self._reads.metas([chunk_id])
        unread: list[Write] = []  # a chunk came to one of its seqs while the others were read
        for write in writes:
            try:
                pending.append(self._planner.plan(write, reserved, known))
            except ServiceError as exc:
                self._metrics.failed(exc.code)
                write.reply.fail(exc)
            except NotRead:
                unread.append(write)
        await self._publisher.publish_all(pending, deadline)
        seqs = [m.seq for item in pending for m in item.messages if m.seq is not None]
        if not await self._follower.wait_applied(max(seqs, default=0)):
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
        deleted = [
            p for p in pending if isinstance(p.write, Delete) and all(m.seq for m in p.messages)
        ]
        for item in deleted:  # answered: the stream's copies go while the next batches do
            self._removals.start_soon(self._remove_deleted, item)
        if unread:  # planned again once the follower has moved on (the others did not wait)
            with trio.move_on_after(NOT_READ_WAIT_S):
                await self._follower.progress.wait()
        return again + unread

    async def _catch_up(self, lost: list[WrongLastSequence]) -> bool:
        """After a lost compare-and-append: wait until this node has the winner, so the next
        plan sees it. A winner still in flight (no sequence known) gets a moment first."""
        last = max(e.last_seq for e in lost)
        if last == 0:
            await trio.sleep(0.05)
            try:
                last = (await self._stream.connection().stream_state(self._stream.name)).last_seq
            except NatsError:
                return False
        return await self._follower.wait_applied(last)

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
        followed = all(m.seq is not None and m.seq <= self._follower.applied for m in item.messages)
        results = [
            self._follower.results.pop(m.seq, None) for m in item.messages if m.seq is not None
        ]
        if isinstance(write, Job):
            assert isinstance(item.plan, list)
            # The chunks as the follower made them (rendered once), or from the plan.
            made = {r["chunk_id"]: r for r in results if isinstance(r, dict)}
            stored = []
            for planned in item.plan:
                if planned.meta is None:
                    assert planned.existing is not None
                    stored.append(Stored(index.chunk_json(planned.existing), created=False))
                else:
                    rendered = made.get(planned.meta["chunk_id"]) or index.chunk_json(planned.meta)
                    stored.append(Stored(rendered, created=True))
            write.reply.set(stored)
        elif isinstance(write, Update):
            chunk = results[0] if results else None
            if (not item.messages or not followed) and index.has(write.chunk_id):
                try:
                    now = await self._reads.get(write.chunk_id)
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
        every replica); a failure leaves them hidden by the tombstone, and is logged. Only
        what lies below the tombstone goes: this runs beside later writes, and a chunk
        stored again at the same seq after the delete stays."""
        write = item.write
        assert isinstance(write, Delete) and isinstance(item.plan, dict)
        try:
            async with self._removing:
                nats = self._stream.connection()
                if write.session is not None:
                    user_id, session_id = write.session
                    prefix = f"{self._stream.name}.{token(user_id)}.{token(session_id)}"
                    before = item.messages[0].seq
                    for kind in ("chunk", "update", "work"):
                        await nats.purge(self._stream.name, f"{prefix}.{kind}.>", before)
                    return
                for entry_seq, subjects, tombstone in item.plan.get("removed", []):
                    with contextlib.suppress(MessageNotFound):
                        await nats.delete(self._stream.name, entry_seq)
                    for subject in subjects:
                        before = item.messages[tombstone].seq
                        await nats.purge(self._stream.name, subject, before)
        except (NatsError, StoreUnavailable) as exc:
            logger.warning("deleted chunks stay in the stream until the next delete: %s", exc)
