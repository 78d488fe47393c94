"""Reading chunk metadata back from the log, through a cache; and loading the index.

The index (``index.py``) keeps where a chunk's records lie, not what they say. ``get`` and
``page`` read the metadata of the chunks they answer with from the log: the CHUNK record's
metadata, with its UPDATE records applied on top. Reads are positioned (in a worker thread
under a limiter, ``os.pread`` of just the metadata, or of one span of the file for records
that lie close together, as a session's do; on a cluster, a get of the stream message by its
sequence) and go through ``MetaCache``, an LRU of packed metadata whose size is
``meta_cache_mb``; its hits and misses are counted in ``/metrics``. Packed metadata is
decoded with msgspec, a batch of it in a worker thread.

Resource handling: a read opens the files it needs and closes them before it returns, so a
compaction can remove a file at any time; a read that finds its file gone looks the chunk up
again (a compaction moved it) and reads it from its new place.
"""

from __future__ import annotations

import collections
import errno
import os
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any, Final

import msgpack
import msgspec
import trio

from ..errors import NotFound
from .files import log_dir
from .index import Index, Location, Place, SessionSummary
from .queries import own_chunk_json
from .record import FRAME_HEADER_SIZE, BlobRef, Record, RecordType
from .scan import Route, route_meta

ENTRY_OVERHEAD: Final = 220  # what an entry costs beyond its bytes (its key, node, header)
READS_AT_ONCE: Final = 4  # threads reading metadata at once
SPAN_GAP: Final = 8 * 1024  # records at most this far apart are read with one pread ...
SPAN_MAX: Final = 1 << 20  # ... of at most this many bytes
DECODE_INLINE: Final = 16  # cached chunks decoded on the event loop; more go to a thread

# What a backend's reader gives for each location: the metadata (None: its record is gone),
# and its packed bytes as read when no update had to be applied (for the cache, as is).
Read = tuple[dict[str, Any] | None, bytes | None]
Reader = Callable[[list[Location]], Awaitable[list[Read]]]


class MetaCache:
    """An LRU of chunks' packed metadata, bounded in bytes; counts hits and misses."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self._items: collections.OrderedDict[str, bytes] = collections.OrderedDict()

    def get(self, chunk_id: str) -> dict[str, Any] | None:
        """The metadata of *chunk_id*, decoded (None: not cached)."""
        packed = self.packed(chunk_id)
        return None if packed is None else decode(packed)

    def packed(self, chunk_id: str) -> bytes | None:
        """The packed metadata of *chunk_id* (None: not cached), counted as ``get`` is."""
        packed = self._items.get(chunk_id)
        if packed is None:
            self.misses += 1
            return None
        self.hits += 1
        self._items.move_to_end(chunk_id)
        return packed

    def put(self, chunk_id: str, meta: dict[str, Any], packed: bytes | None = None) -> None:
        """Keep *meta* (*packed*: its msgpack bytes, when the caller has them)."""
        self.drop(chunk_id)
        if packed is None:
            packed = msgpack.packb(meta)
        size = len(packed) + ENTRY_OVERHEAD
        if size > self.max_bytes:
            return
        self._items[chunk_id] = packed
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, old = self._items.popitem(last=False)
            self.bytes -= len(old) + ENTRY_OVERHEAD

    def drop(self, chunk_id: str) -> None:
        old = self._items.pop(chunk_id, None)
        if old is not None:
            self.bytes -= len(old) + ENTRY_OVERHEAD

    def __len__(self) -> int:
        return len(self._items)


def decode(packed: bytes | memoryview) -> dict[str, Any]:
    """Packed metadata as a fresh dict (msgspec: the same values as ``msgpack.unpackb``)."""
    meta: dict[str, Any] = msgspec.msgpack.decode(packed)
    return meta


def decode_all(packed: list[bytes]) -> list[dict[str, Any]]:
    return [decode(item) for item in packed]


def apply_patch(meta: dict[str, Any], patch: Any) -> None:
    if isinstance(patch, dict) and isinstance(patch.get("set"), dict):
        meta.update(patch["set"])


def spans(places: list[Place]) -> list[tuple[int, int, list[int]]]:
    """The reads that fetch *places*' payloads: ``(start, end, indexes)`` per read, each of
    one file's records at most ``SPAN_GAP`` apart and ``SPAN_MAX`` bytes in all (a record
    longer than that is a read of its own). Indexes are into *places*, by file and offset."""
    order = sorted(range(len(places)), key=lambda i: (places[i].segment, places[i].offset))
    out: list[tuple[int, int, list[int]]] = []
    segment = None
    start = end = 0
    members: list[int] = []
    for i in order:
        place = places[i]
        at = place.offset + FRAME_HEADER_SIZE
        stop = at + place.length
        near = place.segment == segment and at - end <= SPAN_GAP and stop - start <= SPAN_MAX
        if members and near:
            members.append(i)
            end = max(end, stop)
            continue
        if members:
            out.append((start, end, members))
        segment, start, end, members = place.segment, at, stop, [i]
    if members:
        out.append((start, end, members))
    return out


class Files:
    """The log's files a read opens, each once; closed by ``close``."""

    def __init__(self, data_dir: Path) -> None:
        self.directory = log_dir(data_dir)
        self.fds: dict[str, int | None] = {}

    def fd(self, segment: str) -> int | None:
        """*segment* open for reading (None: it is gone)."""
        if segment not in self.fds:
            try:
                self.fds[segment] = os.open(self.directory / segment, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                self.fds[segment] = None
        return self.fds[segment]

    def read(self, segment: str, offset: int, length: int) -> bytes | None:
        fd = self.fd(segment)
        if fd is None:
            return None
        data = os.pread(fd, length, offset)
        if len(data) != length:
            raise OSError(errno.EIO, f"short read of {segment} at {offset}")
        return data

    def payload(self, place: Place) -> bytes | None:
        """The payload of the record at *place* (None: its file is gone)."""
        length = place.length
        if length == 0:  # an update: its payload's length is in its frame header
            head = self.read(place.segment, place.offset, 4)
            if head is None:
                return None
            length = int.from_bytes(head, "little")
        return self.read(place.segment, place.offset + FRAME_HEADER_SIZE, length)

    def close(self) -> None:
        for fd in self.fds.values():
            if fd is not None:
                os.close(fd)
        self.fds.clear()


def read_local(data_dir: Path, locations: list[Location]) -> list[Read]:
    """The metadata at each of *locations* (None where its file is gone): the CHUNK records'
    metadata read in spans (``spans``), each file opened once, then their updates applied.
    Blocking: run it in a thread."""
    files = Files(data_dir)
    places = [location.record for location in locations]
    packed: list[bytes | None] = [None] * len(places)
    try:
        for start, end, members in spans(places):
            data = files.read(places[members[0]].segment, start, end - start)
            if data is None:
                continue
            if len(members) == 1:
                packed[members[0]] = data
                continue
            view = memoryview(data)
            for i in members:
                at = places[i].offset + FRAME_HEADER_SIZE - start
                packed[i] = bytes(view[at : at + places[i].length])
        out: list[Read] = []
        for location, item in zip(locations, packed, strict=True):
            if item is None:
                out.append((None, None))
                continue
            meta = decode(item)
            for update in location.updates:
                patch = files.payload(update)
                if patch is None:
                    out.append((None, None))
                    break
                apply_patch(meta, decode(patch))
            else:
                out.append((meta, None if location.updates else item))
    finally:
        files.close()
    return out


def local_reader(data_dir: Path) -> Reader:
    """A ``Reader`` of the local log: positioned reads in a thread, a few at once."""
    limiter = trio.CapacityLimiter(READS_AT_ONCE)

    async def read(locations: list[Location]) -> list[Read]:
        return await trio.to_thread.run_sync(read_local, data_dir, locations, limiter=limiter)

    return read


class IndexReads:
    """The read API every backend answers from its index and its log: mixed into ``Store``
    and ``JetStreamStore``, which set ``_index``, ``_cache``, ``_reader`` and ``_pending``
    (the chunks their replay found still pending transcription). Copies out, never the
    index's own objects. ``get`` and ``page`` read metadata from the log (see the module
    docstring), so they are async; the rest answer from memory."""

    _index: Index
    _cache: MetaCache
    _reader: Reader
    _pending: list[str]

    async def metas(self, chunk_ids: list[str]) -> list[dict[str, Any]]:
        """The current metadata of *chunk_ids* (raw records, in order); ``NotFound`` for
        one that is not stored."""
        rows = [self._index.row(chunk_id) for chunk_id in chunk_ids]
        found = await self._metas(chunk_ids, rows)
        for chunk_id, meta in zip(chunk_ids, found, strict=True):
            if meta is None:
                msg = f"chunk {chunk_id!r} was deleted"
                raise NotFound(msg)
        return [meta for meta in found if meta is not None]

    async def _metas(self, chunk_ids: list[str], rows: list[int]) -> list[dict[str, Any] | None]:
        """The metadata of the chunks *chunk_ids* at *rows* (looked up with no await since:
        a vacuum renumbers rows): from the cache, else read from the log in one batch (and
        cached, unless the index changed meanwhile). None for a chunk deleted before it
        could be read."""
        index, cache = self._index, self._cache
        hits = [cache.packed(chunk_id) for chunk_id in chunk_ids]
        out: list[dict[str, Any] | None] = [None] * len(chunk_ids)
        missing = [i for i, item in enumerate(hits) if item is None]
        for _ in range(3):  # a compaction may move a chunk while it is read: look again
            if not missing:
                break
            version = index.version
            got = await self._reader(index.locations([rows[i] for i in missing]))
            again = []
            for i, (meta, packed) in zip(missing, got, strict=True):
                if meta is None:
                    row = index.ids.find(index.table, chunk_ids[i])
                    if row is not None:
                        rows[i] = row
                        again.append(i)
                    continue
                out[i] = meta
                if index.version == version:  # not when it may have changed while read
                    cache.put(chunk_ids[i], meta, packed)
            missing = again
        if missing:
            msg = f"chunk {chunk_ids[missing[0]]!r} could not be read from the log"
            raise NotFound(msg)
        cached = [item for item in hits if item is not None]
        if len(cached) > DECODE_INLINE:
            decoded = iter(await trio.to_thread.run_sync(decode_all, cached))
        else:
            decoded = iter([decode(item) for item in cached])
        for i, item in enumerate(hits):
            if item is not None:
                out[i] = next(decoded)
        return out

    async def get(self, chunk_id: str) -> dict[str, Any]:
        """The chunk JSON of *chunk_id*; ``NotFound`` if it is not stored."""
        (meta,) = await self._metas([chunk_id], [self._index.row(chunk_id)])
        if meta is None:
            msg = f"chunk {chunk_id!r} was deleted"
            raise NotFound(msg)
        return own_chunk_json(meta, round(self._index.offset_of(meta), 3))

    def has(self, chunk_id: str) -> bool:
        return self._index.has(chunk_id)

    def offset_ms(self, chunk_id: str) -> float | None:
        """Where a stored chunk starts on its session's timeline now (None: not stored);
        what its chunk JSON says, without reading it."""
        return self._index.offset_ms(chunk_id)

    def transcript_status(self, chunk_id: str) -> str | None:
        """A stored chunk's ``transcript.status`` (None: not stored), without reading it."""
        return self._index.status(chunk_id)

    def chunk_ids(self) -> list[str]:
        """Every stored chunk's id (in no particular order)."""
        return list(self._index.chunk_ids())

    def session_ids(self, user_id: str) -> list[str]:
        """The ids of a user's sessions that hold chunks, sorted."""
        return sorted(self._index.users.get(user_id, {}))

    def owner(self, chunk_id: str) -> str | None:
        """The user a stored chunk belongs to (None: not stored)."""
        return self._index.owner(chunk_id)

    def summary(self, user_id: str, session_id: str) -> SessionSummary | None:
        """A session's totals and transcript (None: no chunk stored)."""
        return self._index.summary(user_id, session_id)

    def chunks_after(self, user_id: str, session_id: str, seq: int | None) -> list[tuple[int, str]]:
        """``(seq, chunk_id)`` of a session's chunks after *seq* (all when None), in order."""
        return self._index.chunks_after(user_id, session_id, seq)

    async def page(
        self, user_id: str, only: str | None, limit: int, after: tuple[str, int] | None
    ) -> tuple[list[tuple[SessionSummary, list[dict[str, Any]]]], tuple[str, int] | None]:
        """One page of a user's chunks, grouped by session (sessions by id, chunks by seq);
        *after* is where the previous page ended; the second value is where this one ends
        when more follow (None on the last page). A chunk deleted while the page is read
        is left out."""
        index = self._index
        plan, more = index.page_ids(user_id, only, limit, after)
        # One batch for the whole page (its rows are good only until the first await).
        ids = [chunk_id for piece in plan for chunk_id in piece.chunk_ids]
        metas = await self._metas(ids, [row for piece in plan for row in piece.rows])
        out = []
        start = 0
        for piece in plan:
            end = start + len(piece.chunk_ids)
            chunks = [
                own_chunk_json(meta, offset)
                for meta, offset in zip(metas[start:end], piece.offsets, strict=True)
                if meta is not None
            ]
            start = end
            summary = index.summary(user_id, piece.session_id)
            if summary is not None and chunks:
                out.append((summary, chunks))
        return out, more

    def pending_transcripts(self) -> list[str]:
        """Chunks that replay found still ``pending`` transcription, in session/seq order."""
        return list(self._pending)


class Loader:
    """The replay rules, fed one record at a time (``add``), applied to an index.

    CHUNK indexes a chunk, a multipart group (``meta["group"] = [id, index, count]``) only
    once all of it has been read; UPDATE replaces top-level fields (``{"chunk_id", "set"}``);
    TOMBSTONE removes chunks (``{"chunk_ids": [...]}``). Only locations go into memory."""

    def __init__(self, index: Index) -> None:
        self.index = index
        self.groups: dict[str, list[Record]] = {}
        self.records = 0

    def add(self, record: Record) -> None:
        self.records += 1
        if record.type == RecordType.UPDATE:
            length = record.end - record.offset - FRAME_HEADER_SIZE if record.end else 0
            place = Place(record.segment, record.offset, length)
            self.index.apply_update(record.meta, place)
            return
        if record.type == RecordType.TOMBSTONE:
            self.index.apply_tombstone({"chunk_ids": record.meta.get("chunk_ids", ())})
            return
        if record.type != RecordType.CHUNK or record.blob is None:
            return
        group = record.meta.get("group")
        if group is None:
            self._put(record)
            return
        members = self.groups.setdefault(group[0], [])
        members.append(record)
        if len(members) == group[2]:
            for member in self.groups.pop(group[0]):
                self._put(member)

    def _put(self, record: Record) -> None:
        blob = record.blob
        assert blob is not None
        header = 2 if blob.length < 1 << 8 else 3 if blob.length < 1 << 16 else 5
        length = blob.offset - header - record.offset - FRAME_HEADER_SIZE
        self.index.insert_meta(
            record.meta, Place(record.segment, record.offset, length), blob.length
        )

    def add_route(
        self, route: Route, segment: str, offset: int, meta_length: int, audio_length: int
    ) -> None:
        """A CHUNK record as a routes replay decodes it (``scan.RouteSink``): the same rules
        as ``add``, without its metadata map."""
        if route.group is not None:  # a multipart group waits for its other parts
            start = offset + FRAME_HEADER_SIZE + meta_length
            audio_at = start + (2 if audio_length < 1 << 8 else 3 if audio_length < 1 << 16 else 5)
            blob = BlobRef(segment, audio_at, audio_length)
            end = audio_at + audio_length
            self.add(Record(RecordType.CHUNK, 0, route_meta(route), blob, segment, offset, end))
            return
        self.records += 1
        transcript = route.transcript
        index = self.index
        index.insert(
            route.chunk_id,
            route.user_id,
            route.session_id,
            route.seq,
            route.audio.duration_ms,
            None if transcript is None else transcript.status,
            None if transcript is None else transcript.text,
            index.segment_number(segment),
            offset,
            meta_length,
            audio_length,
        )

    def pending(self) -> list[str]:
        return self.index.pending_transcripts()


def load(records: Iterable[Record], index: Index) -> Loader:
    loader = Loader(index)
    for record in records:
        loader.add(record)
    return loader
