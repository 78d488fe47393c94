"""The local store: the index over the append-only log, and its one committer.

::

    pipeline (Jobs) ──┐
    transcriber ──────┼──> writes (one bounded channel) ──> committer ──> log (+ fsync)
    web (deletes) ────┘                                        │
                                                               ├──> index (memory)
                                                               └──> events ──> fan-out

Resource handling: ``run`` locks the data dir, replays the log into a fresh index (in a
thread, which hands the index back), opens the log writer and reports ready. It then runs
the committer, with compaction and (``fsync=interval``) periodic fsync as its children, until
every sender of the write channel is closed: the pipeline's clone when the pipeline has
drained, and the store's own end by ``close``. Then it closes the log (fsynced) and unlocks.
The event channel (``events``) is closed when the committer ends.

Error handling: a seq already stored with other bytes fails that job with ``SeqConflict``;
an update or delete of a chunk that is not stored fails with ``NotFound``; a write that
fails (disk full, I/O error) fails every write of its batch with ``InsufficientStorage`` or
``InternalError`` and leaves the log at its last good record; an fsync that fails stops the
process (``run`` raises ``StoreError``), because a retried fsync can report success for
data it lost.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path
from typing import Any, Final

import attrs
import trio

from ..config import Config
from ..errors import (
    InternalError,
    NotFound,
    ServiceError,
    StoreError,
)
from ..metrics import Metrics
from ..models import Job, Reply
from .compact import Snapshot, log_size, remove_replaced, write_snapshot
from .events import (
    ChunkStored,
    ChunkUpdated,
    CommitChannels,
    Committed,
    Update,
    Write,
    deleted_events,
)
from .files import REAL_FILES, FileOps, lock_data_dir
from .index import Index, Place, Planned, Stored
from .logio import (
    Frame,
    FsyncFailed,
    Record,
)
from .logio import (
    append as _append,
)
from .logio import (
    close_log as _close_log,
)
from .logio import (
    prove as _prove,
)
from .logio import (
    seal as _seal,
)
from .logio import (
    sync_and_prove as _sync_and_prove,
)
from .reads import IndexReads, Loader, MetaCache, local_reader
from .record import FRAME_HEADER_SIZE, BlobRef, RecordType
from .replay import ReplayReport, read_blob, replay
from .room import DiskRoom
from .types import StoreStats
from .writer import LogWriter

logger = logging.getLogger("trio_audio.store")

MOVE_SLICE: Final = 4096  # chunks re-pointed at a snapshot between two checkpoints


@attrs.frozen
class Replayed:
    """What replay hands back from its thread."""

    index: Index
    report: ReplayReport
    pending: list[str]


class Store(CommitChannels, IndexReads):
    """The index plus the log. Build it in ``serve``, start ``run`` with ``nursery.start``."""

    def __init__(
        self, config: Config, *, metrics: Metrics | None = None, files: FileOps = REAL_FILES
    ) -> None:
        self._config = config
        self._metrics = metrics if metrics is not None else Metrics()
        self._data_dir = Path(config.data_dir)
        self._files = files  # the file layer under the log (tests put fault doubles here)
        self._index = Index(self._config.transcript_status())
        self._cache = MetaCache(int(config.meta_cache_mb * 1024 * 1024))
        self._reader = local_reader(self._data_dir)
        self._metrics.observe_cache(self._cache)
        self._report: ReplayReport | None = None
        self._pending: list[str] = []
        self._log: LogWriter | None = None
        self._disk = trio.CapacityLimiter(1)  # one thread at a time touches the log's files
        self._send, self._receive = trio.open_memory_channel[Write](config.stage_queue)
        self._events: trio.MemorySendChannel[Committed] | None = None
        self._commit_lock = trio.Lock()  # a commit's write and indexing vs. compaction's seal
        self._compact_lock = trio.Lock()
        self._compact_wanted = trio.Event()
        self._written = 0  # batches written; _synced: how many of them are fsynced
        self._synced = 0
        self._log_bytes = 0  # bytes of the log's files, roughly (grows with each write)
        self._compactions = 0
        self._fsync_failed = False
        self._room = DiskRoom(self._data_dir, config.store_reserve_bytes, files, self._disk)

    # -- lifecycle -------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[Store] = trio.TASK_STATUS_IGNORED) -> None:
        """Lock the data dir, replay the log, report ready; commit until the writes end."""
        lock_fd = await trio.to_thread.run_sync(lock_data_dir, self._data_dir)
        try:
            started = time.perf_counter()
            replayed = await trio.to_thread.run_sync(
                _replay, self._data_dir, self._config.transcript_status()
            )
            self._index, self._report, self._pending = (
                replayed.index,
                replayed.report,
                replayed.pending,
            )
            report = replayed.report
            logger.info(
                "replayed %d records (%d chunks) from %d segments in %.2f s",
                report.records,
                len(self._index),
                report.segments,
                time.perf_counter() - started,
            )
            log = self._log = LogWriter(
                self._data_dir,
                next_seq=report.last_seq + 1,
                segment_max_bytes=self._config.segment_max_bytes,
                proven_seq=report.durable_seq,
                files=self._files,
                manifest_interval_s=self._config.fsync_interval_s,
            )
            self._log_bytes = report.bytes
            # What replay read back is made durable and proven by a checkpoint, so that from
            # now on damage to it is reported as corruption, never taken for a torn write.
            await trio.to_thread.run_sync(_prove, log, limiter=self._disk)
            await self._room.hold()
            async with contextlib.AsyncExitStack() as stack:
                if self._events is not None:
                    await stack.enter_async_context(self._events)
                await stack.enter_async_context(self._receive)
                nursery = await stack.enter_async_context(trio.open_nursery())
                if self._config.fsync == "interval":
                    nursery.start_soon(self._sync_periodically)
                nursery.start_soon(self._compact_when_needed)
                task_status.started(self)
                await self._commit_all()
                nursery.cancel_scope.cancel()
        finally:
            self._send.close()
            with trio.CancelScope(shield=True):
                if self._log is not None:
                    log, self._log = self._log, None
                    # After a failed fsync, no retry: it could report success for lost data.
                    sync = not self._fsync_failed
                    await trio.to_thread.run_sync(_close_log, log, sync, limiter=self._disk)
                os.close(lock_fd)

    # -- the committer ---------------------------------------------------------------------

    async def _commit_all(self) -> None:
        """Group commit: take a batch of writes, write it, fsync once, answer every write."""
        while (batch := await self._next_batch()) is not None:
            async with self._commit_lock:
                events, answers = await self._commit(batch)
            # Events before answers: by the time a writer hears "stored", the fan-out has its
            # event (a client that sends "finalize" after its ack finds the chunk known).
            if self._events is not None:
                for event in events:
                    try:  # at once while there is room: no scheduler trip per chunk
                        self._events.send_nowait(event)
                    except trio.WouldBlock:
                        await self._events.send(event)
            for reply, value in answers:
                reply.set(value)
            if self._compaction_due():
                self._compact_wanted.set()

    async def _commit(self, batch: list[Write]) -> tuple[list[Committed], list[tuple[Reply, Any]]]:
        """Write *batch* durably and apply it to the index; the events it makes and the
        answers for its writers (sent by the caller, in that order). Refusals are answered
        here and then."""
        started = trio.current_time()
        metrics = self._metrics
        plans: list[tuple[Write, list[Planned] | Record]] = []
        reserved: dict[tuple[str, str], dict[int, dict[str, Any]]] = {}
        known = await self._known(batch)
        for write in batch:
            if write.reply.done:  # its sender gave up (a stage timeout): nothing to do
                continue
            try:
                plans.append((write, self._plan(write, reserved, known)))
            except ServiceError as exc:
                metrics.failed(exc.code)
                write.reply.fail(exc)
        records: list[Record] = []
        for _, plan in plans:
            if isinstance(plan, list):
                records += [(RecordType.CHUNK, p.meta, p.part.body) for p in plan if p.meta]
            else:
                records.append(plan)
        frames: list[Frame] = []
        if records:
            try:
                frames, grown = await self._write(records)
            except StoreError:
                for write, _ in plans:
                    write.reply.fail(InternalError("the log could not be made durable"))
                raise
            except OSError as exc:
                plans, frames, grown = await self._room.refuse(plans, exc, self._write, metrics)
                if not plans:
                    return [], []
                self._compact_wanted.set()  # deletes written: what gives their space back
            else:
                if await self._room.written(plans):
                    self._compact_wanted.set()
            self._log_bytes += grown
        events: list[Committed] = []
        answers: list[tuple[Reply, Any]] = []
        frame_iter = iter(frames)
        index, cache = self._index, self._cache
        for write, plan in plans:
            if isinstance(write, Job):
                assert isinstance(plan, list)
                results, stored = self._apply_job(write, plan, frame_iter)
                answers.append((write.reply, results))
                events += stored
            elif isinstance(write, Update):
                _, (segment, offset, size) = next(frame_iter)
                assert not isinstance(plan, list)
                place = Place(segment, offset, size - FRAME_HEADER_SIZE)
                meta = known.get(write.chunk_id)
                if meta is None or not index.apply_update(plan[1], place):
                    write.reply.fail(NotFound(f"chunk {write.chunk_id!r} was deleted"))
                    continue
                meta.update(write.fields)
                cache.put(write.chunk_id, meta)
                chunk = index.chunk_json(meta)
                answers.append((write.reply, chunk))
                events.append(ChunkUpdated(chunk))
            else:
                next(frame_iter)
                assert not isinstance(plan, list)
                removed = index.apply_tombstone(plan[1])
                for chunk_id, _ in removed:
                    cache.drop(chunk_id)
                    known.pop(chunk_id, None)
                answers.append((write.reply, [chunk_id for chunk_id, _ in removed]))
                events += deleted_events(removed)
        metrics.observe_stage("store", trio.current_time() - started)
        return events, answers

    async def _known(self, batch: list[Write]) -> dict[str, dict[str, Any]]:
        """The metadata planning needs, read from the log before it: the stored chunks at
        the seqs jobs name (their checksums) and the chunks updates change."""
        wanted: list[str] = []
        for write in batch:
            if isinstance(write, Job):
                wanted += self._index.collisions(write)
            elif isinstance(write, Update) and self._index.has(write.chunk_id):
                wanted.append(write.chunk_id)
        known: dict[str, dict[str, Any]] = {}
        for chunk_id in dict.fromkeys(wanted):
            with contextlib.suppress(NotFound):
                (known[chunk_id],) = await self.metas([chunk_id])
        return known

    def _plan(
        self,
        write: Write,
        reserved: dict[tuple[str, str], dict[int, dict[str, Any]]],
        known: dict[str, dict[str, Any]],
    ) -> list[Planned] | Record:
        """What *write* adds to the log (all or nothing), or the error that refuses it."""
        index = self._index
        if isinstance(write, Job):
            return index.plan_chunks(write, reserved, known)
        if isinstance(write, Update):
            if write.chunk_id not in known:
                msg = f"no chunk {write.chunk_id!r}"
                raise NotFound(msg)
            return RecordType.UPDATE, {"chunk_id": write.chunk_id, "set": write.fields}, None
        if write.session is not None:
            user_id, session_id = write.session
            chunk_ids = index.session_chunk_ids(user_id, session_id)
            if not chunk_ids:
                msg = f"user {user_id!r} has no session {session_id!r}"
                raise NotFound(msg)
        else:
            chunk_ids = index.present(write.chunk_ids)
            if not chunk_ids:
                msg = f"no chunk {', '.join(repr(c) for c in write.chunk_ids[:3])}"
                raise NotFound(msg)
        return RecordType.TOMBSTONE, {"chunk_ids": chunk_ids}, None

    def _apply_job(
        self, job: Job, plan: list[Planned], frames: Any
    ) -> tuple[list[Stored], list[Committed]]:
        events: list[Committed] = []
        results = []
        for planned in plan:
            if planned.meta is None:
                assert planned.existing is not None
                results.append(Stored(self._index.chunk_json(planned.existing), created=False))
                continue
            ref, (segment, offset, _) = next(frames)
            assert ref is not None
            header = 2 if ref.length < 1 << 8 else 3 if ref.length < 1 << 16 else 5
            length = ref.offset - header - offset - FRAME_HEADER_SIZE
            self._index.insert_meta(planned.meta, Place(segment, offset, length), ref.length)
            self._cache.put(planned.meta["chunk_id"], planned.meta)
            chunk = self._index.chunk_json(planned.meta)
            results.append(Stored(chunk, created=True))
            self._metrics.stored(len(planned.part.body))
            events.append(ChunkStored(chunk, job.source, planned.part.speech_pcm))
        return results, events

    async def _write(self, records: list[Record]) -> tuple[list[Frame], int]:
        """Append, flush and (in ``always`` mode) fsync, in a thread; the refs and growth."""
        if self._fsync_failed:
            msg = "an fsync of the log failed earlier; nothing more is written"
            raise StoreError(msg)
        log = self._log
        if log is None:
            msg = "the store is closed"
            raise StoreError(msg)
        sync = self._config.fsync == "always"
        try:
            out = await trio.to_thread.run_sync(_append, log, records, sync, limiter=self._disk)
        except FsyncFailed:
            self._fsync_failed = True
            raise
        self._written += 1
        if sync:
            self._synced = self._written
        return out

    async def _sync_periodically(self) -> None:
        while True:
            await trio.sleep(self._config.fsync_interval_s)
            log, written = self._log, self._written
            if log is not None and written != self._synced and not self._fsync_failed:
                try:
                    await trio.to_thread.run_sync(_sync_and_prove, log, limiter=self._disk)
                except FsyncFailed:
                    self._fsync_failed = True
                    raise
                self._synced = max(self._synced, written)

    # -- reads -----------------------------------------------------------------------------

    @property
    def health(self) -> str | None:
        """Why this store cannot take writes now (None: it can)."""
        if self._fsync_failed:
            return "an fsync of the log failed: nothing more is written"
        return None

    @property
    def position(self) -> None:
        """None: this log is this process's own; no read waits for another's writes."""
        return None

    async def wait_followed(self, position: int) -> bool:
        return True

    def stats(self) -> StoreStats:
        report = self._report
        return StoreStats(
            chunks=len(self._index),
            audio_bytes=self._index.audio_bytes,
            log_bytes=self._log_bytes,
            dead_bytes=self._index.dead_bytes,
            compactions=self._compactions,
            replayed_records=report.records if report is not None else None,
            snapshot=report.snapshot if report is not None else None,
        )

    async def read_audio(self, chunk_id: str) -> tuple[bytes, str]:
        """The exact bytes uploaded for *chunk_id* and their content type."""
        (meta,) = await self.metas([chunk_id])
        content_type = str(meta.get("content_type", "application/octet-stream"))
        for _ in range(3):  # a compaction may move the audio and remove its file meanwhile
            location = self._index.location(chunk_id)
            ref = BlobRef(location.record.segment, location.audio_offset, location.audio_length)
            try:
                data = await trio.to_thread.run_sync(read_blob, self._data_dir, ref)
            except FileNotFoundError:
                continue
            return data, content_type
        msg = f"chunk {chunk_id!r} was deleted"
        raise NotFound(msg)

    # -- compaction ------------------------------------------------------------------------

    def _compaction_due(self) -> bool:
        dead = self._index.dead_bytes
        return (
            dead >= self._config.compact_min_bytes
            and dead >= self._config.compact_dead_ratio * max(self._log_bytes, 1)
        )

    async def _compact_when_needed(self) -> None:
        while True:
            await self._compact_wanted.wait()
            self._compact_wanted = trio.Event()
            try:
                await self.compact()
            except StoreError:
                raise
            except OSError as exc:
                logger.warning("compaction failed, the log is unchanged: %s", exc)

    async def compact(self) -> Snapshot | None:
        """Fold the log written so far into a snapshot and remove what it replaced (see
        ``compact.py``); None when nothing was written since the last compaction.

        Runs beside uploads: only the seal waits for the commit in progress. Raises
        ``OSError`` when the snapshot cannot be written (the log is left as it was) and
        ``StoreError`` when the seal's fsync fails.
        """
        async with self._compact_lock:
            async with self._commit_lock:  # every chunk written before the seal is indexed
                log = self._log
                if log is None:
                    msg = "the store is closed"
                    raise StoreError(msg)
                try:
                    start = await trio.to_thread.run_sync(_seal, log, limiter=self._disk)
                except FsyncFailed:
                    self._fsync_failed = True
                    raise
                dead = self._index.dead_bytes
            snapshot = await trio.to_thread.run_sync(
                write_snapshot, self._data_dir, start, self._files
            )
            if snapshot is None:
                return None
            # Re-point the moved chunks a slice at a time, so a big snapshot never stalls
            # the event loop; reads meanwhile still find the old files (removed below).
            replaced, moved = set(snapshot.replaced), list(snapshot.moved.items())
            for at in range(0, len(moved), MOVE_SLICE):
                self._index.moved(dict(moved[at : at + MOVE_SLICE]), replaced)
                await trio.lowlevel.checkpoint()
            await trio.to_thread.run_sync(remove_replaced, self._data_dir, snapshot, self._files)
            self._index.dead_bytes = max(0, self._index.dead_bytes - dead)
            self._log_bytes = await trio.to_thread.run_sync(log_size, self._data_dir)
            self._compactions += 1
            logger.info(
                "compacted %d records into %s (%d chunks, %d bytes)",
                snapshot.folded_records,
                snapshot.name,
                snapshot.records,
                snapshot.bytes,
            )
            return snapshot


# -- what runs in threads (they return values; the trio side applies them) -------------------


def _replay(data_dir: Path, transcript_status: str) -> Replayed:
    loader = Loader(Index(transcript_status))  # the replay rules, into the index
    report = replay(data_dir, loader.add)
    for group_id, members in loader.groups.items():
        logger.warning(
            "dropped %d of an unacknowledged multipart upload %s cut by a crash",
            len(members),
            group_id,
        )
    loader.index.ids.merge()
    return Replayed(loader.index, report, loader.index.pending_transcripts())
