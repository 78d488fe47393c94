"""Leases of transcription partitions: one live worker holds a partition at a time.

A lease is a KeyValue entry ``p.<p>`` in the bucket ``<stream>_asr_leases`` (TTL
``asr_lease_s``), created only while absent (a compare-and-append), renewed by its holder
every third of the TTL, and given up by it once not renewed within two thirds of it, so the
holder stops before anyone else can take the partition. Workers register (``w.<node>``,
same TTL) and take at most their fair share (ceil(P / workers)) of free partitions. While a
partition is held, ``hold`` runs the renewal and the caller's ``take`` side by side; a worker
that stops deletes the leases naming it, so others take over at once.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable

import attrs
import trio

from ..config import Config
from .bridge import NatsError, Unavailable, WrongLastSequence
from .connect import Nats
from .partitions import Names

logger = logging.getLogger("trio_audio.cluster.work")


@attrs.define(eq=False)
class Lease:
    partition: int
    revision: int
    renewed: float  # trio time of the last renewal that landed
    lost: bool = False  # someone else has it now, or it may have expired


Take = Callable[[Nats, Lease, trio.CancelScope], Awaitable[None]]  # work of a held partition


class Leases:
    """The partitions this worker holds (``holding``) and the workers alive."""

    def __init__(self, config: Config, names: Names, node: str) -> None:
        self._config = config
        self._names = names
        self._node = node
        self.holding: dict[int, Lease] = {}
        self.workers = 1  # live workers seen in the bucket (this one included)

    async def register(self, nats: Nats) -> None:
        """Keep this worker's ``w.<node>`` entry alive; count the live workers."""
        key = f"w.{self._node}"
        period = self._config.asr_lease_s / 3
        revision: int | None = None
        while True:
            try:
                try:
                    revision = await nats.kv_put(self._names.leases, key, b"", revision)
                except WrongLastSequence:
                    revision = await nats.kv_put(self._names.leases, key, b"", None)
                self.workers = max(1, len(await nats.kv_keys(self._names.leases, "w")))
            except NatsError as exc:
                revision = None
                logger.debug("worker registration: %s", exc)
            await trio.sleep(period)

    def fair_share(self) -> int:
        return math.ceil(self._config.asr_partitions / max(1, self.workers))

    async def hold(self, nats: Nats, p: int, take: Take) -> None:
        """Hold partition *p* whenever this worker may, and take its work while held."""
        poll = self._config.asr_lease_s / 4
        # Stagger: partition p is tried after the workers registered and in turn, so that
        # workers starting together split the partitions instead of one taking them all.
        await trio.sleep(poll + poll * p / self._config.asr_partitions)
        while True:
            lease = await self.acquire(nats, p)
            if lease is None:
                await trio.sleep(poll)
                continue
            self.holding[p] = lease
            logger.info("node %s took transcription partition %d", self._node, p)
            try:
                with trio.CancelScope() as scope:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(self.renew, nats, lease, scope)
                        nursery.start_soon(take, nats, lease, scope)
            finally:
                self.holding.pop(p, None)
                if not lease.lost:  # given back (fair share, or this process stops)
                    with trio.CancelScope(shield=True), trio.move_on_after(2):
                        await self.release(nats, p)
            if lease.lost:
                logger.warning("lost transcription partition %d", p)
            await trio.sleep(poll)

    async def acquire(self, nats: Nats, p: int) -> Lease | None:
        """The lease of *p* when it is free (or already this worker's) and within the fair
        share; None otherwise."""
        if len(self.holding) >= self.fair_share():
            return None
        key = f"p.{p}"
        try:
            held = await nats.kv_get(self._names.leases, key)
            if held is not None and held[0].decode() != self._node:
                return None
            last = held[1] if held is not None else None
            sent = trio.current_time()  # the lease counts from here (see _renew)
            revision = await nats.kv_put(self._names.leases, key, self._node.encode(), last)
        except (WrongLastSequence, Unavailable):
            return None
        except NatsError as exc:
            logger.debug("lease of partition %d: %s", p, exc)
            return None
        return Lease(p, revision, sent)

    async def renew(self, nats: Nats, lease: Lease, scope: trio.CancelScope) -> None:
        """Renew the lease every third of its TTL; end the hold (cancel *scope*) once it is
        lost, or not renewed within two thirds of its TTL.

        A renewal counts from when it was *sent*: the server stamps it later, so the entry
        lives at least TTL past that time, and a holder that gives up at two thirds of it
        stops before anyone else can take the partition (clocks running at the same rate)."""
        ttl = self._config.asr_lease_s
        key = f"p.{lease.partition}"
        await trio.sleep_until(lease.renewed + ttl / 3)
        while True:
            sent = trio.current_time()
            renewed = False
            with trio.move_on_at(lease.renewed + ttl * 2 / 3):
                try:
                    lease.revision = await nats.kv_put(
                        self._names.leases, key, self._node.encode(), lease.revision
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

    async def give_back(self, nats: Nats) -> None:
        """Delete every lease still naming this worker (a renewal or an acquisition cut
        short by the stop may have left one), so others take the partitions at once."""
        for p in range(self._config.asr_partitions):
            await self.release(nats, p)

    async def release(self, nats: Nats, p: int) -> None:
        """Delete the lease of *p* if it names this worker (at whatever revision it is)."""
        try:
            held = await nats.kv_get(self._names.leases, f"p.{p}")
            if held is not None and held[0].decode() == self._node:
                await nats.kv_delete(self._names.leases, f"p.{p}", held[1])
                logger.info("gave back transcription partition %d", p)
        except NatsError as exc:
            logger.info("partition %d expires by itself: %s", p, exc)
