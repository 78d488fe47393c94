"""A full disk, as the local store meets it: refused writes, one log line, room for deletes.

When a log write fails for want of room (ENOSPC, EDQUOT, EFBIG) every write of its batch is
refused with 507 ``insufficient_storage`` and a ``Retry-After``; the first refusal of an
*episode* logs one error, and the first write that succeeds after it logs how many were
refused over how long (no traceback per refused batch). The episode's refusals are counted
in ``/metrics`` as ``failed{code="insufficient_storage"}``.

So that space can be freed through the API, ``store_reserve_bytes`` of disk are held in
``<data_dir>/RESERVE`` while there is room. A batch refused for want of room that holds
deletes gives the reserve up and writes its deletes alone (a tombstone is a few bytes per
chunk id); a delete written during the episode gives it up too. The store then compacts,
which is what gives the deleted audio's space back: the reserve is the room for the
compaction's snapshot (the chunks still live) and manifest, so a delete frees space when
what stays is smaller than the reserve and whatever room the delete's own writes leave. The
reserve is taken again once a chunk is written after the episode.

Resource handling: the reserve's file calls run in a thread under the store's disk limiter.
"""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Final

import trio

from ..errors import InsufficientStorage, InternalError, ServiceError
from ..metrics import Metrics
from ..models import Job
from .events import Update, Write
from .files import FileOps, make_reserve, release_reserve

if TYPE_CHECKING:
    from .index import Planned
    from .logio import Frame, Record

    Plans = list[tuple[Write, list[Planned] | Record]]

logger = logging.getLogger("trio_audio.store")

FULL_ERRNOS: Final = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
RETRY_AFTER_S: Final = 10  # a full disk is not cleared in a second: a client waits this long


def is_full(exc: OSError) -> bool:
    return exc.errno in FULL_ERRNOS


class DiskRoom:
    """The reserve and the current full-disk episode of one data dir."""

    def __init__(
        self, data_dir: Path, reserve_bytes: int, files: FileOps, disk: trio.CapacityLimiter
    ) -> None:
        self.data_dir = data_dir
        self.reserve_bytes = reserve_bytes
        self.files = files
        self.disk = disk
        self.reserved = False
        self.full_since: float | None = None  # monotonic start of the episode; None: room
        self.refused_writes = 0  # in this episode

    async def hold(self) -> None:
        """Take the reserve if there is room for it (quietly not, when there is none)."""
        if self.reserved or self.reserve_bytes <= 0:
            return
        try:
            self.reserved = await trio.to_thread.run_sync(
                make_reserve, self.data_dir, self.reserve_bytes, self.files, limiter=self.disk
            )
        except OSError as exc:
            logger.debug("no room for the %d-byte reserve: %s", self.reserve_bytes, exc)

    async def release(self) -> bool:
        """Give the reserve up (for deletes); True if there was one to give."""
        had = await trio.to_thread.run_sync(
            release_reserve, self.data_dir, self.files, limiter=self.disk
        )
        self.reserved = False
        if had:
            logger.warning("gave up the %d-byte reserve to write deletes", self.reserve_bytes)
        return had

    async def refuse(
        self,
        plans: Plans,
        exc: OSError,
        write: Callable[[list[Record]], Awaitable[tuple[list[Frame], int]]],
        metrics: Metrics,
    ) -> tuple[Plans, list[Frame], int]:
        """A batch's *write* failed with *exc*: refuse its writes (507 when the disk is full,
        500 otherwise), but for deletes, which are written alone from the reserve. What was
        written after all: those plans, where their records went and the log's growth."""
        deletes: Plans = [(w, p) for w, p in plans if not isinstance(w, (Job, Update))]
        kept: tuple[Plans, list[Frame], int] = ([], [], 0)
        if not is_full(exc):
            error: ServiceError = InternalError(f"the store failed to write: {exc}")
            logger.exception("log write failed, %d writes refused", len(plans))
        else:
            error = self.refused(exc, len(plans))
            if deletes:  # alone (and with the reserve's room, if it is still held) they may fit
                await self.release()
                try:
                    frames, grown = await write([p for _, p in deletes if not isinstance(p, list)])
                except OSError:
                    pass  # not even room for them: refused with the rest
                else:
                    kept = (deletes, frames, grown)
        for w, _ in plans:
            if kept[0] and not isinstance(w, (Job, Update)):
                continue
            metrics.failed(error.code)
            w.reply.fail(error)
        return kept

    def refused(self, exc: OSError, writes: int) -> InsufficientStorage:
        """The error for *writes* refused for want of room; logs the episode's start once."""
        if self.full_since is None:
            self.full_since = time.monotonic()
            self.refused_writes = 0
            logger.error("the disk is full (%s): writes are refused with 507 until there is "
                         "room; deletes can still be written", exc.strerror)  # fmt: skip
        self.refused_writes += writes
        return InsufficientStorage(
            f"the store cannot write: {exc.strerror}; delete data or retry later",
            retry_after=RETRY_AFTER_S,
        )

    async def written(self, plans: Plans) -> bool:
        """A batch was written: True if it holds deletes made while the disk is full (then
        compact: that is what gives their space back). A batch with a new chunk in it ends
        the episode, if there was one, and the reserve is taken again."""
        if self.full_since is None:
            return False
        if not any(isinstance(w, Job) for w, _ in plans):
            deleted = any(not isinstance(w, Update) for w, _ in plans)
            if deleted:
                await self.release()  # the compaction's room: its snapshot, the manifest
            return deleted
        logger.info("room again after %.1f s: %d writes were refused with 507",
                    time.monotonic() - self.full_since, self.refused_writes)  # fmt: skip
        self.full_since = None
        await self.hold()
        return False
