"""The log writer: appends framed records to the newest segment, rolls to a new one, and
makes them durable. Synchronous (no trio): the store's committer calls it through
``trio.to_thread.run_sync``, one thread at a time.

``LogWriter.append`` frames a record into memory and returns its seq and ``BlobRef``;
``flush`` writes every buffered frame with ``pwritev`` (looping on short writes) and, if the
write fails, truncates the file back to the last good record and re-raises, so a failed
batch leaves no partial record and its seqs are given out again. ``sync`` makes the written
records durable (``fdatasync``; a new segment's directory entry was fsync'd when ``flush``
created it); ``checkpoint`` syncs and proves it. After a completed fsync the writer
rewrites the manifest (``files.write_manifest``: newest segment, its fsync'd end, the durable
seq) at most every *manifest_interval_s*, at the first sync after it created a segment, and
at every ``checkpoint`` (so at start-up and a clean close): replay refuses a log that falls
short of it. Its segment files (``segments.py``) keep to the orders ``replay`` relies on:
a segment is complete and ``fdatasync``'d before the next one is created, a new segment's
header is ``fdatasync``'d (and the directory fsync'd) before any record goes into it, and a
failed write's truncation is ``fdatasync``'d before anything else is written. Every call
that changes a file goes through ``files.FileOps``.
"""

from __future__ import annotations

import logging
import secrets
import time
from pathlib import Path
from typing import Any, Final

from ..errors import StoreError
from .files import (
    REAL_FILES,
    FileOps,
    list_segments,
    log_dir,
    make_dirs,
    mark_log,
    segment_name,
    write_manifest,
)
from .record import (
    FIRST_SEQ,
    SEGMENT_HEADER_SIZE,
    BlobRef,
    Manifest,
    RecordType,
    build_checkpoint,
    build_frame,
    pack_manifest,
    pack_segment_header,
)
from .segments import Pending, SegmentFiles

logger = logging.getLogger("trio_audio.store")

DEFAULT_SEGMENT_MAX_BYTES: Final = 256 * 1024 * 1024
DEFAULT_MANIFEST_INTERVAL_S: Final = 1.0  # as Config.fsync_interval_s


class LogWriter:
    """Appends records to the newest segment, rolling to a new one past the size limit.

    Open it after replay with ``next_seq=report.last_seq + 1`` and
    ``proven_seq=report.durable_seq``. Not thread-safe: one caller (the store's writer, one
    thread at a time) uses it. *files* is the file layer (the real one by default).
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        next_seq: int,
        segment_max_bytes: int = DEFAULT_SEGMENT_MAX_BYTES,
        proven_seq: int = 0,
        files: FileOps = REAL_FILES,
        manifest_interval_s: float = DEFAULT_MANIFEST_INTERVAL_S,
    ) -> None:
        if next_seq < FIRST_SEQ:
            msg = f"next_seq must be at least {FIRST_SEQ}, got {next_seq}"
            raise ValueError(msg)
        if segment_max_bytes <= SEGMENT_HEADER_SIZE:
            msg = f"segment_max_bytes must exceed {SEGMENT_HEADER_SIZE}"
            raise ValueError(msg)
        self._files = files
        self._dir = log_dir(data_dir)
        self._segment_max = segment_max_bytes
        self._segments = SegmentFiles(files, self._dir)
        self._pending: list[Pending] = []
        self._next_seq = next_seq  # given out, buffered frames included
        self.last_frame: tuple[str, int, int] = ("", 0, 0)  # segment, offset, size
        self._written_seq = next_seq  # after the last record written to a file
        self._durable = 0  # the last seq a completed fsync covered
        self._proven = proven_seq  # the last seq a checkpoint written says was fsync'd
        self._proven_before = proven_seq  # ... before the pending batch
        self._bytes_written = 0
        self._closed = False
        self._manifest_interval = manifest_interval_s
        self._manifest_at: float | None = None  # when the manifest was last written
        make_dirs(self._dir)
        mark_log(data_dir, files)
        names = list_segments(data_dir)
        if names:
            self._segments.open_existing(names[-1], next_seq)

    @property
    def next_seq(self) -> int:
        """The seq the next appended record gets."""
        return self._next_seq

    @property
    def current_segment(self) -> str | None:
        """The segment file written to (None before the first flush into an empty log)."""
        return self._segments.name

    @property
    def bytes_written(self) -> int:
        """Bytes this writer has written to segment files (headers included)."""
        return self._bytes_written

    @property
    def pending_records(self) -> int:
        """Records appended but not yet flushed."""
        return self._next_seq - self._written_seq

    @property
    def durable_seq(self) -> int:
        """The last seq a completed fsync of this writer covered."""
        return self._durable

    def append(
        self, type: RecordType, meta: dict[str, Any] | bytes, audio: bytes | None = None
    ) -> tuple[int, BlobRef | None]:
        """Frame a record into the batch; its ``BlobRef`` is valid once ``flush`` returned."""
        self._check_usable()
        type = RecordType(type)
        if type == RecordType.CHECKPOINT:
            msg = "checkpoints are written by the writer itself"
            raise ValueError(msg)
        if not self._pending:
            self._proven_before = self._proven
            if self._checkpoint_due():
                self._append_checkpoint()
        seq = self._next_seq
        tail = self._pending[-1] if self._pending else None
        segments = self._segments
        salt = tail.salt if tail else segments.salt
        frame = build_frame(salt, type, seq, meta, audio)
        size = sum(len(b) for b in frame)
        segment, end = (tail.segment, tail.end) if tail else (segments.name, segments.end)
        if segment is None or (end > SEGMENT_HEADER_SIZE and end + size > self._segment_max):
            salt = secrets.randbits(32)
            header = pack_segment_header(salt, seq)
            tail = Pending(segment_name(seq), salt, SEGMENT_HEADER_SIZE, header)
            self._pending.append(tail)
            frame = build_frame(salt, type, seq, meta, audio)
        elif tail is None:
            assert segments.name is not None
            tail = Pending(segments.name, segments.salt, segments.end, None)
            self._pending.append(tail)
        offset = tail.end
        tail.buffers.extend(frame)
        tail.nbytes += size
        self._next_seq = seq + 1
        self.last_frame = (tail.segment, offset, size)
        if type != RecordType.CHUNK:
            return seq, None
        assert audio is not None
        return seq, BlobRef(tail.segment, offset + size - len(audio), len(audio))

    def _checkpoint_due(self) -> bool:
        return self._segments.name is not None and self._durable > self._proven

    def _append_checkpoint(self) -> None:
        segments = self._segments
        assert segments.name is not None
        frame = build_checkpoint(segments.salt, self._durable)
        tail = Pending(segments.name, segments.salt, segments.end, None, [frame], len(frame))
        self._pending.append(tail)
        self._proven = self._durable

    def flush(self) -> None:
        """Write every buffered frame. On failure the log is left at its last good record,
        the batch is dropped (its seqs are given out again) and the error re-raised."""
        self._check_usable()
        if not self._pending:
            return
        try:
            written = self._segments.write(self._pending)
        except BaseException:
            self._pending.clear()
            self._next_seq = self._written_seq
            self._proven = self._proven_before
            raise
        self._pending.clear()
        self._written_seq = self._next_seq
        self._bytes_written += written

    def sync(self) -> None:
        """Make every written record durable; rewrite the manifest if it is due (at most every
        *manifest_interval_s*, and at the first sync after a new segment was created)."""
        self._sync()
        now = time.monotonic()
        at = self._manifest_at
        if at is None or self._segments.new_segment or now - at >= self._manifest_interval:
            self._write_manifest()

    def _sync(self) -> None:
        self._check_usable()
        written = self._written_seq - 1
        self._segments.sync()
        self._durable = written

    def _write_manifest(self) -> None:
        """Record in the manifest how far the log is durable. A manifest that could not be
        written is only a warning: the one before it still holds (it claims less)."""
        synced = self._segments.synced
        if synced is None:
            manifest = Manifest(0, 0, self._durable)
        else:
            name, offset = synced
            manifest = Manifest(int(name[:16]), offset, self._durable)
        try:
            write_manifest(self._dir, pack_manifest(manifest), self._files)
        except OSError as exc:
            logger.warning("could not rewrite the log's manifest (%s); the last one holds", exc)
            return
        self._manifest_at = time.monotonic()
        self._segments.new_segment = False

    def checkpoint(self) -> None:
        """Flush, fsync, and record in the log that every record written is durable (a
        CHECKPOINT frame, fsync'd too), so that replay reports later damage to them as
        corruption; and rewrite the manifest to say so. The store calls it at start-up and
        at a clean close (and, in ``interval`` mode, when idle)."""
        self.flush()
        self._sync()
        if self._checkpoint_due():
            self._proven_before = self._proven
            self._append_checkpoint()
            self.flush()
            self._sync()
        self._write_manifest()

    def seal(self) -> int:
        """Make the current segment durable and close it; the next record starts a new
        segment. Returns that record's seq: every record before it is in sealed segments.
        Compaction's cut point."""
        self.flush()
        self._segments.seal()
        self._durable = self._proven = self._written_seq - 1
        return self._next_seq

    def close(self) -> None:
        """Close the segment; records appended and not flushed are dropped (with a warning)."""
        if self._closed:
            return
        self._closed = True
        if self._pending:
            logger.warning("log closed with %d unflushed records dropped", self.pending_records)
            self._pending.clear()
            self._next_seq = self._written_seq
        self._segments.close()

    def _check_usable(self) -> None:
        if self._closed:
            msg = "the log writer is closed"
            raise StoreError(msg)
        if self._segments.broken is not None:
            msg = f"the log writer is unusable: {self._segments.broken}"
            raise StoreError(msg)
