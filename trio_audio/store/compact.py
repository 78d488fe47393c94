"""Compaction: fold the sealed part of the log into one snapshot, then drop what it replaced.

Synchronous file-level code (no trio), run in a thread by ``Store.compact``.

Layout
------
``log/%016d.snap`` is a snapshot: the header of a segment with magic ``TRAUDSNP`` whose
``base_seq`` S is the seq the log goes on from, then one CHUNK record per live chunk (the
seq of the record it came from, its metadata with every update applied, its audio), then an
end marker (a CHECKPOINT frame saying S - 1). Replay reads the newest snapshot, then the
segments, which must start at S: the snapshot is where the log's seq continuity starts.

Steps, each durable before the next:

1. ``LogWriter.seal``: the current segment is fsync'd and closed; the next record starts
   segment S, so every record before S is in sealed, immutable files.
2. Fold the old snapshot and the segments before S (``Fold``: the replay rules): live
   chunks with their updates, without deleted chunks and cut-short multipart groups.
3. Write ``<S>.snap.tmp``, fsync it; rename it to ``<S>.snap``; fsync the directory. From
   here replay starts from the new snapshot.
4. The store points its index at the audio in the snapshot (``Snapshot.moved``).
5. Remove the old snapshot and the segments before S; fsync the directory.

A crash before the rename leaves a ``.tmp`` file that replay deletes, and the state comes
from the old files; after it, replay uses the new snapshot and deletes the files step 5 did
not get to. Either way the store replays to the same state and no orphan file stays.
Snapshot names are unique (S grows), so a reader holding an old ``BlobRef`` never reads
other bytes at its offset: at worst the file is gone and it looks the chunk up again.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
from pathlib import Path
from typing import Any, Final

import attrs
import msgpack

from ..errors import CorruptLog
from .files import (
    REAL_FILES,
    TMP_SUFFIX,
    FileOps,
    list_segments,
    list_snapshots,
    log_dir,
    snapshot_name,
    write_all,
)
from .record import (
    FIRST_SEQ,
    SNAPSHOT_MAGIC,
    BlobRef,
    Record,
    RecordType,
    build_checkpoint,
    build_frame,
    pack_segment_header,
)
from .replay import read_blob, read_segment, read_snapshot

logger = logging.getLogger("trio_audio.store")

WRITE_BUFFER_BYTES: Final = 4 * 1024 * 1024


@attrs.define(eq=False)
class Live:
    """One live chunk as the log says: packed metadata, where its audio is, and the seq of
    the record it came from."""

    packed: bytes
    blob: BlobRef
    user_id: str
    session_id: str
    seq: int
    duration_ms: float
    record_seq: int


class Fold:
    """The replay rules as plain state, fed one record at a time (``add``).

    CHUNK indexes a chunk, a multipart group (``meta["group"] = [id, index, count]``) only
    once all of it has been read; UPDATE replaces top-level fields (``{"chunk_id", "set"}``);
    TOMBSTONE removes chunks (``{"chunk_ids": [...]}``). Metadata is kept packed, so memory
    grows with metadata only.
    """

    def __init__(self) -> None:
        self.live: dict[str, Live] = {}
        self.groups: dict[str, list[Record]] = {}
        self.records = 0

    def add(self, record: Record) -> None:
        self.records += 1
        if record.type == RecordType.UPDATE:
            live = self.live.get(record.meta["chunk_id"])
            if live is not None:
                meta = msgpack.unpackb(live.packed)
                meta.update(record.meta["set"])
                live.packed = msgpack.packb(meta)
            return
        if record.type == RecordType.TOMBSTONE:
            for chunk_id in record.meta.get("chunk_ids", ()):
                self.live.pop(chunk_id, None)
            return
        if record.type != RecordType.CHUNK or record.blob is None:
            return
        group = record.meta.get("group")
        if group is None:
            self._put(record)
            return
        members = self.groups.setdefault(group[0], [])
        members.append(record)
        if len(members) == group[2]:
            for member in self.groups.pop(group[0]):
                self._put(member)

    def _put(self, record: Record) -> None:
        meta = dict(record.meta)
        meta.pop("group", None)  # complete: the snapshot holds it as single chunks
        assert record.blob is not None
        self.live[meta["chunk_id"]] = Live(
            packed=msgpack.packb(meta),
            blob=record.blob,
            user_id=meta["user_id"],
            session_id=meta["session_id"],
            seq=meta["seq"],
            duration_ms=float(meta["audio"]["duration_ms"]),
            record_seq=record.seq,
        )


@attrs.frozen
class Snapshot:
    """A snapshot in place (step 3 done): its file, where the log goes on, the new place of
    every live chunk's audio, and the files it replaced (to remove in step 5)."""

    name: str
    start: int
    moved: dict[str, BlobRef]
    replaced: tuple[str, ...]
    records: int
    bytes: int
    folded_records: int


def fold_sealed(data_dir: Path, start: int) -> tuple[Fold, tuple[str, ...]]:
    """Fold the newest snapshot and every segment before seq *start*; their names."""
    fold = Fold()
    snapshots = list_snapshots(data_dir)
    expected = FIRST_SEQ
    if snapshots:
        scan = read_snapshot(data_dir, snapshots[-1], fold.add)
        assert scan.end_seq is not None
        expected = scan.end_seq
    segments = [n for n in list_segments(data_dir) if int(n[:16]) < start]
    for name in segments:
        expected = read_segment(data_dir, name, expected, fold.add)
    if expected != start:
        path = log_dir(data_dir) / (segments[-1] if segments else "")
        msg = f"the sealed log ends before seq {expected}, compaction expected {start}"
        raise CorruptLog(str(path), 0, msg)
    return fold, tuple(snapshots + segments)


def write_snapshot(data_dir: Path, start: int, files: FileOps = REAL_FILES) -> Snapshot | None:
    """Steps 2 and 3: fold what is sealed before *start* into ``<start>.snap``, durably.
    None when nothing was sealed since the last snapshot."""
    directory = log_dir(data_dir)
    if not any(int(n[:16]) < start for n in list_segments(data_dir)):
        return None
    fold, replaced = fold_sealed(data_dir, start)
    name = snapshot_name(start)
    tmp = directory / (name + TMP_SUFFIX)
    salt = secrets.randbits(32)
    moved: dict[str, BlobRef] = {}
    fd = files.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        offset = write_all(files, fd, [pack_segment_header(salt, start, magic=SNAPSHOT_MAGIC)], 0)
        buffers: list[bytes] = []
        buffered = 0
        for live in sorted(fold.live.values(), key=lambda item: item.record_seq):
            audio = read_blob(data_dir, live.blob)
            meta: dict[str, Any] = msgpack.unpackb(live.packed)
            frame = build_frame(salt, RecordType.CHUNK, live.record_seq, meta, audio)
            size = sum(len(b) for b in frame)
            at = offset + buffered + size - len(audio)
            moved[meta["chunk_id"]] = BlobRef(name, at, len(audio))
            buffers.extend(frame)
            buffered += size
            if buffered >= WRITE_BUFFER_BYTES:
                offset += write_all(files, fd, buffers, offset)
                buffers, buffered = [], 0
        buffers.append(build_checkpoint(salt, start - 1))
        offset += write_all(files, fd, buffers, offset)
        files.fdatasync(fd)
    except BaseException:
        files.close(fd)
        files.unlink(tmp)
        raise
    files.close(fd)
    files.rename(tmp, directory / name)
    files.fsync_dir(directory)
    if fold.groups:
        logger.warning(
            "compaction dropped %d records of multipart uploads cut short by a crash",
            sum(len(m) for m in fold.groups.values()),
        )
    return Snapshot(
        name=name,
        start=start,
        moved=moved,
        replaced=replaced,
        records=len(moved),
        bytes=offset,
        folded_records=fold.records,
    )


def remove_replaced(data_dir: Path, snapshot: Snapshot, files: FileOps = REAL_FILES) -> None:
    """Step 5: delete the files the snapshot replaced, then fsync the directory."""
    directory = log_dir(data_dir)
    for name in snapshot.replaced:
        with contextlib.suppress(FileNotFoundError):
            files.unlink(directory / name)
    files.fsync_dir(directory)


def log_size(data_dir: Path) -> int:
    """Bytes of the log's files (snapshot and segments, headers included)."""
    directory = log_dir(data_dir)
    names = list_snapshots(data_dir) + list_segments(data_dir)
    return sum((directory / n).stat().st_size for n in names if (directory / n).exists())
