"""The log as the local store's committer and compaction use it: one ``LogWriter`` behind
the store's disk limiter, a batch appended (and, in ``always`` mode, fsynced) in a thread,
the periodic fsync of ``fsync=interval``, the seal, and the close.

Error handling: an fsync that fails sets ``fsync_failed`` for good (``FsyncFailed``, a
``StoreError``, is raised): a retried fsync can report success for data it lost, so nothing
more is written, the close does not sync, and ``health`` says why.
"""

from __future__ import annotations

import trio

from ..config import Config
from ..errors import StoreError
from .logio import Frame, FsyncFailed, Record
from .logio import append as _append
from .logio import close_log as _close_log
from .logio import prove as _prove
from .logio import seal as _seal
from .logio import sync_and_prove as _sync_and_prove
from .writer import LogWriter


class DurableLog:
    """The open log writer (None before ``open`` and after ``close``), how many batches were
    written and fsynced, and the log's size in bytes, roughly (it grows with each write)."""

    def __init__(self, config: Config, disk: trio.CapacityLimiter) -> None:
        self._config = config
        self.disk = disk  # one thread at a time touches the log's files
        self.writer: LogWriter | None = None
        self.fsync_failed = False
        self.written = 0  # batches written; synced: how many of them are fsynced
        self.synced = 0
        self.bytes = 0

    @property
    def health(self) -> str | None:
        """Why the log cannot take writes now (None: it can)."""
        if self.fsync_failed:
            return "an fsync of the log failed: nothing more is written"
        return None

    async def open(self, writer: LogWriter, size: int) -> None:
        """Take *writer* over a log of *size* bytes. What replay read back is made durable
        and proven by a checkpoint, so that from now on damage to it is reported as
        corruption, never taken for a torn write."""
        self.writer, self.bytes = writer, size
        await trio.to_thread.run_sync(_prove, writer, limiter=self.disk)

    async def write(self, records: list[Record]) -> tuple[list[Frame], int]:
        """Append, flush and (in ``always`` mode) fsync, in a thread; the refs and growth."""
        if self.fsync_failed:
            msg = "an fsync of the log failed earlier; nothing more is written"
            raise StoreError(msg)
        log = self.writer
        if log is None:
            msg = "the store is closed"
            raise StoreError(msg)
        sync = self._config.fsync == "always"
        try:
            out = await trio.to_thread.run_sync(_append, log, records, sync, limiter=self.disk)
        except FsyncFailed:
            self.fsync_failed = True
            raise
        self.written += 1
        if sync:
            self.synced = self.written
        self.bytes += out[1]
        return out

    async def sync_periodically(self) -> None:
        """Every ``fsync_interval_s``, fsync (and prove) what was written since the last."""
        while True:
            await trio.sleep(self._config.fsync_interval_s)
            log, written = self.writer, self.written
            if log is not None and written != self.synced and not self.fsync_failed:
                try:
                    await trio.to_thread.run_sync(_sync_and_prove, log, limiter=self.disk)
                except FsyncFailed:
                    self.fsync_failed = True
                    raise
                self.synced = max(self.synced, written)

    async def seal(self) -> int:
        """Seal the current segment (see ``LogWriter.seal``); the first seq after it."""
        log = self.writer
        if log is None:
            msg = "the store is closed"
            raise StoreError(msg)
        try:
            return await trio.to_thread.run_sync(_seal, log, limiter=self.disk)
        except FsyncFailed:
            self.fsync_failed = True
            raise

    async def close(self) -> None:
        """Close the log, fsynced unless an fsync failed before (no retry: it could report
        success for lost data). Call it shielded."""
        if self.writer is not None:
            log, self.writer = self.writer, None
            sync = not self.fsync_failed
            await trio.to_thread.run_sync(_close_log, log, sync, limiter=self.disk)
