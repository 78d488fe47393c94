"""When the local store compacts, and the trio side of a compaction (``compact.py`` is the
file-level side, run in threads).

The committer asks for a compaction (``want``) when the dead bytes of the index pass both
``compact_min_bytes`` and ``compact_dead_ratio`` of the log's size, and when deletes were
written while the disk is full (their space comes back only by compacting); ``run`` then
compacts, one compaction at a time. A compaction that cannot write its snapshot leaves the
log as it was and logs a warning; one whose seal's fsync fails stops the store.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Final

import trio

from ..config import Config
from ..errors import StoreError
from .compact import Snapshot, log_size, remove_replaced, write_snapshot
from .durable import DurableLog
from .files import FileOps
from .index import Index

logger = logging.getLogger("trio_audio.store")

MOVE_SLICE: Final = 4096  # chunks re-pointed at a snapshot between two checkpoints


class Compactor:
    """Compactions of one data dir's log; *commit_lock* is held by the committer while it
    writes and indexes a batch. ``count``: the compactions done."""

    def __init__(
        self,
        config: Config,
        data_dir: Path,
        files: FileOps,
        log: DurableLog,
        commit_lock: trio.Lock,
    ) -> None:
        self._config = config
        self._data_dir = data_dir
        self._files = files
        self._log = log
        self._commit_lock = commit_lock
        self._lock = trio.Lock()
        self._wanted = trio.Event()
        self.count = 0

    def want(self) -> None:
        """Ask ``run`` for a compaction."""
        self._wanted.set()

    def due(self, index: Index) -> bool:
        dead = index.dead_bytes
        return (
            dead >= self._config.compact_min_bytes
            and dead >= self._config.compact_dead_ratio * max(self._log.bytes, 1)
        )

    async def run(self, index: Index) -> None:
        """Compact *index*'s log each time one is wanted, until cancelled."""
        while True:
            await self._wanted.wait()
            self._wanted = trio.Event()
            try:
                await self.compact(index)
            except StoreError:
                raise
            except OSError as exc:
                logger.warning("compaction failed, the log is unchanged: %s", exc)

    async def compact(self, index: Index) -> Snapshot | None:
        """Fold the log written so far into a snapshot and remove what it replaced (see
        ``compact.py``); None when nothing was written since the last compaction.

        Runs beside uploads: only the seal waits for the commit in progress. Raises
        ``OSError`` when the snapshot cannot be written (the log is left as it was) and
        ``StoreError`` when the seal's fsync fails.
        """
        async with self._lock:
            async with self._commit_lock:  # every chunk written before the seal is indexed
                start = await self._log.seal()
                dead = index.dead_bytes
            snapshot = await trio.to_thread.run_sync(
                write_snapshot, self._data_dir, start, self._files
            )
            if snapshot is None:
                return None
            # Re-point the moved chunks a slice at a time, so a big snapshot never stalls
            # the event loop; reads meanwhile still find the old files (removed below).
            replaced, moved = set(snapshot.replaced), list(snapshot.moved.items())
            for at in range(0, len(moved), MOVE_SLICE):
                index.moved(dict(moved[at : at + MOVE_SLICE]), replaced)
                await trio.lowlevel.checkpoint()
            await trio.to_thread.run_sync(remove_replaced, self._data_dir, snapshot, self._files)
            index.dead_bytes = max(0, index.dead_bytes - dead)
            self._log.bytes = await trio.to_thread.run_sync(log_size, self._data_dir)
            self.count += 1
            logger.info(
                "compacted %d records into %s (%d chunks, %d bytes)",
                snapshot.folded_records,
                snapshot.name,
                snapshot.records,
                snapshot.bytes,
            )
            return snapshot
