"""The store: an in-memory index over the append-only log, and its one writer task.

Memory holds, per chunk, its metadata packed as msgpack and where its audio lies in the log
(``BlobRef``); audio bytes stay on disk, so memory grows with metadata only. Indexes map
``user_id -> session_id -> seq -> chunk_id``.

Resource handling: ``run`` locks the data dir, replays the log into the index, opens the log
writer and reports ready; it holds the lock until it is cancelled or the writer has drained,
then closes the log (fsynced) and unlocks.

Error handling: a seq already stored with other bytes fails that job with ``SeqConflict``;
a write that fails (disk full, I/O error) fails every job of its batch with
``InsufficientStorage`` and leaves the log at its last good record; an fsync that fails
stops the process, because a retried fsync can report success for data it lost.
"""

from __future__ import annotations

import bisect
import contextlib
import errno
import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import msgpack
import trio

from ..config import Config
from ..errors import (
    InsufficientStorage,
    InternalError,
    NotFound,
    Overloaded,
    SeqConflict,
    ServiceError,
    StoreError,
)
from ..hub import Hub
from ..metrics import Metrics
from ..models import Job, Part, Reply, new_chunk_id
from .compact import Fold, Snapshot, log_size, remove_replaced, write_snapshot
from .files import REAL_FILES, FileOps, lock_data_dir
from .record import BlobRef, RecordType
from .replay import ReplayReport, read_blob, replay
from .writer import LogWriter

logger = logging.getLogger("trio_audio.store")

Write = tuple[RecordType, dict[str, Any], bytes | None]  # one record for the log writer


@attrs.define(eq=False)
class Entry:
    """What memory keeps of one chunk."""

    packed: bytes  # msgpack of the chunk's metadata
    blob: BlobRef
    user_id: str
    session_id: str
    seq: int
    duration_ms: float

    def meta(self) -> dict[str, Any]:
        value: dict[str, Any] = msgpack.unpackb(self.packed)
        return value


@attrs.define(eq=False)
class SessionIndex:
    """The chunks of one session in seq order, with where each starts on its timeline.

    ``starts[i]`` is the summed duration of the chunks before ``seqs[i]``, kept up to date as
    chunks arrive (appending is O(1); a chunk that arrives out of order shifts the ones after
    it). A chunk's ``offset_ms`` is read from here, so it always agrees with the session as
    stored, whatever order the pipeline committed its chunks in.
    """

    by_seq: dict[int, str] = attrs.field(factory=dict)
    seqs: list[int] = attrs.field(factory=list)
    durations: list[float] = attrs.field(factory=list)
    starts: list[float] = attrs.field(factory=list)
    duration_ms: float = 0.0
    transcript: dict[str, str] | None = None  # the session's, cached until a chunk changes

    def add(self, seq: int, chunk_id: str, duration_ms: float) -> None:
        self.transcript = None
        if seq in self.by_seq:
            self.remove(seq)
        i = bisect.bisect_left(self.seqs, seq)
        start = self.starts[i - 1] + self.durations[i - 1] if i else 0.0
        self.seqs.insert(i, seq)
        self.durations.insert(i, duration_ms)
        self.starts.insert(i, start)
        for j in range(i + 1, len(self.starts)):
            self.starts[j] += duration_ms
        self.by_seq[seq] = chunk_id
        self.duration_ms += duration_ms

    def remove(self, seq: int) -> None:
        self.transcript = None
        i = bisect.bisect_left(self.seqs, seq)
        if i == len(self.seqs) or self.seqs[i] != seq:
            return
        duration = self.durations[i]
        del self.seqs[i], self.durations[i], self.starts[i]
        for j in range(i, len(self.starts)):
            self.starts[j] -= duration
        del self.by_seq[seq]
        self.duration_ms -= duration

    def offset_ms(self, seq: int) -> float:
        """Where the chunk *seq* starts (or would start) on the session's timeline."""
        i = bisect.bisect_left(self.seqs, seq)  # the chunks before it are seqs[:i]
        return self.starts[i - 1] + self.durations[i - 1] if i else 0.0

    @property
    def next_seq(self) -> int:
        return self.seqs[-1] + 1 if self.seqs else 0

    def after(self, seq: int | None) -> Iterator[tuple[int, str]]:
        """(seq, chunk_id) pairs in order, starting after *seq* (from the start if None)."""
        start = 0 if seq is None else bisect.bisect_right(self.seqs, seq)
        for s in self.seqs[start:]:
            yield s, self.by_seq[s]


@attrs.frozen
class Stored:
    """The outcome of committing one part: its chunk JSON and whether it is new."""

    chunk: dict[str, Any]
    created: bool


class Store:
    """The index plus the log. Build it in ``main``, start ``run`` with ``nursery.start``."""

    def __init__(
        self, config: Config, hub: Hub | None = None, *, files: FileOps = REAL_FILES
    ) -> None:
        self.config = config
        self.hub = hub if hub is not None else Hub(config.ws_queue)
        self.data_dir = Path(config.data_dir)
        self.chunks: dict[str, Entry] = {}
        self.users: dict[str, dict[str, SessionIndex]] = {}
        self.report: ReplayReport | None = None
        self.audio_bytes = 0
        self._log: LogWriter | None = None
        self._disk = trio.CapacityLimiter(1)
        self._drained = trio.Event()
        self._dirty_since: float | None = None
        self._mutations: list[tuple[RecordType, dict[str, Any], Reply]] = []
        self._mutating = False
        self._files = files  # the file layer under the log (tests put fault doubles here)
        self._commit_lock = trio.Lock()  # a commit's write and indexing vs. compaction's seal
        self._compact_lock = trio.Lock()
        self._compact_wanted = trio.Event()
        self.log_bytes = 0  # bytes of the log's files, roughly (grows with each write)
        self.dead_bytes = 0  # of which deleted audio and metadata, since the last compaction
        self.compactions = 0
        self._fsync_failed = False
        self._fatal: StoreError | None = None  # set: run() raises it and the service stops
        # New chunks start "pending" when a speech engine will transcribe them.
        self.transcript_status = "disabled" if config.asr_engine == "none" else "pending"
        # Called (never awaited) with each newly stored chunk's JSON and its part: the
        # transcriber's hand-off. A hook must not block; the writer answers jobs first.
        self.on_stored: list[Callable[[dict[str, Any], Part], None]] = []

    # -- lifecycle -------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[Store] = trio.TASK_STATUS_IGNORED) -> None:
        """Lock the data dir, replay the log, report ready; close the log when drained."""
        lock_fd = await trio.to_thread.run_sync(lock_data_dir, self.data_dir)
        try:
            started = time.perf_counter()
            self.report = await trio.to_thread.run_sync(self._replay)
            logger.info(
                "replayed %d records (%d chunks) from %d segments in %.2f s",
                self.report.records,
                len(self.chunks),
                self.report.segments,
                time.perf_counter() - started,
            )
            self._log = LogWriter(
                self.data_dir,
                next_seq=self.report.last_seq + 1,
                segment_max_bytes=self.config.segment_max_bytes,
                proven_seq=self.report.durable_seq,
                files=self._files,
                manifest_interval_s=self.config.fsync_interval_s,
            )
            self.log_bytes = self.report.bytes
            # What replay read back is made durable and proven by a checkpoint, so that from
            # now on damage to it is reported as corruption, never taken for a torn write.
            await trio.to_thread.run_sync(self._prove, limiter=self._disk)
            task_status.started(self)
            await self._drained.wait()
            if self._fatal is not None:
                raise self._fatal
        finally:
            with trio.CancelScope(shield=True):
                if self._log is not None:
                    log, self._log = self._log, None
                    # After a failed fsync, no retry: it could report success for lost data.
                    sync = not self._fsync_failed
                    await trio.to_thread.run_sync(_close_log, log, sync, limiter=self._disk)
                os.close(lock_fd)

    def _replay(self) -> ReplayReport:
        fold = Fold()  # the replay rules (updates, tombstones, whole multipart groups)
        report = replay(self.data_dir, fold.add)
        for group_id, members in fold.groups.items():
            logger.warning(
                "dropped %d of an unacknowledged multipart upload %s cut by a crash",
                len(members),
                group_id,
            )
        for chunk_id, live in fold.live.items():
            entry = Entry(
                live.packed, live.blob, live.user_id, live.session_id, live.seq, live.duration_ms
            )
            self._insert(chunk_id, entry)
        return report

    def _prove(self) -> None:
        assert self._log is not None
        try:
            self._log.checkpoint()
        except StoreError:
            raise
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                msg = f"the log could not be made durable: {exc}"
                raise StoreError(msg) from exc
            logger.warning("no room to write a checkpoint (%s); it goes with the next write", exc)

    def _index(self, meta: dict[str, Any], blob: BlobRef) -> Entry:
        chunk_id = meta["chunk_id"]
        entry = Entry(
            packed=msgpack.packb(meta),
            blob=blob,
            user_id=meta["user_id"],
            session_id=meta["session_id"],
            seq=meta["seq"],
            duration_ms=float(meta["audio"]["duration_ms"]),
        )
        return self._insert(chunk_id, entry)

    def _insert(self, chunk_id: str, entry: Entry) -> Entry:
        self.chunks[chunk_id] = entry
        sessions = self.users.setdefault(entry.user_id, {})
        sessions.setdefault(entry.session_id, SessionIndex()).add(
            entry.seq, chunk_id, entry.duration_ms
        )
        self.audio_bytes += entry.blob.length
        return entry

    def _apply_update(self, patch: dict[str, Any]) -> dict[str, Any] | None:
        """Replace the top-level fields in ``patch["set"]`` of the chunk it names."""
        entry = self.chunks.get(patch["chunk_id"])
        if entry is None:
            return None  # deleted since
        meta = entry.meta()
        meta.update(patch["set"])
        self.dead_bytes += len(entry.packed)
        entry.packed = msgpack.packb(meta)
        self.users[entry.user_id][entry.session_id].transcript = None
        return meta

    def session_transcript(self, index: SessionIndex) -> dict[str, str]:
        """The session's transcript so far: the text of its done chunks in seq order.

        Computed from every chunk once, then kept until one of them changes, so paging
        through a long session does not read the whole session for each page."""
        if index.transcript is None:
            statuses = set()
            texts = []
            for _, chunk_id in index.after(None):
                transcript = self.chunks[chunk_id].meta()["transcript"]
                statuses.add(transcript["status"])
                if transcript["status"] == "done" and transcript["text"]:
                    texts.append(transcript["text"])
            if "pending" in statuses:
                status = "pending"
            elif statuses == {"disabled"}:
                status = "disabled"
            else:
                status = "done"
            index.transcript = {"status": status, "text": " ".join(texts)}
        return index.transcript

    def _apply_tombstone(self, tombstone: dict[str, Any]) -> list[str]:
        """Remove the chunks a TOMBSTONE names from the index; the ids that were there."""
        removed = []
        for chunk_id in tombstone["chunk_ids"]:
            entry = self.chunks.pop(chunk_id, None)
            if entry is None:
                continue
            removed.append(chunk_id)
            sessions = self.users.get(entry.user_id, {})
            session = sessions.get(entry.session_id)
            if session is not None and session.by_seq.get(entry.seq) == chunk_id:
                session.remove(entry.seq)
                if not session.seqs:
                    del sessions[entry.session_id]
                    if not sessions:
                        del self.users[entry.user_id]
            self.audio_bytes -= entry.blob.length
            self.dead_bytes += entry.blob.length + len(entry.packed)
        return removed

    # -- deletes and compaction ------------------------------------------------------------

    async def delete_chunk(self, chunk_id: str) -> None:
        """Durably delete one chunk (a TOMBSTONE record); ``NotFound`` if it is not stored.
        Its space comes back at the next compaction."""
        if chunk_id not in self.chunks:
            msg = f"no chunk {chunk_id!r}"
            raise NotFound(msg)
        if not await self._delete([chunk_id]):
            msg = f"chunk {chunk_id!r} was deleted"
            raise NotFound(msg)

    async def delete_session(self, user_id: str, session_id: str) -> list[str]:
        """Durably delete every chunk of a session; the ids deleted. ``NotFound`` if the
        session has no chunks."""
        session = self.users.get(user_id, {}).get(session_id)
        if session is None:
            msg = f"user {user_id!r} has no session {session_id!r}"
            raise NotFound(msg)
        return await self._delete([chunk_id for _, chunk_id in session.after(None)])

    async def _delete(self, chunk_ids: list[str]) -> list[str]:
        tombstone = {"chunk_ids": chunk_ids}
        await self._mutate(RecordType.TOMBSTONE, tombstone)
        removed = self._apply_tombstone(tombstone)
        if self._compaction_due():
            self._compact_wanted.set()
        return removed

    def _compaction_due(self) -> bool:
        return (
            self.dead_bytes >= self.config.compact_min_bytes
            and self.dead_bytes >= self.config.compact_dead_ratio * max(self.log_bytes, 1)
        )

    async def compact(self) -> Snapshot | None:
        """Fold the log written so far into a snapshot and remove what it replaced (see
        ``compact.py``); None when nothing was written since the last compaction.

        Runs beside uploads: only the seal waits for the commit in progress. Raises
        ``OSError`` when the snapshot cannot be written (the log is left as it was) and
        ``StoreError`` when the seal's fsync fails.
        """
        async with self._compact_lock:
            async with self._commit_lock:  # every chunk written before the seal is indexed
                if self._log is None:
                    msg = "the store is closed"
                    raise StoreError(msg)
                start = await trio.to_thread.run_sync(self._seal, self._log, limiter=self._disk)
                dead = self.dead_bytes
            snapshot = await trio.to_thread.run_sync(
                write_snapshot, self.data_dir, start, self._files
            )
            if snapshot is None:
                return None
            replaced = set(snapshot.replaced)
            for chunk_id, ref in snapshot.moved.items():
                entry = self.chunks.get(chunk_id)
                if entry is not None and entry.blob.segment in replaced:
                    entry.blob = ref
            await trio.to_thread.run_sync(remove_replaced, self.data_dir, snapshot, self._files)
            self.dead_bytes = max(0, self.dead_bytes - dead)
            self.log_bytes = await trio.to_thread.run_sync(log_size, self.data_dir)
            self.compactions += 1
            logger.info(
                "compacted %d records into %s (%d chunks, %d bytes)",
                snapshot.folded_records,
                snapshot.name,
                snapshot.records,
                snapshot.bytes,
            )
            return snapshot

    def _seal(self, log: LogWriter) -> int:
        try:
            return log.seal()
        except OSError as exc:
            raise self._fsync_failure(exc) from exc

    def _fsync_failure(self, exc: OSError) -> StoreError:
        """A failed fsync may have dropped dirty pages, and a retried one can report success
        for data that is gone: never write again; the process stops, and replay on restart
        tells what is durable."""
        self._fsync_failed = True
        logger.critical("fsync of the log failed (%s); stopping the service", exc)
        return StoreError(f"fsync of the log failed: {exc}")

    def _die(self, error: StoreError) -> None:
        """Stop the service with *error* (raised by ``run``), whoever hit it."""
        if self._fatal is None:
            self._fatal = error
        self._drained.set()

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

    # -- updates -----------------------------------------------------------------------------

    async def update(self, chunk_id: str, fields: dict[str, Any]) -> dict[str, Any]:
        """Durably replace top-level fields of a stored chunk; its new chunk JSON.

        Written as an UPDATE record and replayed on restart. Concurrent calls are committed
        together (one write, one fsync). Raises ``NotFound`` for an unknown chunk and
        ``InsufficientStorage`` when the log cannot be written.
        """
        if chunk_id not in self.chunks:
            msg = f"no chunk {chunk_id!r}"
            raise NotFound(msg)
        patch = {"chunk_id": chunk_id, "set": fields}
        await self._mutate(RecordType.UPDATE, patch)
        meta = self._apply_update(patch)
        if meta is None:
            msg = f"chunk {chunk_id!r} was deleted"
            raise NotFound(msg)
        return self.chunk_json(meta)

    async def _mutate(self, type_: RecordType, meta: dict[str, Any]) -> None:
        """Append one metadata record, durably, committed in a group with concurrent ones."""
        reply = Reply()
        self._mutations.append((type_, meta, reply))
        if not self._mutating:
            self._mutating = True
            try:
                while self._mutations:
                    batch, self._mutations = self._mutations, []
                    try:
                        records: list[Write] = [(t, m, None) for t, m, _ in batch]
                        await trio.to_thread.run_sync(self._write, records, limiter=self._disk)
                    except StoreError as exc:
                        for _, _, waiting in batch:
                            waiting.fail(InternalError("the log could not be made durable"))
                        self._die(exc)
                        raise
                    except OSError as exc:
                        for _, _, waiting in batch:
                            waiting.fail(write_error(exc))
                        continue
                    except BaseException:  # never leave a caller of this batch waiting
                        for _, _, waiting in batch:
                            waiting.fail(InternalError("the store failed to write"))
                        raise
                    for _, _, waiting in batch:
                        waiting.set(None)
            finally:
                self._mutating = False
        await reply.wait()

    # -- reads -----------------------------------------------------------------------------

    def chunk_json(self, meta: dict[str, Any]) -> dict[str, Any]:
        """The chunk JSON a client sees: the record, less the store's own fields, plus
        ``offset_ms``, where the chunk starts on its session's timeline as stored now."""
        chunk = _chunk_json(meta)
        session = self.users.get(meta["user_id"], {}).get(meta["session_id"])
        offset = session.offset_ms(meta["seq"]) if session is not None else 0.0
        chunk["offset_ms"] = round(offset, 3)
        return chunk

    def get(self, chunk_id: str) -> dict[str, Any]:
        entry = self.chunks.get(chunk_id)
        if entry is None:
            msg = f"no chunk {chunk_id!r}"
            raise NotFound(msg)
        return self.chunk_json(entry.meta())

    def lookup(self, user_id: str, session_id: str, seq: int) -> Entry | None:
        session = self.users.get(user_id, {}).get(session_id)
        if session is None:
            return None
        chunk_id = session.by_seq.get(seq)
        return None if chunk_id is None else self.chunks[chunk_id]

    def sessions(self, user_id: str) -> dict[str, SessionIndex]:
        return self.users.get(user_id, {})

    async def read_audio(self, chunk_id: str) -> tuple[bytes, str]:
        """The exact bytes uploaded for *chunk_id* and their content type."""
        entry = self.chunks.get(chunk_id)
        if entry is None:
            msg = f"no chunk {chunk_id!r}"
            raise NotFound(msg)
        try:
            data = await trio.to_thread.run_sync(read_blob, self.data_dir, entry.blob)
        except FileNotFoundError:
            # A compaction moved the audio and removed the file meanwhile: look again.
            moved = self.chunks.get(chunk_id)
            if moved is None or moved.blob == entry.blob:
                msg = f"chunk {chunk_id!r} was deleted"
                raise NotFound(msg) from None
            entry = moved
            data = await trio.to_thread.run_sync(read_blob, self.data_dir, entry.blob)
        return data, str(entry.meta().get("content_type", "application/octet-stream"))

    # -- the writer ------------------------------------------------------------------------

    async def writer(self, receive: trio.MemoryReceiveChannel[Job], metrics: Metrics) -> None:
        """Group commit: take a batch of jobs, write it, fsync once, then answer every job.

        Runs until *receive* is closed and empty, then lets ``run`` close the log.
        """
        try:
            async with receive, trio.open_nursery() as nursery:
                if self.config.fsync == "interval":
                    nursery.start_soon(self._sync_periodically)
                nursery.start_soon(self._compact_when_needed)
                async for first in receive:
                    batch = [first]
                    wait = self.config.commit_wait_ms / 1000
                    # Fill the batch for up to commit_wait_ms; the stream may end meanwhile.
                    with (
                        trio.move_on_after(wait),
                        contextlib.suppress(trio.EndOfChannel, trio.WouldBlock),
                    ):
                        while len(batch) < self.config.commit_batch_max:
                            batch.append(
                                await receive.receive() if wait > 0 else receive.receive_nowait()
                            )
                    async with self._commit_lock:
                        await self._commit(batch, metrics)
                nursery.cancel_scope.cancel()
        finally:
            self._drained.set()

    async def _sync_periodically(self) -> None:
        while True:
            await trio.sleep(self.config.fsync_interval_s)
            if self._dirty_since is not None and self._log is not None:
                await trio.to_thread.run_sync(self._sync, True, limiter=self._disk)

    def _sync(self, prove: bool = False) -> None:
        assert self._log is not None
        try:
            self._log.sync()
        except OSError as exc:
            raise self._fsync_failure(exc) from exc
        self._dirty_since = None
        if prove:  # when idle, say so in the log too (a busy log's next batch carries it)
            self._prove()

    async def _commit(self, batch: list[Job], metrics: Metrics) -> None:
        started = trio.current_time()
        plans: list[tuple[Job, list[tuple[Part, dict[str, Any] | None]]]] = []
        reserved: dict[tuple[str, str], dict[int, dict[str, Any]]] = {}
        for job in batch:
            if job.reply.done:
                continue
            try:
                plans.append((job, self._plan(job, reserved)))
            except ServiceError as exc:
                metrics.failed(exc.code)
                job.reply.fail(exc)
        writes: list[Write] = [
            (RecordType.CHUNK, meta, part.body)
            for _, parts in plans
            for part, meta in parts
            if meta
        ]
        refs: list[BlobRef | None] = []
        if writes:
            try:
                refs = await trio.to_thread.run_sync(self._write, writes, limiter=self._disk)
            except StoreError:
                for job, _ in plans:
                    job.reply.fail(InternalError("the log could not be made durable"))
                raise
            except OSError as exc:
                error = write_error(exc)
                logger.exception("log write failed, %d jobs refused", len(plans))
                for job, _ in plans:
                    metrics.failed(error.code)
                    job.reply.fail(error)
                return
        ref_iter = iter(refs)
        for job, parts in plans:
            results = []
            for part, meta in parts:
                if meta is None:
                    assert part.existing is not None
                    results.append(Stored(self.chunk_json(part.existing), created=False))
                    continue
                ref = next(ref_iter)
                assert ref is not None
                self._index(meta, ref)
                results.append(Stored(self.chunk_json(meta), created=True))
                metrics.stored(len(part.body))
            job.reply.set(results)
            for (part, _), result in zip(parts, results, strict=True):
                if result.created:  # to the session's live watchers, not back to the sender
                    message = {"type": "metadata", **result.chunk}
                    self.hub.publish(job.user_id, job.session_id, message, origin=job.origin)
                    for hook in self.on_stored:
                        hook(result.chunk, part)
        metrics.observe_stage("store", trio.current_time() - started)

    def _plan(
        self, job: Job, reserved: dict[tuple[str, str], dict[int, dict[str, Any]]]
    ) -> list[tuple[Part, dict[str, Any] | None]]:
        """Give each part its seq and record, or find it already stored; all or nothing."""
        key = (job.user_id, job.session_id)
        taken = reserved.setdefault(key, {})
        session = self.users.get(job.user_id, {}).get(job.session_id)
        next_seq = max(session.next_seq if session else 0, max(taken, default=-1) + 1)
        planned: list[tuple[Part, dict[str, Any] | None]] = []
        claims: dict[int, dict[str, Any]] = {}
        for part in job.parts:
            seq = part.seq
            if seq is None:
                seq = max(next_seq, max(claims, default=-1) + 1)
            stored = self.lookup(job.user_id, job.session_id, seq)
            if stored is not None:
                existing = stored.meta()
                if existing["checksum"] != part.checksum:
                    msg = (
                        f"seq {seq} of session {job.session_id!r} is already stored "
                        f"as chunk {existing['chunk_id']} with other bytes"
                    )
                    raise SeqConflict(msg)
                part.existing = existing
                planned.append((part, None))
                continue
            twin = taken.get(seq) or claims.get(seq)
            if twin is not None:  # the same seq earlier in this batch: same bytes, same chunk
                if twin["checksum"] != part.checksum:
                    msg = f"seq {seq} of session {job.session_id!r} is sent with other bytes"
                    raise SeqConflict(msg)
                part.existing = twin
                planned.append((part, None))
                continue
            if part.audio_info is None:  # validate found it stored; it was deleted since
                msg = f"seq {seq} was deleted while this retry was in flight; send it again"
                raise Overloaded(msg)
            meta = claims[seq] = build_meta(job, part, seq, self.transcript_status)
            planned.append((part, meta))
        new = [meta for _, meta in planned if meta is not None]
        if len(new) > 1:
            # Replay indexes a group only when all of it made it to disk: all or none.
            group = new_chunk_id()
            for i, meta in enumerate(new):
                meta["group"] = [group, i, len(new)]
        taken.update(claims)
        return planned

    def _write(self, writes: list[Write]) -> list[BlobRef | None]:
        """Append, flush and (in ``always`` mode) fsync; runs in a thread under ``_disk``."""
        if self._fsync_failed:
            msg = "an fsync of the log failed earlier; nothing more is written"
            raise StoreError(msg)
        log = self._log
        if log is None:
            msg = "the store is closed"
            raise StoreError(msg)
        refs = [log.append(type_, meta, audio)[1] for type_, meta, audio in writes]
        before = log.bytes_written
        log.flush()
        self.log_bytes += log.bytes_written - before
        if self._dirty_since is None:
            self._dirty_since = time.monotonic()
        if self.config.fsync == "always":
            self._sync()
        return refs


def write_error(exc: OSError) -> ServiceError:
    """How a failed log write is reported: 507 when the disk is full, else 500."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return InsufficientStorage(f"the store cannot write: {exc.strerror}")
    return InternalError(f"the store failed to write: {exc}")


def _close_log(log: LogWriter, sync: bool = True) -> None:
    try:
        if sync:
            log.checkpoint()  # flush, fsync, and prove it: a clean close leaves nothing unproven
    finally:
        log.close()


def build_meta(
    job: Job, part: Part, seq: int, transcript_status: str = "disabled"
) -> dict[str, Any]:
    """The durable record of one chunk: its chunk JSON plus what the store needs."""
    assert part.audio_info is not None and part.analysis is not None
    return {
        "chunk_id": new_chunk_id(),
        "user_id": job.user_id,
        "session_id": job.session_id,
        "seq": seq,
        "received_at": job.received_at,
        "timestamp": part.timestamp,
        "size_bytes": len(part.body),
        "checksum": part.checksum,
        "content_type": part.content_type,
        "audio": part.audio_info,
        **part.analysis,
        "transcript": {"status": transcript_status, "text": "", "words": []},
        "processing_ms": {k: round(v * 1000, 3) for k, v in part.timings.items()},
    }


def _chunk_json(meta: dict[str, Any]) -> dict[str, Any]:
    """The chunk JSON a client sees (the stored record less the store's own fields)."""
    return {k: v for k, v in meta.items() if k != "group"}
