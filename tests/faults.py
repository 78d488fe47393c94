"""File-layer doubles that sit under the log (``trio_audio.store.files.FileOps``).

Every call still goes to the real file system; the doubles only add what a disk or a power
cut can do on top:

* ``PowerLossFiles`` keeps, per file, the bytes as of its last completed fsync and every
  change made since. ``crash_image`` builds what a power cut could leave (SQLite's crash
  model): each 512-byte sector written since the last fsync is kept, dropped or garbled
  (random bytes or zeros), each truncation kept or dropped, and a file whose directory
  entry was never fsync'd may vanish. Nothing before a completed fsync is touched.
* ``FaultyFiles`` injects ENOSPC (after a short write; a file removed meanwhile gives its
  bytes back), EIO from fsync, or a crash at the n-th call.
"""

from __future__ import annotations

import errno
import os
import random
import shutil
from pathlib import Path

from trio_audio.store.files import FileOps

SECTOR = 512


class PowerLossFiles(FileOps):
    def __init__(self) -> None:
        self.paths: dict[int, Path] = {}
        self.durable: dict[Path, bytes] = {}
        self.pending: dict[Path, list[tuple[str, int, bytes]]] = {}
        self.unnamed: set[Path] = set()  # created, directory entry not fsync'd yet

    def open(self, path: Path, flags: int, mode: int = 0o644) -> int:
        existed = path.exists()
        fd = super().open(path, flags, mode)
        self.paths[fd] = path
        if not existed:
            self.unnamed.add(path)
            self.durable[path] = b""
        elif path not in self.durable:
            self.durable[path] = path.read_bytes()  # as it was when first opened: durable
        self.pending.setdefault(path, [])
        return fd

    def pwritev(self, fd: int, buffers: list[bytes | memoryview], offset: int) -> int:
        n = super().pwritev(fd, buffers, offset)
        data = b"".join(bytes(b) for b in buffers)[:n]
        self.pending[self.paths[fd]].append(("write", offset, data))
        return n

    def ftruncate(self, fd: int, size: int) -> None:
        super().ftruncate(fd, size)
        self.pending[self.paths[fd]].append(("truncate", size, b""))

    def fdatasync(self, fd: int) -> None:
        super().fdatasync(fd)
        path = self.paths[fd]
        self.durable[path] = path.read_bytes()
        self.pending[path] = []

    def close(self, fd: int) -> None:
        super().close(fd)
        del self.paths[fd]

    def unlink(self, path: Path) -> None:
        super().unlink(path)
        self.durable.pop(path, None)
        self.pending.pop(path, None)
        self.unnamed.discard(path)

    def rename(self, src: Path, dst: Path) -> None:
        # Taken as atomic: a power cut leaves the old file or the new one (never tested
        # here: the one file renamed over another, the manifest, is valid either way).
        super().rename(src, dst)
        if src in self.durable:
            self.durable[dst] = self.durable.pop(src)
        if src in self.pending:
            self.pending[dst] = self.pending.pop(src)
        if src in self.unnamed:
            self.unnamed.discard(src)
            self.unnamed.add(dst)

    def fsync_dir(self, path: Path) -> None:
        super().fsync_dir(path)
        self.unnamed = {p for p in self.unnamed if p.parent != path}

    def crash_image(self, source: Path, dest: Path, rng: random.Random) -> None:
        """Copy data dir *source* to *dest* as a power cut could leave it."""
        shutil.copytree(source, dest)
        for path, durable in self.durable.items():
            target = dest / path.relative_to(source)
            if path in self.unnamed and rng.random() < 0.5:
                target.unlink(missing_ok=True)
                continue
            image = bytearray(durable)
            for op, offset, data in self.pending.get(path, []):
                if op == "truncate":
                    if rng.random() < 0.5:
                        del image[offset:]
                    continue
                for at in range(0, len(data), SECTOR):
                    piece = data[at : at + SECTOR]
                    roll = rng.random()
                    if roll < 0.4:
                        continue  # dropped
                    if roll > 0.8:  # garbled
                        piece = rng.randbytes(len(piece)) if roll > 0.9 else bytes(len(piece))
                    start = offset + at
                    if len(image) < start:
                        image.extend(bytes(start - len(image)))
                    image[start : start + len(piece)] = piece
            target.write_bytes(bytes(image))


class Crash(Exception):
    """The process died here."""


class FaultyFiles(FileOps):
    """Real files, with faults switched on by the test."""

    def __init__(self) -> None:
        self.full = False  # writes fail with ENOSPC (the first one after a short write) ...
        self.room = 0  # ... but for this many bytes, which a file removed meanwhile freed
        self.fail_fsync = False  # fdatasync fails with EIO
        self.crash_at: int | None = None  # raise Crash at this call (0-based)
        self.calls = 0
        self.short_writes = 0

    def _step(self) -> None:
        if self.crash_at is not None and self.calls == self.crash_at:
            self.calls += 1
            raise Crash
        self.calls += 1

    def open(self, path: Path, flags: int, mode: int = 0o644) -> int:
        self._step()
        return super().open(path, flags, mode)

    def pwritev(self, fd: int, buffers: list[bytes | memoryview], offset: int) -> int:
        self._step()
        size = sum(len(b) for b in buffers)
        if self.full and size <= self.room:
            self.room -= size
        elif self.full:
            first = bytes(buffers[0])
            if len(first) > 1 and self.short_writes == 0:
                self.short_writes += 1
                return os.pwrite(fd, first[: len(first) // 2], offset)  # a short write ...
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # ... then no room
        return super().pwritev(fd, buffers, offset)

    def fdatasync(self, fd: int) -> None:
        self._step()
        if self.fail_fsync:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        super().fdatasync(fd)

    def ftruncate(self, fd: int, size: int) -> None:
        self._step()
        super().ftruncate(fd, size)

    def unlink(self, path: Path) -> None:
        self._step()
        size = path.stat().st_size if self.full and path.exists() else 0
        super().unlink(path)
        self.room += size

    def fallocate(self, fd: int, offset: int, length: int) -> None:
        self._step()
        if self.full:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        super().fallocate(fd, offset, length)

    def rename(self, src: Path, dst: Path) -> None:
        self._step()
        super().rename(src, dst)

    def fsync_dir(self, path: Path) -> None:
        self._step()
        super().fsync_dir(path)
