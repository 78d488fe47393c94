"""The segment file the log writer writes to: opening the newest one, creating the next,
writing a batch's frames into them, rolling a failed batch back, fsync, seal and close.

Synchronous (no trio), under ``LogWriter``, which decides what goes where (the frames, the
seqs, the checkpoints and the manifest); this module keeps the orders ``replay`` relies on
for the files themselves: a segment is complete and ``fdatasync``'d before the next one is
created, a new segment's header is ``fdatasync``'d (and the directory fsync'd) before any
record goes into it, and a failed write's truncation is ``fdatasync``'d before anything
else is written. Every call that changes a file goes through ``files.FileOps``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import attrs

from ..errors import CorruptLog, StoreError
from .files import FileOps, write_all
from .record import SEGMENT_HEADER_SIZE, parse_segment_header

logger = logging.getLogger("trio_audio.store")


@attrs.define
class Pending:
    """Frames buffered for one segment; ``header`` is set when flush must create it."""

    segment: str
    salt: int
    start: int
    header: bytes | None
    buffers: list[bytes] = attrs.field(factory=list)
    nbytes: int = 0

    @property
    def end(self) -> int:
        return self.start + self.nbytes


class SegmentFiles:
    """The segment written to (``name`` None before the first one, and after a seal), its
    open ``fd``, ``salt`` and last good ``end``; ``synced``: the segment and end a completed
    fsync covered; ``new_segment``: a segment was created since the owner last cleared it;
    ``broken``: why a failed write could not be rolled back (None: it could)."""

    def __init__(self, files: FileOps, directory: Path) -> None:
        self.files = files
        self.dir = directory
        self.fd: int | None = None
        self.name: str | None = None
        self.salt = 0
        self.end = 0  # bytes of the current segment written (the last good end)
        self.synced: tuple[str, int] | None = None
        self.new_segment = False
        self.broken: str | None = None

    def open_existing(self, name: str, next_seq: int) -> None:
        path = self.dir / name
        fd = self.files.open(path, os.O_RDWR | os.O_CLOEXEC)
        try:
            parsed = parse_segment_header(os.pread(fd, SEGMENT_HEADER_SIZE, 0))
            size = os.fstat(fd).st_size
        except BaseException:
            self.files.close(fd)
            raise
        if isinstance(parsed, str):
            self.files.close(fd)
            raise CorruptLog(str(path), 0, f"{parsed} (replay the log first)")
        salt, base_seq = parsed
        if next_seq < base_seq:
            self.files.close(fd)
            msg = f"next_seq {next_seq} is before the segment's base seq {base_seq}"
            raise CorruptLog(str(path), 0, msg)
        self.fd, self.name, self.salt, self.end = fd, name, salt, size

    def write(self, batch: list[Pending]) -> int:
        """Write *batch*, creating the segments it starts; the bytes written. On failure
        the log is left at its last good record and the error re-raised (a ``StoreError``
        when that roll-back failed too)."""
        files = self.files
        saved_fd, saved_name, saved_salt, saved_end = self.fd, self.name, self.salt, self.end
        created: list[tuple[Path, int]] = []
        written = 0
        try:
            for pending in batch:
                if pending.header is not None:
                    if self.fd is not None:
                        # The older segment is complete and durable (its name was fsync'd
                        # when it was created) before the next one exists: a crash only
                        # damages the newest one.
                        files.fdatasync(self.fd)
                    path = self.dir / pending.segment
                    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
                    fd = files.open(path, flags, 0o644)
                    created.append((path, fd))
                    self.fd, self.name, self.salt = fd, pending.segment, pending.salt
                    self.end = 0
                    # The header is durable before any record is written after it: a bad
                    # header on a segment longer than it is then corruption, not a crash.
                    written += write_all(files, fd, [pending.header], 0)
                    files.fdatasync(fd)
                    files.fsync_dir(self.dir)
                    self.end = SEGMENT_HEADER_SIZE
                    self.new_segment = True  # name the new segment at the next sync
                assert self.fd is not None
                written += write_all(files, self.fd, pending.buffers, pending.start)
                self.end = pending.end
        except BaseException as exc:
            self.fd, self.name, self.salt, self.end = saved_fd, saved_name, saved_salt, saved_end
            self._roll_back(created, saved_fd, saved_end, exc)
            raise
        for _, fd in created[:-1]:
            files.close(fd)
        if created and saved_fd is not None:
            files.close(saved_fd)
        return written

    def _roll_back(
        self,
        created: list[tuple[Path, int]],
        fd: int | None,
        end: int,
        cause: BaseException,
    ) -> None:
        files = self.files
        try:
            for path, new_fd in created:
                files.close(new_fd)
                files.unlink(path)
            if created:
                files.fsync_dir(self.dir)
            if fd is not None:
                # Durable at once: a power cut must not bring back the half-written batch
                # under the records that will be written over it.
                files.ftruncate(fd, end)
                files.fdatasync(fd)
        except OSError as exc:
            self.broken = f"a failed write could not be rolled back: {exc}"
            msg = f"log write failed ({cause!r}) and {self.broken}"
            raise StoreError(msg) from exc
        logger.debug("rolled the log back to %s offset %d after %r", self.name, end, cause)

    def sync(self) -> None:
        """``fdatasync`` the segment written to, if one is open."""
        if self.fd is not None:
            self.files.fdatasync(self.fd)
            assert self.name is not None
            self.synced = (self.name, self.end)

    def seal(self) -> None:
        """Make the segment durable and close it; the next record starts a new segment."""
        if self.fd is not None:
            fd, self.fd = self.fd, None
            self.files.fdatasync(fd)
            self.files.close(fd)
            assert self.name is not None
            self.synced = (self.name, self.end)
        self.name, self.end = None, 0

    def close(self) -> None:
        if self.fd is not None:
            fd, self.fd = self.fd, None
            self.files.close(fd)
