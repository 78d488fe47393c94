"""Transcription on a JetStream cluster: every session decoded by one live worker at a time.

::

    AUDIO (the log)                      AUDIO_asr (a work queue the servers fill themselves:
    AUDIO.<user>.<session>.chunk.<seq> ──> a stream source with a subject transform)
                                         AUDIO_asr.<p>.<user>.<session>.<seq>
                                         p = partition(P, user, session), FNV-1a by the server
                                              │ one durable pull consumer per partition
                                              ▼ ("p<p>", explicit ack, ``ACK_WAIT_S``)
    AUDIO_asr_leases (KV, TTL asr_lease_s)   worker holding the lease "p.<p>"
    "p.<p>" = the holder's node id   ──────> fetch ─> its follower has the chunk ─> transcriber
    "w.<node>" = a live worker                (offer_stored)  ─> transcript update in the log
                                              ─> ack once the log no longer has it ``pending``
    AUDIO_asr_live.<user>.<session>   core NATS: partials, finals and VAD events, every node
    AUDIO_asr_finalize.<p>            core NATS request: "finalize this session" to its holder

Why this design. The servers copy each chunk record into the work stream themselves (a
stream *source* with a subject transform), so a chunk that is in the log is in the work queue
too: no second publish a crashing node could skip. ``partition()`` in the transform spreads
sessions over ``asr_partitions`` subjects; a session's chunks all land in one, in log order.
nats-py (2.16) has no pinned-client priority groups, so a partition's single consumer is
guarded by a lease instead: a KeyValue entry created only while absent (a compare-and-append),
renewed by its holder every third of ``asr_lease_s``, and gone ``asr_lease_s`` after its last
renewal (the bucket's TTL). Only the holder fetches from the partition's consumer.

Guarantees:

- One worker at a time decodes a session (the lease holder of its partition), in seq order
  (the transcriber's per-session reorder), and it acknowledges a chunk's work message only
  once the chunk's transcript is in the log as its own follower applied it.
- When a worker dies (kill -9, its machine, its network), its leases expire within
  ``asr_lease_s``; another worker takes each partition within a further ``asr_lease_s / 4``
  (its poll), offers at once every chunk its index still has ``pending`` in that partition,
  and gets the dead worker's unacknowledged work messages again after ``ACK_WAIT_S``. So a
  session is taken over within about ``asr_lease_s * 1.25`` plus the server's expiry check
  (6-7 s by default) plus its decode.
  A worker that stops gracefully deletes its leases: the takeover is then immediate.
- No chunk stays ``pending`` for ever while any worker runs: its work message is acknowledged
  only once it is done (or failed, or deleted), and one still pending after the transcriber
  forgot its session (its update was refused, say), or held ``HOLD_S``, is offered again.
- No chunk is transcribed twice into the log: a worker that lost its lease (paused, cut off)
  may still finish a decode, but a transcript is published with a compare-and-append on the
  chunk's ``update.<chunk_id>`` subject, so the first one is the one the log keeps.
- Balance: workers register (``w.<node>``, same TTL) and take at most their fair share
  (ceil(P / workers)) of free partitions; one holding more than that releases an idle one.

Interim results (partials, VAD events, finals as they are decoded) are not durable: the
transcriber publishes them to its own watchers and on a core NATS subject, and every serve
node relays what other nodes publish there to its watchers. ``finalize`` (WebSocket
``finalize``/``end``, HTTP session end) on a node that does not hold the session is a core
NATS request to its holder, then a wait until this node's follower has the transcripts.

Resource handling: ``Cluster.run`` owns every task here (relay, publisher, partitions,
finalize server) in one nursery; a partition's consumer subscription is closed when its lease
ends. On exit every lease naming this worker is deleted (shielded, bounded). Chunks offered
and not acknowledged are remembered per partition (``held``) until done, also across holds.

What it needs of the transcriber: ``offer_stored`` (a stored chunk, its audio read back),
``finalize``, ``enabled``, ``lag_s`` and ``sessions`` (keyed by user and session, a session
forgotten only once nothing of it is in flight); and of the store: a JetStream store queues
nothing for the transcriber at start-up, since pending chunks come as work.

Error handling: the cluster being unreachable only pauses this: fetches and renewals fail
and are retried, a lease not renewed within ``asr_lease_s * 2/3`` is given up before anyone
else can take it, and a partition whose consumer cannot be reached is given back and taken
again later. Transcripts refused meanwhile leave their chunks ``pending`` and held; once the
transcriber has let go of their session they are queued again, a session's together in seq
order. A work message that is not a chunk record is acknowledged and dropped; messages on the
core subjects that do not parse are ignored.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import math
import signal
from functools import partial
from typing import Any, Final

import attrs
import trio

from ..asr.transcriber import Transcriber
from ..config import Config
from ..errors import NotFound, StoreError
from ..hub import Hub, Message
from ..metrics import Metrics
from ..store import StoreBackend
from ..store.events import ChunkStored
from .bridge import (
    Nats,
    NatsError,
    Puller,
    Unavailable,
    Work,
    WrongLastSequence,
    retrying,
)
from .jetstream import META, JetStreamStore, token

logger = logging.getLogger("trio_audio.cluster.work")

ACK_WAIT_S: Final = 30.0  # a delivered work message unacknowledged this long goes again
MAX_ACK_PENDING: Final = 10_000  # work messages of a partition held at once
FETCH_BATCH: Final = 64
FETCH_WAIT_S: Final = 0.5  # one fetch's wait; also the period acks are settled at
HOLD_S: Final = 300.0  # a chunk held this long without a transcript is offered again
LIVE_QUEUE: Final = 1024  # interim results waiting to be published; then the newest drop
FINALIZE_WAIT_S: Final = 60.0  # how long a finalize waits for the session's holder
SET_UP_S: Final = 30.0  # how long creating the work stream and lease bucket is retried


def partition(user_id: str, session_id: str, partitions: int) -> int:
    """The work partition of a session: what the server's ``{{partition(P,1,2)}}`` computes
    (FNV-1a 32 of the user and session subject tokens, concatenated, mod P)."""
    h = 0x811C9DC5
    for byte in (token(user_id) + token(session_id)).encode():
        h = ((h ^ byte) * 0x01000193) & 0xFFFFFFFF
    return h % partitions


@attrs.frozen
class Names:
    """The streams, bucket and subjects of one log's transcription work."""

    stream: str

    @property
    def work(self) -> str:
        return f"{self.stream}_asr"

    @property
    def leases(self) -> str:
        return f"{self.stream}_asr_leases"

    @property
    def live(self) -> str:
        return f"{self.stream}_asr_live"

    @property
    def finalize(self) -> str:
        return f"{self.stream}_asr_finalize"

    def transform(self, partitions: int) -> tuple[str, str]:
        """The work stream's subject transform: chunk records to partitioned work."""
        return (
            f"{self.stream}.*.*.chunk.*",
            f"{self.work}.{{{{partition({partitions},1,2)}}}}.{{{{wildcard(1)}}}}"
            ".{{wildcard(2)}}.{{wildcard(3)}}",
        )


class LiveHub(Hub):
    """The hub the transcriber publishes into: this node's watchers, and (through ``run``)
    the core NATS subject every node relays to its own."""

    def __init__(self, local: Hub, node: str, names: Names) -> None:
        super().__init__(local.queue_size)
        self._local = local
        self._node = node
        self._names = names
        self._send, self._receive = trio.open_memory_channel[tuple[str, bytes]](LIVE_QUEUE)
        self.dropped = 0

    def publish(
        self, user_id: str, session_id: str, message: Message, *, source: str | None = None
    ) -> None:
        self._local.publish(user_id, session_id, message, source=source)
        body = {"node": self._node, "user_id": user_id, "session_id": session_id,
                "message": message}  # fmt: skip
        subject = f"{self._names.live}.{token(user_id)}.{token(session_id)}"
        try:
            self._send.send_nowait((subject, json.dumps(body, separators=(",", ":")).encode()))
        except trio.WouldBlock:
            self.dropped += 1  # interim results are best effort; the log has the finals

    async def run(self, nats: Nats) -> None:
        """Publish what the transcriber sent, in order."""
        async with self._receive:
            async for subject, data in self._receive:
                try:
                    await nats.publish_core(subject, data)
                except NatsError as exc:
                    self.dropped += 1
                    logger.debug("an interim result was not published: %s", exc)


class NoTaker:
    """The fan-out's transcriber on a cluster: new chunks come as work, not as events."""

    def offer(self, event: ChunkStored) -> None:
        pass


@attrs.define(eq=False)
class Held:
    """A chunk this worker offered to its transcriber and has not acknowledged yet."""

    chunk_id: str
    offered: float
    work: Work | None = None
    extended: float = 0.0


@attrs.define(eq=False)
class Lease:
    partition: int
    revision: int
    renewed: float  # trio time of the last renewal that landed
    lost: bool = False  # someone else has it now, or it may have expired


class Cluster:
    """The cluster side of transcription in one process (a serve node or an asr-worker)."""

    def __init__(self, config: Config, store: JetStreamStore, hub: Hub, metrics: Metrics) -> None:
        self.config = config
        self.store = store
        self.local_hub = hub
        self.metrics = metrics
        self.names = Names(config.store_stream)
        self.node = store.node
        self.hub = LiveHub(hub, self.node, self.names)
        self.taker = NoTaker()
        self.transcriber: Transcriber | None = None
        self.leases: dict[int, Lease] = {}
        # Chunks offered to this process's transcriber and not acknowledged, by partition;
        # kept across holds, so a partition held again is not offered them twice.
        self.held: dict[int, dict[str, Held]] = {}
        self.counts: collections.Counter[str] = collections.Counter()
        self.workers = 1  # live workers seen in the bucket (this one included)
        self._scope = trio.CancelScope()

    # -- lifecycle -------------------------------------------------------------------------

    async def run(
        self,
        transcriber: Transcriber | None,
        *,
        relay: bool = True,
        task_status: trio.TaskStatus[Cluster] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Relay other nodes' interim results to this node's watchers (*relay*), publish
        this node's, and, when *transcriber* has an engine, take work; until cancelled."""
        self.transcriber = transcriber
        nats = self.store.nats
        taking = transcriber is not None and transcriber.enabled
        self.metrics.gauge(
            "trio_audio_cluster_partitions", lambda: {'state="held"': float(len(self.leases))}
        )
        try:
            await self._run(nats, taking, relay, task_status)
        finally:
            if taking:
                with trio.CancelScope(shield=True), trio.move_on_after(3):
                    await self._give_back(nats)

    async def _run(
        self, nats: Nats, taking: bool, relay: bool, task_status: trio.TaskStatus[Cluster]
    ) -> None:
        with self._scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self.hub.run, nats)
                if relay:
                    inbox = await retrying(lambda: nats.subscribe_core(f"{self.names.live}.>"))
                    nursery.start_soon(self._relay, inbox)
                if taking:
                    await self._set_up(nats)
                    finalize = await retrying(
                        lambda: nats.subscribe_core(f"{self.names.finalize}.*")
                    )
                    nursery.start_soon(self._serve_finalize, nats, finalize, nursery)
                    nursery.start_soon(self._register, nats)
                    for p in range(self.config.asr_partitions):
                        nursery.start_soon(self._partition, nats, p)
                task_status.started(self)

    async def _give_back(self, nats: Nats) -> None:
        """Delete every lease still naming this worker (a renewal or an acquisition cut
        short by the stop may have left one), so others take the partitions at once."""
        for p in range(self.config.asr_partitions):
            await self._release(nats, p)

    async def _release(self, nats: Nats, p: int) -> None:
        """Delete the lease of *p* if it names this worker (at whatever revision it is)."""
        try:
            held = await nats.kv_get(self.names.leases, f"p.{p}")
            if held is not None and held[0].decode() == self.node:
                await nats.kv_delete(self.names.leases, f"p.{p}", held[1])
                logger.info("gave back transcription partition %d", p)
        except NatsError as exc:
            logger.info("partition %d expires by itself: %s", p, exc)

    def stop(self) -> None:
        """Stop taking work (the leases held are given back) and relaying."""
        self._scope.cancel()

    async def _set_up(self, nats: Nats) -> None:
        """The work stream, the lease bucket and one durable consumer per partition."""
        names, config = self.names, self.config
        src, dest = names.transform(config.asr_partitions)
        replicas = config.store_replicas
        deadline = trio.current_time() + SET_UP_S
        while True:  # nodes starting together race to create them; a new stream takes a
            try:  # moment to answer: retried for a while, then the reason
                await nats.ensure_work_stream(names.work, names.stream, src, dest, replicas)
                existing = await nats.work_transform(names.work)
                await nats.ensure_kv(names.leases, config.asr_lease_s, replicas)
                break
            except NatsError as exc:
                if trio.current_time() > deadline:
                    msg = f"cannot set up transcription work on the cluster: {exc}"
                    raise StoreError(msg) from None
                logger.info("transcription work not set up yet (%s); retrying", exc)
                await trio.sleep(0.5)
        if existing != dest:
            msg = (f"the work stream {names.work} is partitioned as {existing!r}, this node "
                   f"asks {dest!r}: every node needs the same --asr-partitions")  # fmt: skip
            raise StoreError(msg)

    # -- interim results and finalize ---------------------------------------------------

    async def _relay(self, inbox: Any) -> None:
        """Other nodes' interim results to this node's watchers."""
        while True:
            for message in await inbox.take(1.0):
                try:
                    body = json.loads(message.data)
                    node, user_id = body["node"], str(body["user_id"])
                    session_id, live = str(body["session_id"]), dict(body["message"])
                except (ValueError, KeyError, TypeError):
                    continue  # not ours: core subjects are open to any client
                if node != self.node:  # this node's watchers had it already
                    self.local_hub.publish(user_id, session_id, live)

    async def _serve_finalize(self, nats: Nats, inbox: Any, nursery: trio.Nursery) -> None:
        """Answer "finalize this session" for the partitions this worker holds."""
        while True:
            for message in await inbox.take(1.0):
                try:
                    p = int(message.subject.rsplit(".", 1)[-1])
                    body = json.loads(message.data)
                    key = (str(body["user_id"]), str(body["session_id"]))
                except (ValueError, KeyError, TypeError):
                    continue
                if p in self.leases and message.reply:
                    nursery.start_soon(self._finalize_for, nats, key, message.reply)

    async def _finalize_for(self, nats: Nats, key: tuple[str, str], reply: str) -> None:
        assert self.transcriber is not None
        await self.transcriber.finalize(*key)
        with contextlib.suppress(NatsError):
            await nats.publish_core(reply, b"done")

    async def finalize(self, user_id: str, session_id: str) -> None:
        """End the session's open utterance now, on whichever worker holds it; returns once
        this node's follower has its transcripts (or after ``FINALIZE_WAIT_S``)."""
        p = partition(user_id, session_id, self.config.asr_partitions)
        if p in self.leases and self.transcriber is not None:
            await self.transcriber.finalize(user_id, session_id)
            return
        body = json.dumps({"user_id": user_id, "session_id": session_id}).encode()
        with trio.move_on_after(FINALIZE_WAIT_S):
            try:
                await self.store.nats.request(f"{self.names.finalize}.{p}", body, FINALIZE_WAIT_S)
            except NatsError:
                return  # no worker holds it now: its chunks are done when one does
            while self._session_pending(user_id, session_id):
                await self.store.applied_more()

    def _session_pending(self, user_id: str, session_id: str) -> bool:
        """Whether a chunk of the session still waits for its transcript (the index keeps
        the session's status, so this unpacks nothing)."""
        summary = self.store.summary(user_id, session_id)
        return summary is not None and summary.transcript["status"] == "pending"

    def lag_s(self) -> float:
        return self.transcriber.lag_s() if self.transcriber is not None else 0.0

    def set_vocabulary(self, user_id: str, session_id: str, terms: tuple[str, ...]) -> None:
        """The session's expected words, for this node's transcriber (a session another
        node's worker decodes does not get them)."""
        if self.transcriber is not None:
            self.transcriber.set_vocabulary(user_id, session_id, terms)

    # -- leases -----------------------------------------------------------------------------

    async def _register(self, nats: Nats) -> None:
        """Keep this worker's ``w.<node>`` entry alive; count the live workers."""
        key = f"w.{self.node}"
        period = self.config.asr_lease_s / 3
        revision: int | None = None
        while True:
            try:
                try:
                    revision = await nats.kv_put(self.names.leases, key, b"", revision)
                except WrongLastSequence:
                    revision = await nats.kv_put(self.names.leases, key, b"", None)
                self.workers = max(1, len(await nats.kv_keys(self.names.leases, "w")))
            except NatsError as exc:
                revision = None
                logger.debug("worker registration: %s", exc)
            await trio.sleep(period)

    def _fair_share(self) -> int:
        return math.ceil(self.config.asr_partitions / max(1, self.workers))

    async def _partition(self, nats: Nats, p: int) -> None:
        """Hold partition *p* whenever this worker may, and take its work while held."""
        poll = self.config.asr_lease_s / 4
        # Stagger: partition p is tried after the workers registered and in turn, so that
        # workers starting together split the partitions instead of one taking them all.
        await trio.sleep(poll + poll * p / self.config.asr_partitions)
        while True:
            lease = await self._acquire(nats, p)
            if lease is None:
                await trio.sleep(poll)
                continue
            self.leases[p] = lease
            logger.info("node %s took transcription partition %d", self.node, p)
            try:
                with trio.CancelScope() as scope:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(self._renew, nats, lease, scope)
                        nursery.start_soon(self._take, nats, lease, scope)
            finally:
                self.leases.pop(p, None)
                if not lease.lost:  # given back (fair share, or this process stops)
                    with trio.CancelScope(shield=True), trio.move_on_after(2):
                        await self._release(nats, p)
            if lease.lost:
                logger.warning("lost transcription partition %d", p)
            await trio.sleep(poll)

    async def _acquire(self, nats: Nats, p: int) -> Lease | None:
        """The lease of *p* when it is free (or already this worker's) and within the fair
        share; None otherwise."""
        if len(self.leases) >= self._fair_share():
            return None
        key = f"p.{p}"
        try:
            held = await nats.kv_get(self.names.leases, key)
            if held is not None and held[0].decode() != self.node:
                return None
            last = held[1] if held is not None else None
            sent = trio.current_time()  # the lease counts from here (see _renew)
            revision = await nats.kv_put(self.names.leases, key, self.node.encode(), last)
        except (WrongLastSequence, Unavailable):
            return None
        except NatsError as exc:
            logger.debug("lease of partition %d: %s", p, exc)
            return None
        return Lease(p, revision, sent)

    async def _renew(self, nats: Nats, lease: Lease, scope: trio.CancelScope) -> None:
        """Renew the lease every third of its TTL; end the hold (cancel *scope*) once it is
        lost, or not renewed within two thirds of its TTL.

        A renewal counts from when it was *sent*: the server stamps it later, so the entry
        lives at least TTL past that time, and a holder that gives up at two thirds of it
        stops before anyone else can take the partition (clocks running at the same rate)."""
        ttl = self.config.asr_lease_s
        key = f"p.{lease.partition}"
        await trio.sleep_until(lease.renewed + ttl / 3)
        while True:
            sent = trio.current_time()
            renewed = False
            with trio.move_on_at(lease.renewed + ttl * 2 / 3):
                try:
                    lease.revision = await nats.kv_put(
                        self.names.leases, key, self.node.encode(), lease.revision
                    )
                    lease.renewed, renewed = sent, True
                except WrongLastSequence:
                    pass  # someone else holds it now
                except NatsError as exc:
                    logger.info("lease of partition %d not renewed: %s", lease.partition, exc)
                    await trio.sleep(ttl / 12)
                    continue  # again, until two thirds of the TTL are gone
            if renewed:
                await trio.sleep_until(sent + ttl / 3)
                continue
            lease.lost = True
            scope.cancel()
            return

    # -- taking work --------------------------------------------------------------------

    async def _take(self, nats: Nats, lease: Lease, scope: trio.CancelScope) -> None:
        """Fetch the partition's work and acknowledge it once done, while the lease holds."""
        p = lease.partition
        try:
            puller: Puller = await nats.pull(self.names.work, f"p{p}",
                                             f"{self.names.work}.{p}.>", ACK_WAIT_S,
                                             MAX_ACK_PENDING)  # fmt: skip
        except NatsError as exc:  # the cluster is away, say: give it back, try again later
            logger.warning("partition %d: no consumer (%s); giving it back", p, exc)
            scope.cancel()
            return
        held = self.held.setdefault(p, {})
        idle_since = trio.current_time()
        try:
            self._sweep(p, held)
            while True:
                try:
                    batch = await puller.take(FETCH_BATCH, FETCH_WAIT_S)
                except Unavailable:
                    batch = []
                    await trio.sleep(FETCH_WAIT_S)
                except NatsError as exc:  # the consumer is gone, say: start the hold again
                    logger.warning("partition %d: %s; giving it back", p, exc)
                    scope.cancel()
                    return
                for work in batch:
                    if not await self._arrive(puller, work, held):
                        break  # this node lags the log: the rest (later in it) come again
                await self._settle(puller, held)
                now = trio.current_time()
                if held or batch:
                    idle_since = now
                elif len(self.leases) > self._fair_share() and now - idle_since > FETCH_WAIT_S * 4:
                    self.leases.pop(p, None)  # idle and over this worker's share: give it
                    scope.cancel()  # back (popped now, so the others count one fewer)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(2):
                await puller.close()

    def _sweep(self, p: int, held: dict[str, Held]) -> None:
        """On taking a partition: offer every chunk of it the index has ``pending`` (a dead
        worker's, whose work messages come again only after ``ACK_WAIT_S``)."""
        assert self.transcriber is not None
        partitions = self.config.asr_partitions
        now = trio.current_time()
        swept = 0
        live = set(self.transcriber.sessions)  # before this sweep adds any
        ours: dict[tuple[str, str], bool] = {}  # per session: one hash, not one per chunk
        for user_id, session_id, chunk_id in self.store.pending_now():
            if chunk_id in held and (user_id, session_id) in live:
                continue  # offered during an earlier hold; still in this transcriber
            session = (user_id, session_id)
            if session not in ours:
                ours[session] = partition(user_id, session_id, partitions) == p
            if ours[session]:
                held[chunk_id] = Held(chunk_id, now)
                self._offer(chunk_id)
                swept += 1
        if swept:
            logger.info("partition %d: %d chunks left pending are queued again", p, swept)

    async def _arrive(self, puller: Puller, work: Work, held: dict[str, Held]) -> bool:
        """A work message: offer its chunk, or acknowledge it when there is nothing to do.
        False when this node's follower has not reached the chunk within its wait (the
        message comes again after ``ACK_WAIT_S``)."""
        assert self.transcriber is not None
        try:
            chunk_id = str(json.loads(work.headers[META])["chunk_id"])
            origin = int(work.headers["Nats-Stream-Source"].split()[1])
        except (KeyError, ValueError, IndexError):
            logger.warning("work message %d on %s is not a chunk; dropped", work.seq, work.subject)
            await self._ack(puller, work)
            return True
        if not await self.store.wait_followed(origin):
            return False
        if self.store.pending_key(chunk_id) is None:
            await self._ack(puller, work)  # done (by someone), failed, or deleted
            return True
        now = trio.current_time()
        if chunk_id in held:
            held[chunk_id].work = work  # again (it waited ACK_WAIT_S) or after a sweep
            held[chunk_id].extended = now
            return True
        held[chunk_id] = Held(chunk_id, now, work, now)
        self.counts["taken"] += 1
        self._offer(chunk_id)
        return True

    async def _settle(self, puller: Puller, held: dict[str, Held]) -> None:
        """Acknowledge held chunks the log has done; keep the others' work messages."""
        assert self.transcriber is not None
        now = trio.current_time()
        again: list[tuple[str, str, int, str]] = []
        for chunk_id, item in list(held.items()):
            key = self.store.pending_key(chunk_id)
            if key is None:
                if item.work is None or await self._ack(puller, item.work):
                    del held[chunk_id]
            elif key[:2] not in self.transcriber.sessions or now - item.offered > HOLD_S:
                # Its session was forgotten while it was still pending (its update was
                # refused, say; the transcriber forgets a session only once nothing of it
                # is in flight), or it is overdue: the transcriber gets it again.
                again.append((*key, chunk_id))
                item.offered = now
            elif item.work is not None and now - item.extended > ACK_WAIT_S / 3:
                try:
                    await puller.in_progress(item.work)
                    item.extended = now
                except NatsError as exc:
                    logger.debug("in-progress for %s: %s", chunk_id, exc)
        if again:  # a session's chunks all at once, in seq order: its utterances stay whole
            logger.warning("%d chunks still pending are queued again", len(again))
            for *_, chunk_id in sorted(again):
                self._offer(chunk_id)

    def _offer(self, chunk_id: str) -> None:
        """Hand a stored chunk to the transcriber (nothing when it was deleted meanwhile)."""
        assert self.transcriber is not None
        with contextlib.suppress(NotFound):
            self.transcriber.offer_stored(chunk_id)

    async def _ack(self, puller: Puller, work: Work) -> bool:
        try:
            await puller.ack(work)
        except NatsError as exc:
            logger.debug("ack of work %d: %s", work.seq, exc)
            return False
        self.counts["acked"] += 1
        return True


def cluster_for(config: Config, store: StoreBackend, hub: Hub, metrics: Metrics) -> Cluster | None:
    """The cluster side of transcription when *store* is a JetStream one (None otherwise)."""
    if isinstance(store, JetStreamStore):
        return Cluster(config, store, hub, metrics)
    return None


async def run_worker(
    config: Config, *, task_status: trio.TaskStatus[Cluster] = trio.TASK_STATUS_IGNORED
) -> None:
    """``trio-audio asr-worker``: follow the cluster's log and transcribe the partitions this
    process holds; no HTTP or WebSocket listener. SIGINT/SIGTERM stop it (its leases are
    given back, so other workers take over at once)."""
    if not config.store:
        msg = "asr-worker needs a cluster store: --store nats://h1:4222,..."
        raise ValueError(msg)
    if config.asr_engine == "none":
        msg = "asr-worker needs a speech engine (--asr-engine whisper or pocketsphinx)"
        raise ValueError(msg)
    metrics = Metrics()
    limiter = trio.CapacityLimiter(config.cpu_threads)
    store = JetStreamStore(config, metrics=metrics)  # no events: its work comes as work
    hub = Hub(config.ws_queue)
    async with trio.open_nursery() as root:
        await root.start(store.run)
        try:
            cluster = Cluster(config, store, hub, metrics)
            transcriber = Transcriber(config, store, cluster.hub, metrics, limiter)
            async with trio.open_nursery() as work:
                await work.start(transcriber.run)
                await work.start(partial(cluster.run, transcriber, relay=False))
                logger.info("asr-worker %s taking transcription work", store.node)
                task_status.started(cluster)
                with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                    async for signum in signals:
                        logger.info("%s received: stopping", signal.Signals(signum).name)
                        break
                transcriber.stop()
                work.cancel_scope.cancel()
        finally:
            store.close()
