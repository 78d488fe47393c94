"""Taking a held partition's work: fetch, offer to the transcriber, acknowledge once done.

While this worker holds partition *p* (``leases.py``), ``Taker.take`` fetches from its
durable pull consumer ``p<p>`` (explicit acks, ``ACK_WAIT_S``), offers each chunk its
follower has to the transcriber (``offer_stored``), and acknowledges a work message only
once the log no longer has its chunk ``pending`` (done, failed or deleted). On taking a
partition it first offers every chunk of it the index has ``pending`` (a dead worker's,
whose work messages come again only after ``ACK_WAIT_S``). A chunk still pending after the
transcriber forgot its session, or held ``HOLD_S``, is offered again, a session's together
in seq order. An idle partition over this worker's fair share is given back.
"""

from __future__ import annotations

import collections
import contextlib
import logging
from typing import Final

import attrs
import trio

from ..asr.transcriber import Transcriber
from ..config import Config
from ..errors import NotFound
from .bridge import NatsError, Puller, Unavailable, Work
from .connect import Nats
from .leases import Lease, Leases
from .partitions import FollowedLog, Names, partition
from .stream import META, from_header

logger = logging.getLogger("trio_audio.cluster.work")

ACK_WAIT_S: Final = 30.0  # a delivered work message unacknowledged this long goes again
MAX_ACK_PENDING: Final = 10_000  # work messages of a partition held at once
FETCH_BATCH: Final = 64
FETCH_WAIT_S: Final = 0.5  # one fetch's wait; also the period acks are settled at
HOLD_S: Final = 300.0  # a chunk held this long without a transcript is offered again


@attrs.define(eq=False)
class Held:
    """A chunk this worker offered to its transcriber and has not acknowledged yet."""

    chunk_id: str
    offered: float
    work: Work | None = None
    extended: float = 0.0


class Taker:
    """The work of the partitions this worker holds, for its transcriber."""

    def __init__(
        self,
        config: Config,
        names: Names,
        store: FollowedLog,
        transcriber: Transcriber,
        leases: Leases,
    ) -> None:
        self._config = config
        self._names = names
        self._store = store
        self._transcriber = transcriber
        self._leases = leases
        # Chunks offered to this process's transcriber and not acknowledged, by partition;
        # kept across holds, so a partition held again is not offered them twice.
        self.held: dict[int, dict[str, Held]] = {}
        self.counts: collections.Counter[str] = collections.Counter()

    async def take(self, nats: Nats, lease: Lease, scope: trio.CancelScope) -> None:
        """Fetch the partition's work and acknowledge it once done, while the lease holds."""
        p = lease.partition
        try:
            puller: Puller = await nats.pull(self._names.work, f"p{p}",
                                             f"{self._names.work}.{p}.>", ACK_WAIT_S,
                                             MAX_ACK_PENDING)  # fmt: skip
        except NatsError as exc:  # the cluster is away, say: give it back, try again later
            logger.warning("partition %d: no consumer (%s); giving it back", p, exc)
            scope.cancel()
            return
        held = self.held.setdefault(p, {})
        idle_since = trio.current_time()
        try:
            await self._sweep(p, held)
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
                elif (
                    len(self._leases.holding) > self._leases.fair_share()
                    and now - idle_since > FETCH_WAIT_S * 4
                ):
                    self._leases.holding.pop(p, None)  # idle and over this worker's share: give it
                    scope.cancel()  # back (popped now, so the others count one fewer)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(2):
                await puller.close()

    async def _sweep(self, p: int, held: dict[str, Held]) -> None:
        """On taking a partition: offer every chunk of it the index has ``pending`` (a dead
        worker's, whose work messages come again only after ``ACK_WAIT_S``)."""
        partitions = self._config.asr_partitions
        now = trio.current_time()
        swept = 0
        live = set(self._transcriber.sessions)  # before this sweep adds any
        ours: dict[tuple[str, str], bool] = {}  # per session: one hash, not one per chunk
        for user_id, session_id, chunk_id in self._store.pending_now():
            if chunk_id in held and (user_id, session_id) in live:
                continue  # offered during an earlier hold; still in this transcriber
            session = (user_id, session_id)
            if session not in ours:
                ours[session] = partition(user_id, session_id, partitions) == p
            if ours[session]:
                held[chunk_id] = Held(chunk_id, now)
                await self._offer(chunk_id)
                swept += 1
        if swept:
            logger.info("partition %d: %d chunks left pending are queued again", p, swept)

    async def _arrive(self, puller: Puller, work: Work, held: dict[str, Held]) -> bool:
        """A work message: offer its chunk, or acknowledge it when there is nothing to do.
        False when this node's follower has not reached the chunk within its wait (the
        message comes again after ``ACK_WAIT_S``)."""
        try:
            chunk_id = str(from_header(work.headers[META])["chunk_id"])
            origin = int(work.headers["Nats-Stream-Source"].split()[1])
        except (KeyError, ValueError, IndexError):
            logger.warning("work message %d on %s is not a chunk; dropped", work.seq, work.subject)
            await self._ack(puller, work)
            return True
        if not await self._store.wait_followed(origin):
            return False
        if self._store.pending_key(chunk_id) is None:
            await self._ack(puller, work)  # done (by someone), failed, or deleted
            return True
        now = trio.current_time()
        if chunk_id in held:
            held[chunk_id].work = work  # again (it waited ACK_WAIT_S) or after a sweep
            held[chunk_id].extended = now
            return True
        held[chunk_id] = Held(chunk_id, now, work, now)
        self.counts["taken"] += 1
        await self._offer(chunk_id)
        return True

    async def _settle(self, puller: Puller, held: dict[str, Held]) -> None:
        """Acknowledge held chunks the log has done; keep the others' work messages."""
        now = trio.current_time()
        again: list[tuple[str, str, int, str]] = []
        for chunk_id, item in list(held.items()):
            key = self._store.pending_key(chunk_id)
            if key is None:
                if item.work is None or await self._ack(puller, item.work):
                    del held[chunk_id]
            elif key[:2] not in self._transcriber.sessions or now - item.offered > HOLD_S:
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
                await self._offer(chunk_id)

    async def _offer(self, chunk_id: str) -> None:
        """Hand a stored chunk to the transcriber (nothing when it was deleted meanwhile)."""
        with contextlib.suppress(NotFound):
            await self._transcriber.offer_stored(chunk_id)

    async def _ack(self, puller: Puller, work: Work) -> bool:
        try:
            await puller.ack(work)
        except NatsError as exc:
            logger.debug("ack of work %d: %s", work.seq, exc)
            return False
        self.counts["acked"] += 1
        return True
