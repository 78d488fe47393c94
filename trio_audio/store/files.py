"""The log's files: where they live, what they are called, and every call that writes them.

Layout: ``<data_dir>/LOCK`` is the flock'd lock file (it holds the owner's pid).
``<data_dir>/log/`` holds the segments, named ``%016d.seg`` after the seq of their first
record, so sorting by name is log order, and at most one snapshot ``%016d.snap`` (see
``compact``) named after the seq the log goes on from. Other names there (``*.torn`` files,
for one) are ignored; ``*.tmp`` files are an unfinished compaction's (or manifest's) and are
removed at replay. ``MANIFEST`` says how far the log was durable (``record.Manifest``); it is
replaced whole, by rename (``write_manifest``). ``<data_dir>/LOG_CREATED`` is written once,
when a writer first opens the log (``mark_log``): from then on a data dir whose log is gone
(no segment, snapshot or manifest: the directory emptied, renamed or not mounted) is refused
(``require_log_if_created``) instead of served as a new, empty one. ``<data_dir>/RESERVE`` is
disk space held back (``make_reserve``) and given up (``release_reserve``) so that a delete
can still be written when the disk is full.

Every call that changes a file goes through a ``FileOps`` object (the real ``os`` calls by
default): the seam that the power-loss and disk-fault tests put their doubles under.
Synchronous code with no trio in it; the store calls it through ``trio.to_thread``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import time
from pathlib import Path
from typing import Final

from ..errors import DataDirLocked, StoreError

LOG_DIR: Final = "log"
LOCK_FILE: Final = "LOCK"
SEGMENT_SUFFIX: Final = ".seg"
TORN_SUFFIX: Final = ".torn"
SNAPSHOT_SUFFIX: Final = ".snap"
TMP_SUFFIX: Final = ".tmp"
MANIFEST_FILE: Final = "MANIFEST"
LOG_CREATED_FILE: Final = "LOG_CREATED"
RESERVE_FILE: Final = "RESERVE"
SEGMENT_NAME: Final = re.compile(r"^(\d{16})\.seg$")
SNAPSHOT_NAME: Final = re.compile(r"^(\d{16})\.snap$")

COPY_CHUNK_BYTES: Final = 1024 * 1024
_IOV_MAX: Final = max(16, min(os.sysconf("SC_IOV_MAX"), 1024))


class FileOps:
    """The calls that change files, as the log writer and compaction make them.

    The default is the real ``os`` calls. Tests subclass it to sit under the log: a
    power-loss model that keeps, drops or garbles what was not fsync'd, and injected disk
    faults (ENOSPC, short writes, EIO from fsync).
    """

    def open(self, path: Path, flags: int, mode: int = 0o644) -> int:
        return os.open(path, flags, mode)

    def pwritev(self, fd: int, buffers: list[bytes | memoryview], offset: int) -> int:
        return os.pwritev(fd, buffers, offset)

    def fdatasync(self, fd: int) -> None:
        os.fdatasync(fd)

    def ftruncate(self, fd: int, size: int) -> None:
        os.ftruncate(fd, size)

    def close(self, fd: int) -> None:
        os.close(fd)

    def unlink(self, path: Path) -> None:
        os.unlink(path)

    def rename(self, src: Path, dst: Path) -> None:
        os.rename(src, dst)

    def fsync_dir(self, path: Path) -> None:
        fsync_dir(path)

    def fallocate(self, fd: int, offset: int, length: int) -> None:
        os.posix_fallocate(fd, offset, length)


REAL_FILES: Final = FileOps()


def segment_name(base_seq: int) -> str:
    return f"{base_seq:016d}{SEGMENT_SUFFIX}"


def snapshot_name(start_seq: int) -> str:
    return f"{start_seq:016d}{SNAPSHOT_SUFFIX}"


def list_snapshots(data_dir: Path) -> list[str]:
    """Snapshot file names, oldest first (the last one is the one replay uses)."""
    return _names(data_dir, SNAPSHOT_NAME)


def log_dir(data_dir: Path) -> Path:
    return data_dir / LOG_DIR


def list_segments(data_dir: Path) -> list[str]:
    """Segment file names in log order."""
    return _names(data_dir, SEGMENT_NAME)


def _names(data_dir: Path, pattern: re.Pattern[str]) -> list[str]:
    directory = log_dir(data_dir)
    if not directory.is_dir():
        return []
    return sorted(e.name for e in os.scandir(directory) if pattern.match(e.name))


# -- lock ------------------------------------------------------------------------------------


def lock_data_dir(data_dir: Path) -> int:
    """Create the data dir if needed and take its lock; return the fd (close it to unlock)."""
    make_dirs(data_dir)
    make_dirs(log_dir(data_dir))
    fd = os.open(data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        owner = _read_pid(fd)
        os.close(fd)
        msg = f"data dir {data_dir} is in use by another trio-audio process (pid {owner})"
        raise DataDirLocked(msg) from None
    except BaseException:
        os.close(fd)
        raise
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except BaseException:
        os.close(fd)
        raise
    return fd


def mark_log(data_dir: Path, files: FileOps = REAL_FILES) -> None:
    """Write ``LOG_CREATED`` (when the log was first opened) beside the log, durably, if it
    is not there yet."""
    path = data_dir / LOG_CREATED_FILE
    if path.exists():
        return
    fd = files.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        write_all(files, fd, [f"{stamp} a log was created in {LOG_DIR}/\n".encode()], 0)
        files.fdatasync(fd)
    finally:
        files.close(fd)
    files.fsync_dir(data_dir)


def make_reserve(data_dir: Path, size: int, files: FileOps = REAL_FILES) -> bool:
    """Hold *size* bytes of disk in ``RESERVE`` (allocated, not just a sparse length); True
    once it is there. ``OSError`` when there is no room for it."""
    path = data_dir / RESERVE_FILE
    with contextlib.suppress(FileNotFoundError):
        if path.stat().st_blocks * 512 >= size:
            return True
    if size <= 0:
        return False
    fd = files.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            files.fallocate(fd, 0, size)
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                raise
            for at in range(0, size, COPY_CHUNK_BYTES):  # no fallocate here: write it
                write_all(files, fd, [bytes(min(COPY_CHUNK_BYTES, size - at))], at)
        files.fdatasync(fd)
    except BaseException:
        files.close(fd)
        with contextlib.suppress(OSError):
            files.unlink(path)
        raise
    files.close(fd)
    files.fsync_dir(data_dir)
    return True


def release_reserve(data_dir: Path, files: FileOps = REAL_FILES) -> bool:
    """Give the reserve's space back to the file system; True if there was one."""
    try:
        files.unlink(data_dir / RESERVE_FILE)
    except FileNotFoundError:
        return False
    return True


def require_log_if_created(data_dir: Path) -> None:
    """Raise ``StoreError`` when ``LOG_CREATED`` says a log was created in *data_dir* and
    no trace of it is left: serving would start empty and lose every acknowledged chunk."""
    marker = data_dir / LOG_CREATED_FILE
    try:
        created = marker.read_text(errors="replace").split(" ", 1)[0]
    except FileNotFoundError:
        return
    directory = log_dir(data_dir)
    if list_segments(data_dir) or list_snapshots(data_dir) or (directory / MANIFEST_FILE).exists():
        return
    msg = (
        f"the log in {directory} is gone (no segments, snapshot or {MANIFEST_FILE}), but "
        f"{marker} says one was created there ({created}): it was emptied, renamed or is not "
        f"mounted. Put it back; to start over with an empty log on purpose, delete {marker}"
    )
    raise StoreError(msg)


def make_dirs(path: Path) -> bool:
    if path.is_dir():
        return False
    path.mkdir(parents=True, exist_ok=True)
    fsync_dir(path.parent)
    return True


def _read_pid(fd: int) -> str:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return "unknown"
    return text if text.isdigit() else "unknown"


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- writing and cutting ----------------------------------------------------------------------


def write_all(files: FileOps, fd: int, buffers: list[bytes], offset: int) -> int:
    """pwritev every buffer at *offset*, looping on short writes; returns bytes written."""
    pending: list[bytes | memoryview] = [b for b in buffers if b]
    written = 0
    i = 0
    while i < len(pending):
        n = files.pwritev(fd, pending[i : i + _IOV_MAX], offset + written)
        if n <= 0:
            raise OSError(errno.EIO, "write made no progress")
        written += n
        while n > 0:
            head = len(pending[i])
            if n >= head:
                n -= head
                i += 1
            else:
                pending[i] = memoryview(pending[i])[n:]
                n = 0
    return written


def all_zero(fd: int, size: int) -> bool:
    pos = 0
    while pos < size:
        data = os.pread(fd, min(COPY_CHUNK_BYTES, size - pos), pos)
        if not data or data.count(0) != len(data):
            return False
        pos += len(data)
    return True


def save_torn(directory: Path, name: str, src: int, start: int, end: int) -> Path | None:
    """Copy bytes start..end of a segment to a new ``.torn`` file, fsync'd; None if empty."""
    if end <= start:
        return None
    n = 0
    while True:
        candidate = directory / (f"{name}{TORN_SUFFIX}" if n == 0 else f"{name}.{n}{TORN_SUFFIX}")
        try:
            out = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        except FileExistsError:
            n += 1
            continue
        break
    try:
        pos = start
        while pos < end:
            data = os.pread(src, min(COPY_CHUNK_BYTES, end - pos), pos)
            if not data:
                msg = f"{directory / name} shrank while its torn tail was copied"
                raise StoreError(msg)
            write_all(REAL_FILES, out, [data], pos - start)
            pos += len(data)
        os.fsync(out)
    finally:
        os.close(out)
    return candidate


def truncate(path: Path, size: int) -> None:
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    try:
        os.ftruncate(fd, size)
        os.fsync(fd)
    finally:
        os.close(fd)


def write_manifest(directory: Path, data: bytes, files: FileOps = REAL_FILES) -> None:
    """Replace ``MANIFEST`` in *directory* with *data*, durably: written to a temp file,
    fsync'd, renamed over the old one, and the directory fsync'd. A crash leaves the old
    manifest or the new one, never a mix."""
    tmp = directory / (MANIFEST_FILE + TMP_SUFFIX)
    fd = files.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        write_all(files, fd, [data], 0)
        files.fdatasync(fd)
    except BaseException:
        files.close(fd)
        with contextlib.suppress(OSError):
            files.unlink(tmp)
        raise
    files.close(fd)
    files.rename(tmp, directory / MANIFEST_FILE)
    files.fsync_dir(directory)


def read_manifest(directory: Path) -> bytes | None:
    """The bytes of *directory*'s manifest; None when there is none."""
    try:
        return (directory / MANIFEST_FILE).read_bytes()
    except FileNotFoundError:
        return None
