"""What the store runs in threads against its log writer: appends, fsyncs, checkpoints,
seals, close. They return values and raise ``FsyncFailed``; the trio side applies them."""

from __future__ import annotations

import logging
from typing import Any

from ..errors import StoreError
from .record import BlobRef, RecordType
from .room import FULL_ERRNOS
from .writer import LogWriter

logger = logging.getLogger("trio_audio.store")

# One record for the log writer: its type, its meta (as a map, or packed already) and audio.
Record = tuple[RecordType, dict[str, Any] | bytes, bytes | None]
Frame = tuple[BlobRef | None, tuple[str, int, int]]  # where the writer put a record


class FsyncFailed(StoreError):
    """An fsync of the log failed: nothing more may be written (see ``Store``)."""


def fsync_failure(exc: OSError) -> FsyncFailed:
    """A failed fsync may have dropped dirty pages, and a retried one can report success
    for data that is gone: never write again; the process stops, and replay on restart
    tells what is durable."""
    logger.critical("fsync of the log failed (%s); stopping the service", exc)
    return FsyncFailed(f"fsync of the log failed: {exc}")


def prove(log: LogWriter) -> None:
    try:
        log.checkpoint()
    except StoreError:
        raise
    except OSError as exc:
        if exc.errno not in FULL_ERRNOS:
            msg = f"the log could not be made durable: {exc}"
            raise StoreError(msg) from exc
        logger.warning("no room to write a checkpoint (%s); it goes with the next write", exc)


def append(log: LogWriter, records: list[Record], sync: bool) -> tuple[list[Frame], int]:
    before = log.bytes_written
    refs = []
    for type_, meta, audio in records:
        ref = log.append(type_, meta, audio)[1]
        refs.append((ref, log.last_frame))
    log.flush()
    if sync:
        try:
            log.sync()
        except OSError as exc:
            raise fsync_failure(exc) from exc
    return refs, log.bytes_written - before


def sync_and_prove(log: LogWriter) -> None:
    try:
        log.sync()
    except OSError as exc:
        raise fsync_failure(exc) from exc
    prove(log)  # when idle, say so in the log too (a busy log's next batch carries it)


def seal(log: LogWriter) -> int:
    try:
        return log.seal()
    except OSError as exc:
        raise fsync_failure(exc) from exc


def close_log(log: LogWriter, sync: bool = True) -> None:
    try:
        if sync:
            log.checkpoint()  # flush, fsync, and prove it: a clean close leaves nothing unproven
    finally:
        log.close()
