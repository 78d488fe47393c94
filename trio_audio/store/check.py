"""``trio-audio check``: verify a data dir without changing it, and ``--repair`` it.

``check`` gives replay's verdict: it runs ``replay`` without letting it change anything
(``dry_run``), so every rule replay applies (the manifest, segment continuity and seq order,
headers, CRCs, the torn-tail rules) is applied, and ``check`` finding the log sound means
``serve`` starts with all of it. What replay refuses is reported with its file and offset.
To list every damaged region, not only the first, it also reads the snapshot and every
segment without stopping at the first problem: after a damaged frame it searches on for the
next frame whose salted CRC holds (candidates found with numpy, proven by the CRC) and goes
on from there, so one report lists every damaged region with its file and offsets. A damaged
end of the newest segment that replay would cut as a torn tail is reported as such, not as
corruption. It also folds the records (``reads.Loader``) to report chunks, sessions, users
and bytes. A path that is not a data dir holding a log is an error (``StoreError``).

``repair`` salvages every valid record: it takes the data dir's lock, writes the records
that ``check`` finds, in log order, into a fresh log (new seqs from 1, a closing checkpoint,
fsync'd), moves the old ``log`` directory aside as ``log.broken-<n>`` (nothing is deleted)
and puts the fresh one in its place. What it could not keep is listed: each damaged region
and the seqs missing between the records it kept.
"""

from __future__ import annotations

import itertools
import mmap
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Final

import attrs
import crc32c
import numpy as np

from ..errors import CorruptLog, StoreError
from .files import (
    LOG_CREATED_FILE,
    MANIFEST_FILE,
    all_zero,
    fsync_dir,
    list_segments,
    list_snapshots,
    lock_data_dir,
    log_dir,
)
from .index import Index
from .reads import Loader
from .record import (
    CHECKPOINT_MARK,
    FRAME_HEADER,
    FRAME_HEADER_SIZE,
    MAX_RECORD_BYTES,
    SEGMENT_HEADER_SIZE,
    SNAPSHOT_MAGIC,
    Record,
    RecordType,
    decode_payload,
    parse_segment_header,
    salt_crc,
)
from .replay import find_checkpoint, read_blob, replay
from .writer import LogWriter

RESYNC_WINDOW: Final = 8 * 1024 * 1024
_TYPES: Final = {t.value: t for t in RecordType}


@attrs.frozen
class Damage:
    """A region of a file that holds no valid record: ``torn`` when replay would cut it as
    a torn tail, else corruption."""

    path: str
    offset: int
    end: int
    reason: str
    torn: bool = False


@attrs.frozen
class CheckReport:
    files: int
    bytes: int
    records: int
    checkpoints: int
    chunks: int
    sessions: int
    users: int
    audio_bytes: int
    incomplete_groups: int
    damage: tuple[Damage, ...]

    @property
    def corrupt(self) -> bool:
        return any(not d.torn for d in self.damage)


@attrs.frozen
class RepairReport:
    kept: int
    dropped: tuple[Damage, ...]
    missing_seqs: tuple[tuple[int, int], ...]  # inclusive ranges of seqs not kept
    moved_to: str | None


def _files_in_order(data_dir: Path) -> list[tuple[str, bytes]]:
    """The files replay reads, in order, with their magic: the newest snapshot, then the
    segments it does not cover."""
    snapshots = list_snapshots(data_dir)
    start = int(snapshots[-1][:16]) if snapshots else 0
    names: list[tuple[str, bytes]] = [(snapshots[-1], SNAPSHOT_MAGIC)] if snapshots else []
    segments = [n for n in list_segments(data_dir) if int(n[:16]) >= start]
    return names + [(n, b"TRAUDLOG") for n in segments]


def salvage(
    data_dir: Path, on_record: Callable[[Record], None]
) -> tuple[list[Damage], int, int, int]:
    """Every valid record of the log, in order, to *on_record*; (damage, files, bytes,
    checkpoints). Changes nothing."""
    directory = log_dir(data_dir)
    files = _files_in_order(data_dir)
    damage: list[Damage] = []
    total = checkpoints = 0
    for i, (name, magic) in enumerate(files):
        newest = i == len(files) - 1 and magic != SNAPSHOT_MAGIC
        path = directory / name
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            size = os.fstat(fd).st_size
            total += size
            parsed = parse_segment_header(os.pread(fd, SEGMENT_HEADER_SIZE, 0), magic)
            if isinstance(parsed, str):
                torn = newest and (size <= SEGMENT_HEADER_SIZE or all_zero(fd, size))
                damage.append(Damage(str(path), 0, size, f"header: {parsed}", torn))
                continue
            if size <= SEGMENT_HEADER_SIZE:
                continue
            salt, base_seq = parsed
            for item in _walk(fd, size, salt, name, str(path), newest, base_seq):
                if isinstance(item, Damage):
                    damage.append(item)
                elif item is None:
                    checkpoints += 1
                else:
                    on_record(item)
        finally:
            os.close(fd)
    return damage, len(files), total, checkpoints


def _walk(
    fd: int, size: int, salt: int, name: str, path: str, newest: bool, expected: int
) -> Iterator[Record | Damage | None]:
    seed = salt_crc(salt)
    mm = mmap.mmap(fd, size, prot=mmap.PROT_READ)
    view = memoryview(mm)
    try:
        pos = SEGMENT_HEADER_SIZE
        while pos < size:
            found = _frame_at(mm, view, pos, size, seed)
            if isinstance(found, tuple):
                type_, seq, end = found
                if type_ == RecordType.CHECKPOINT:
                    if mm[pos + FRAME_HEADER_SIZE : end] == CHECKPOINT_MARK + seq.to_bytes(
                        8, "big"
                    ):
                        yield None
                        pos = end
                        continue
                    reason = "checkpoint payload does not match its seq"
                elif type_ not in _TYPES:
                    reason = f"unknown record type {type_}"
                else:
                    rtype = _TYPES[type_]
                    decoded = decode_payload(mm, view, pos + FRAME_HEADER_SIZE, end, rtype, name)
                    if not isinstance(decoded, str):
                        yield Record(rtype, seq, decoded[0], decoded[1], name, pos, end)
                        expected = seq + 1
                        pos = end
                        continue
                    reason = decoded
            else:
                reason = found
                if newest and find_checkpoint(fd, size, salt, pos, expected) is None:
                    yield Damage(path, pos, size, reason, torn=True)
                    return
            later = _resync(mm, view, pos + 1, size, seed)
            yield Damage(path, pos, size if later is None else later, reason)
            if later is None:
                return
            pos = later
    finally:
        view.release()
        mm.close()


def _frame_at(
    mm: mmap.mmap, view: memoryview, pos: int, size: int, seed: int
) -> tuple[int, int, int] | str:
    """(type, seq, end) of a CRC-valid frame at *pos*, or why there is none."""
    if size - pos < FRAME_HEADER_SIZE:
        return "partial frame header"
    length, crc, type_, seq = FRAME_HEADER.unpack_from(mm, pos)
    if length > MAX_RECORD_BYTES:
        return f"frame length {length} exceeds {MAX_RECORD_BYTES}"
    end = pos + FRAME_HEADER_SIZE + length
    if end > size:
        return f"frame of {length} bytes runs past end of file"
    if crc32c.crc32c(view[pos + 8 : end], value=seed) != crc:
        return "crc mismatch"
    return type_, seq, end


def _resync(mm: mmap.mmap, view: memoryview, start: int, size: int, seed: int) -> int | None:
    """The offset of the next CRC-valid frame at or after *start*; None if there is none.

    Candidates (a known type byte and a length that fits in the file) are found with numpy
    over windows of the file, then proven by the salted CRC.
    """
    data = np.frombuffer(mm, dtype=np.uint8)
    window = start
    while window + FRAME_HEADER_SIZE <= size:
        stop = min(size - FRAME_HEADER_SIZE + 1, window + RESYNC_WINDOW)
        idx = np.arange(window, stop)
        types = data[idx + 8]
        lengths = (
            data[idx].astype(np.uint64)
            | data[idx + 1].astype(np.uint64) << np.uint64(8)
            | data[idx + 2].astype(np.uint64) << np.uint64(16)
            | data[idx + 3].astype(np.uint64) << np.uint64(24)
        )
        room = (size - FRAME_HEADER_SIZE - idx).astype(np.uint64)
        hits = idx[(types >= 1) & (types <= len(_TYPES)) & (lengths <= room)]
        for pos in hits.tolist():
            if isinstance(_frame_at(mm, view, pos, size, seed), tuple):
                del data
                return int(pos)
        window = stop
    del data
    return None


def check(data_dir: Path) -> CheckReport:
    """Verify every record of *data_dir*'s log, by replay's rules; changes nothing."""
    require_log(data_dir)
    fold = Loader(Index())
    damage, files, total, checkpoints = salvage(data_dir, fold.add)
    replayed = Loader(Index())
    try:
        report = replay(
            data_dir, replayed.add, dry_run=True, routes=True, on_route=replayed.add_route
        )
    except CorruptLog as exc:
        # Replay's verdict wins: the region it names is corrupt whatever salvage made of it.
        refused = Damage(exc.path, exc.offset, exc.offset, exc.reason)
        same = [d for d in damage if (d.path, d.offset) == (exc.path, exc.offset)]
        for d in same:
            damage[damage.index(d)] = attrs.evolve(d, torn=False, reason=exc.reason)
        if not same:
            damage.insert(0, refused)
    else:
        fold, checkpoints = replayed, report.checkpoints  # what serve will load
    users = fold.index.users
    return CheckReport(
        files=files,
        bytes=total,
        records=fold.records,
        checkpoints=checkpoints,
        chunks=len(fold.index),
        sessions=sum(len(sessions) for sessions in users.values()),
        users=len(users),
        audio_bytes=fold.index.audio_bytes,
        incomplete_groups=len(fold.groups),
        damage=tuple(damage),
    )


def require_log(data_dir: Path) -> None:
    """Raise ``StoreError`` unless *data_dir* is a data dir that holds a log."""
    directory = log_dir(data_dir)
    if not data_dir.is_dir():
        msg = f"no data dir at {data_dir}"
        raise StoreError(msg)
    if not directory.is_dir() or not (
        list_segments(data_dir) or list_snapshots(data_dir) or (directory / MANIFEST_FILE).exists()
    ):
        msg = f"no log in {data_dir} (no {directory} with segments, a snapshot or a manifest)"
        raise StoreError(msg)


def repair(data_dir: Path) -> RepairReport:
    """Salvage every valid record into a fresh log and move the old one aside."""
    require_log(data_dir)
    lock = lock_data_dir(data_dir)
    try:
        return _repair(data_dir)
    finally:
        os.close(lock)


def _repair(data_dir: Path) -> RepairReport:
    work = data_dir / ".repair"
    if work.exists():
        for leftover in sorted(work.rglob("*"), reverse=True):
            leftover.unlink() if leftover.is_file() else leftover.rmdir()
        work.rmdir()
    writer = LogWriter(work, next_seq=1)
    seqs: list[int] = []

    def keep(record: Record) -> None:
        audio = None if record.blob is None else read_blob(data_dir, record.blob)
        writer.append(record.type, record.meta, audio)
        seqs.append(record.seq)
        if writer.pending_records >= 256:
            writer.flush()

    try:
        damage, _, _, _ = salvage(data_dir, keep)
        writer.checkpoint()
    finally:
        writer.close()
    missing: list[tuple[int, int]] = []
    ordered = sorted(set(seqs))
    for before, after in itertools.pairwise(ordered):
        if after > before + 1:
            missing.append((before + 1, after - 1))
    moved_to: str | None = None
    old = log_dir(data_dir)
    if old.exists():
        n = 0
        while (data_dir / f"log.broken-{n}").exists():
            n += 1
        moved_to = str(data_dir / f"log.broken-{n}")
        old.rename(moved_to)
    log_dir(work).rename(old)
    (work / LOG_CREATED_FILE).unlink(missing_ok=True)  # the data dir has its own
    work.rmdir()
    fsync_dir(data_dir)
    return RepairReport(len(seqs), tuple(damage), tuple(missing), moved_to)


def describe(report: CheckReport) -> list[str]:
    """The report as lines for a terminal."""
    lines = [
        f"{report.files} files, {report.bytes} bytes, {report.records} records "
        f"+ {report.checkpoints} checkpoints",
        f"{report.chunks} chunks in {report.sessions} sessions of {report.users} users, "
        f"{report.audio_bytes} bytes of audio",
    ]
    if report.incomplete_groups:
        lines.append(f"{report.incomplete_groups} multipart uploads cut short (not indexed)")
    for d in report.damage:
        kind = "torn tail (cut at start-up)" if d.torn else "CORRUPT"
        lines.append(f"{kind}: {d.path} offset {d.offset}..{d.end}: {d.reason}")
    lines.append("corruption found" if report.corrupt else "ok")
    return lines
