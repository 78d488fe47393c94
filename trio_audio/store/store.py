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
from typing import Any

import attrs
import trio

from ..config import Config
from ..errors import InternalError, NotFound, StoreError
from ..metrics import Metrics
from ..models import Reply
from .commit import apply_batch, plan_batch, records_of, wanted
from .compact import Snapshot
from .compactor import Compactor
from .durable import DurableLog
from .events import CommitChannels, Committed, Write
from .files import REAL_FILES, FileOps, lock_data_dir
from .index import Index
from .logio import Frame
from .reads import IndexReads, Loader, MetaCache, local_reader
from .record import BlobRef
from .replay import ReplayReport, read_blob, replay
from .room import DiskRoom
from .types import StoreStats
from .writer import LogWriter

logger = logging.getLogger("trio_audio.store")


@attrs.frozen
class Replayed:
    """What replay hands back from its thread."""

    index: Index
    report: ReplayReport
    pending: list[str]


class Store(CommitChannels, IndexReads):
    """The index plus the log. Build it in ``serve``, start ``run`` with ``nursery.start``.

    The committer's batches are planned and applied in ``commit.py``; the log's writes,
    fsyncs and close go through ``durable.py``; compactions through ``compactor.py``."""

    starts_slowly = False  # its replay is its start (the probes wait for it)

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
        disk = trio.CapacityLimiter(1)  # one thread at a time touches the log's files
        self._log = DurableLog(config, disk)
        self._send, self._receive = trio.open_memory_channel[Write](config.stage_queue)
        self._events: trio.MemorySendChannel[Committed] | None = None
        self._commit_lock = trio.Lock()  # a commit's write and indexing vs. compaction's seal
        self._compactor = Compactor(config, self._data_dir, files, self._log, self._commit_lock)
        self._room = DiskRoom(self._data_dir, config.store_reserve_bytes, files, disk)

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
            log = LogWriter(
                self._data_dir,
                next_seq=report.last_seq + 1,
                segment_max_bytes=self._config.segment_max_bytes,
                proven_seq=report.durable_seq,
                files=self._files,
                manifest_interval_s=self._config.fsync_interval_s,
            )
            await self._log.open(log, report.bytes)
            await self._room.hold()
            async with contextlib.AsyncExitStack() as stack:
                if self._events is not None:
                    await stack.enter_async_context(self._events)
                await stack.enter_async_context(self._receive)
                nursery = await stack.enter_async_context(trio.open_nursery())
                if self._config.fsync == "interval":
                    nursery.start_soon(self._log.sync_periodically)
                nursery.start_soon(self._compactor.run, self._index)
                task_status.started(self)
                await self._commit_all()
                nursery.cancel_scope.cancel()
        finally:
            self._send.close()
            with trio.CancelScope(shield=True):
                await self._log.close()
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
            if self._compactor.due(self._index):
                self._compactor.want()

    async def _commit(self, batch: list[Write]) -> tuple[list[Committed], list[tuple[Reply, Any]]]:
        """Write *batch* durably and apply it to the index; the events it makes and the
        answers for its writers (sent by the caller, in that order). Refusals are answered
        here and then."""
        started = trio.current_time()
        metrics = self._metrics
        known = await self._known(batch)
        plans = plan_batch(self._index, batch, known, metrics)
        records = records_of(plans)
        frames: list[Frame] = []
        if records:
            try:
                frames, _ = await self._log.write(records)
            except StoreError:
                for write, _ in plans:
                    write.reply.fail(InternalError("the log could not be made durable"))
                raise
            except OSError as exc:
                plans, frames, _ = await self._room.refuse(plans, exc, self._log.write, metrics)
                if not plans:
                    return [], []
                self._compactor.want()  # deletes written: what gives their space back
            else:
                if await self._room.written(plans):
                    self._compactor.want()
        events, answers = apply_batch(self._index, self._cache, metrics, plans, frames, known)
        metrics.observe_stage("store", trio.current_time() - started)
        return events, answers

    async def _known(self, batch: list[Write]) -> dict[str, dict[str, Any]]:
        """The metadata planning needs, read from the log before it (see ``commit.wanted``)."""
        known: dict[str, dict[str, Any]] = {}
        for chunk_id in wanted(self._index, batch):
            with contextlib.suppress(NotFound):
                (known[chunk_id],) = await self.metas([chunk_id])
        return known

    # -- reads -----------------------------------------------------------------------------

    @property
    def health(self) -> str | None:
        """Why this store cannot take writes now (None: it can)."""
        return self._log.health

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
            log_bytes=self._log.bytes,
            dead_bytes=self._index.dead_bytes,
            compactions=self._compactor.count,
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

    async def compact(self) -> Snapshot | None:
        """Fold the log written so far into a snapshot and remove what it replaced (see
        ``Compactor.compact``); None when nothing was written since the last compaction."""
        return await self._compactor.compact(self._index)


# -- what runs in threads (they return values; the trio side applies them) -------------------


def _replay(data_dir: Path, transcript_status: str) -> Replayed:
    loader = Loader(Index(transcript_status))  # the replay rules, into the index
    report = replay(data_dir, loader.add, routes=True, on_route=loader.add_route)
    for group_id, members in loader.groups.items():
        logger.warning(
            "dropped %d of an unacknowledged multipart upload %s cut by a crash",
            len(members),
            group_id,
        )
    loader.index.ids.merge()
    return Replayed(loader.index, report, loader.index.pending_transcripts())
