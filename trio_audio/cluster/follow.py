"""The JetStream store's follower: the stream applied, in order, to this node's index.

::

    JetStream stream ──ordered, headers-only consumer──> LogFollower ──> index (memory)
                                                              └──> events ──> fan-out

At start-up ``replay`` applies the stream up to its end with no events (nobody watches yet,
and the work references are skipped: nothing to index); ``follow`` then takes everything
from the first record replay left, applies it and sends the ``Committed`` events it makes
(events before answers, as the local store: by the time a writer hears "stored", the
fan-out has its event). ``applied`` is the last stream sequence applied, ``announced`` the
last whose events are sent; ``progress`` is set (and replaced) each time it moves, and
``wait_applied`` waits on it.

What the committer reads back: ``results`` holds what the follower made of this node's own
records (by stream sequence), and ``pcm`` the speech PCM of chunks this node is publishing,
which their ``ChunkStored`` carries to the transcriber. A multipart upload is indexed whole
or not at all; a record that repeats a stored seq (only a lost compare-and-append could) is
ignored; only a tombstone removes a chunk.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Final

import trio

from ..errors import ServiceError
from ..store.events import ChunkStored, ChunkUpdated, Committed, deleted_events
from ..store.index import Place
from ..store.reads import IndexReads, MetaCache, apply_patch
from .bridge import Follower, Message
from .stream import META, NODE, SOURCE, Shared, from_header

logger = logging.getLogger("trio_audio.cluster.jetstream")

FOLLOW_BATCH: Final = 512


class LogFollower:
    """Applies the stream to the index and sends its events (see the module docstring)."""

    def __init__(self, shared: Shared, cache: MetaCache, reads: IndexReads) -> None:
        self._config, self._metrics = shared.config, shared.metrics
        self._stream, self._index = shared.stream, shared.index
        self._cache = cache
        self._reads = reads  # the store's reads: an update's chunk read back whole
        self.applied = 0  # the last stream sequence the follower applied
        self.announced = 0  # ... and whose events it has sent
        self.progress = trio.Event()  # set (and replaced) each time the follower applies
        self.live = False  # events are sent once replay is done
        self._groups: dict[str, list[tuple[dict[str, Any], Message]]] = {}
        self.pcm: dict[str, bytes] = {}  # speech PCM of chunks this node is publishing
        self.results: dict[int, Any] = {}  # what the follower made of this node's records
        self.replayed: int | None = None
        self.bytes = 0

    async def replay(self, follower: Follower, messages: int) -> None:
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
        self.replayed = count
        self.announced = self.applied
        self.live = True
        logger.info(
            "replayed %d records (%d chunks) from stream %s in %.2f s",
            count,
            len(self._index),
            self._stream.name,
            time.perf_counter() - started,
        )

    async def follow(
        self, follower: Follower, out: trio.MemorySendChannel[Committed] | None
    ) -> None:
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
            if out is not None:
                for event in events:
                    await out.send(event)
            self.announced = self.applied
            self.progress.set()
            self.progress = trio.Event()

    # -- applying the stream ---------------------------------------------------------------

    async def _apply(self, message: Message) -> list[Committed]:
        """Apply one followed record to the index; the events it makes."""
        if message.seq <= self.applied:
            return []
        self.applied = message.seq
        self.bytes += message.size
        parts = message.subject.split(".")
        kind = parts[3] if len(parts) > 3 else ""
        if kind == "work":  # a chunk's reference for the work stream: nothing to index
            return []
        try:
            record = from_header(message.headers[META])
        except (KeyError, ValueError):
            logger.warning("stream record %d on %s has no metadata", message.seq, message.subject)
            return []
        mine = message.headers.get(NODE) == self._stream.node
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
                self.pcm.pop(chunk_id, None)
                self._cache.drop(chunk_id)
            if mine:
                self.results[message.seq] = removed
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
                self.results[message.seq] = None
            return []
        cached = self._cache.get(chunk_id) if self.live else None
        if cached is not None:
            apply_patch(cached, record)
            self._cache.put(chunk_id, cached)
            meta = cached
        else:
            self._cache.drop(chunk_id)
            if not self.live:
                return []
            try:
                (meta,) = await self._reads.metas([chunk_id])
            except ServiceError as exc:
                logger.warning("chunk %s updated, but not read back: %s", chunk_id, exc)
                return []
        chunk = self._index.chunk_json(meta)
        if mine:
            self.results[message.seq] = chunk
        return [ChunkUpdated(chunk)]

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
            if self.live:
                self._cache.put(member["chunk_id"], member)
            chunk = self._index.chunk_json(member)
            if msg.headers.get(NODE) == self._stream.node:
                self.results[msg.seq] = chunk
                self._metrics.stored(msg.size)
            if self.live:
                pcm = self.pcm.pop(member["chunk_id"], None)
                events.append(ChunkStored(chunk, msg.headers.get(SOURCE), pcm))
        return events

    async def wait_applied(self, seq: int) -> bool:
        """Wait until the follower has applied *seq* and sent its events; False after twice
        ``store_timeout_s``."""
        with trio.move_on_after(self._config.store_timeout_s * 2):
            while self.announced < seq:
                await self.progress.wait()
            return True
        return False
