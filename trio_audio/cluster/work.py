"""Transcription on a JetStream cluster: every session decoded by one live worker at a time.

::

    AUDIO (the log)                      AUDIO_asr (a work queue the servers fill themselves:
    AUDIO.<user>.<session>.work.<seq> ──> a stream source with a subject transform)
                                         AUDIO_asr.<p>.<user>.<session>.<seq>
                                         p = partition(P, user, session), FNV-1a by the server
                                              │ one durable pull consumer per partition
                                              ▼ ("p<p>", explicit ack, ``ACK_WAIT_S``)
    AUDIO_asr_leases (KV, TTL asr_lease_s)   worker holding the lease "p.<p>"
    "p.<p>" = the holder's node id   ──────> fetch ─> its follower has the chunk ─> transcriber
    "w.<node>" = a live worker                (offer_stored)  ─> transcript update in the log
                                              ─> ack once the log no longer has it ``pending``
    AUDIO_asr_live.<user>.<session>   core NATS: partials and VAD events, every node
    AUDIO_asr_finalize.<p>            core NATS request: "finalize this session" to its holder

Why this design. Each chunk is published with a reference (``work.<seq>``: its metadata,
no audio) in the same atomic batch, and the servers copy each reference into the work stream
themselves (a stream *source* with a subject transform), so a chunk that is in the log is in
the work queue too: no second publish a crashing node could skip, and no copy of the audio
while no worker runs. A new work stream starts at the log's next record: the servers copy no
history; chunks already pending are found in the index by whoever takes their partition.
``partition()`` in the transform spreads sessions over ``asr_partitions`` subjects; a
session's chunks all land in one, in log order.
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

Interim results (partials, VAD events) are not durable: the transcriber publishes them to
its own watchers and on a core NATS subject, and every serve node relays what other nodes
publish there to its watchers. Finals are the log's: every node's watchers get them from its
own follower's ``ChunkUpdated``, once they are stored. ``finalize`` (WebSocket
``finalize``/``end``, HTTP session end) on a node that does not hold the session is a core
NATS request to its holder, then a wait until this node's follower has the transcripts.

``Cluster`` runs these parts, each a module of its own: ``partitions.py`` (a session's
partition, the names, what the work needs of the log), ``leases.py`` (holding partitions),
``take.py`` (a held partition's work fetched, offered and acknowledged), ``relay.py``
(interim results between nodes) and ``finalize.py`` (finalize on the holder).

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

import logging
from typing import Final

import trio

from ..asr.transcriber import Transcriber
from ..config import Config
from ..errors import StoreError
from ..live import LivePort
from ..metrics import Metrics
from ..store.events import ChunkStored
from .bridge import NatsError, retrying
from .connect import Nats
from .finalize import Finalizer
from .leases import Leases
from .partitions import FollowedLog, Names
from .relay import LiveRelay
from .take import Taker

logger = logging.getLogger("trio_audio.cluster.work")

SET_UP_S: Final = 30.0  # how long creating the work stream and lease bucket is retried
PENDING_PERIOD_S: Final = 5.0  # how often the work pending per partition is asked for


class NoTaker:
    """The fan-out's transcriber on a cluster: new chunks come as work, not as events."""

    def offer(self, event: ChunkStored) -> None:
        pass


class Cluster:
    """The cluster side of transcription in one process (a serve node or an asr-worker)."""

    def __init__(
        self, config: Config, store: FollowedLog, live: LivePort, metrics: Metrics
    ) -> None:
        self.config = config
        self.store = store
        self.local_live = live
        self.metrics = metrics
        self.names = Names(config.store_stream)
        self.node = store.node
        self.live = LiveRelay(live, self.node, self.names)
        self.taker = NoTaker()
        self.transcriber: Transcriber | None = None
        self.leases = Leases(config, self.names, self.node)
        self.finalizer = Finalizer(config, self.names, store, self.leases)
        self.pending: dict[int, tuple[int, int]] = {}  # partition: (queued, unacknowledged)
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
            "trio_audio_cluster_partitions",
            lambda: {'state="held"': float(len(self.leases.holding))},
        )
        self.metrics.gauge("trio_audio_cluster_work_pending", self._pending_gauge)
        try:
            await self._run(nats, taking, relay, task_status)
        finally:
            if taking:
                with trio.CancelScope(shield=True), trio.move_on_after(3):
                    await self.leases.give_back(nats)

    async def _run(
        self, nats: Nats, taking: bool, relay: bool, task_status: trio.TaskStatus[Cluster]
    ) -> None:
        with self._scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self.live.run, nats)
                nursery.start_soon(self._observe_pending, nats)
                if relay:
                    inbox = await retrying(lambda: nats.subscribe_core(f"{self.names.live}.>"))
                    nursery.start_soon(self.live.relay, inbox)
                if taking:
                    assert self.transcriber is not None
                    taker = Taker(
                        self.config, self.names, self.store, self.transcriber, self.leases
                    )
                    await self._set_up(nats)
                    finalize = await retrying(
                        lambda: nats.subscribe_core(f"{self.names.finalize}.*")
                    )
                    nursery.start_soon(
                        self.finalizer.serve, nats, finalize, nursery, self.transcriber
                    )
                    nursery.start_soon(self.leases.register, nats)
                    for p in range(self.config.asr_partitions):
                        nursery.start_soon(self.leases.hold, nats, p, taker.take)
                task_status.started(self)

    async def _observe_pending(self, nats: Nats) -> None:
        """Every ``PENDING_PERIOD_S``: each partition's work not yet delivered and delivered
        but not acknowledged (the cluster's numbers: the same on every node)."""
        while True:
            for p in range(self.config.asr_partitions):
                try:
                    self.pending[p] = await nats.consumer_pending(self.names.work, f"p{p}")
                except NatsError:
                    self.pending.pop(p, None)  # not taken yet (no consumer), or no answer
            await trio.sleep(PENDING_PERIOD_S)

    def _pending_gauge(self) -> dict[str, float]:
        out = {}
        for p, (queued, unacked) in sorted(self.pending.items()):
            out[f'partition="{p}",state="queued"'] = float(queued)
            out[f'partition="{p}",state="unacknowledged"'] = float(unacked)
        return out

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

    async def finalize(self, user_id: str, session_id: str) -> None:
        """End the session's open utterance now, on whichever worker holds it; returns once
        this node's follower has its transcripts (see ``finalize.py``)."""
        await self.finalizer.finalize(user_id, session_id, self.transcriber)

    def lag_s(self, key: tuple[str, str] | None = None) -> float:
        return self.transcriber.lag_s(key) if self.transcriber is not None else 0.0

    def set_vocabulary(self, user_id: str, session_id: str, terms: tuple[str, ...]) -> None:
        """The session's expected words, for this node's transcriber (a session another
        node's worker decodes does not get them)."""
        if self.transcriber is not None:
            self.transcriber.set_vocabulary(user_id, session_id, terms)
