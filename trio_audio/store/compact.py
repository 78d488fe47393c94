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
2. Fold the old snapshot and the segments before S (``reads.Loader``: the replay rules, into
   an index of locations): live chunks with their updates, without deleted chunks and
   cut-short multipart groups. Each live chunk's metadata (its updates applied) and audio
   are read from the sealed files as the snapshot is written, a batch at a time.
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
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import attrs
import numpy as np

from ..errors import CorruptLog
from .files import (
    REAL_FILES,
    SNAPSHOT_SUFFIX,
    TMP_SUFFIX,
    FileOps,
    list_segments,
    list_snapshots,
    log_dir,
    snapshot_name,
    write_all,
)
from .index import Index, Place
from .keydir import DEAD
from .reads import Loader, read_local
from .record import (
    FIRST_SEQ,
    FRAME_HEADER,
    FRAME_HEADER_SIZE,
    SNAPSHOT_MAGIC,
    BlobRef,
    RecordType,
    build_checkpoint,
    build_frame,
    pack_segment_header,
)
from .replay import read_blob, read_segment, read_snapshot

logger = logging.getLogger("trio_audio.store")

WRITE_BUFFER_BYTES: Final = 4 * 1024 * 1024
READ_BATCH: Final = 1024  # chunks whose metadata is read from the sealed files at a time


@attrs.frozen
class Snapshot:
    """A snapshot in place (step 3 done): its file, where the log goes on, the new place of
    every live chunk's audio, and the files it replaced (to remove in step 5)."""

    name: str
    start: int
    moved: dict[str, Place]
    replaced: tuple[str, ...]
    records: int
    bytes: int
    folded_records: int


def fold_sealed(data_dir: Path, start: int) -> tuple[Loader, tuple[str, ...]]:
    """Fold the newest snapshot and every segment before seq *start* into an index of
    their live chunks (replay's rules); the files read."""
    loader = Loader(Index())
    snapshots = list_snapshots(data_dir)
    expected = FIRST_SEQ
    if snapshots:
        scan = read_snapshot(
            data_dir, snapshots[-1], loader.add, routes=True, on_route=loader.add_route
        )
        assert scan.end_seq is not None
        expected = scan.end_seq
    segments = [n for n in list_segments(data_dir) if int(n[:16]) < start]
    for name in segments:
        expected = read_segment(
            data_dir, name, expected, loader.add, routes=True, on_route=loader.add_route
        )
    if expected != start:
        path = log_dir(data_dir) / (segments[-1] if segments else "")
        msg = f"the sealed log ends before seq {expected}, compaction expected {start}"
        raise CorruptLog(str(path), 0, msg)
    loader.index.ids.merge()
    return loader, tuple(snapshots + segments)


def _in_log_order(index: Index) -> list[str]:
    """The live chunks of *index* in the order of their CHUNK records in the log."""
    table = index.table[: index.count]
    rows = np.flatnonzero(table["sess"] != DEAD)
    names = index.segments
    rank = np.zeros(max(len(names), 1), np.int64)
    for n, name in enumerate(sorted(names, key=lambda x: (not x.endswith(SNAPSHOT_SUFFIX), x))):
        rank[names.index(name)] = n
    order = np.lexsort((table["off"][rows], rank[table["seg"][rows]]))
    return index.ids.chunk_ids(index.table, rows[order].tolist())


def _record_seqs(data_dir: Path, places: list[Place]) -> list[int]:
    """The seq of the record at each of *places* (sealed files, read from their headers)."""
    directory = log_dir(data_dir)
    fds: dict[str, int] = {}
    try:
        out = []
        for place in places:
            fd = fds.get(place.segment)
            if fd is None:
                fd = fds[place.segment] = os.open(directory / place.segment, os.O_RDONLY)
            header = os.pread(fd, FRAME_HEADER_SIZE, place.offset)
            out.append(int(FRAME_HEADER.unpack(header)[3]))
        return out
    finally:
        for fd in fds.values():
            os.close(fd)


def _live_chunks(data_dir: Path, index: Index) -> Iterator[tuple[dict[str, Any], int, bytes]]:
    """Metadata (updates applied), record seq and audio of each live chunk of *index*, in
    log order, read from the sealed files a batch at a time."""
    order = _in_log_order(index)
    for at in range(0, len(order), READ_BATCH):
        locations = [index.location(c) for c in order[at : at + READ_BATCH]]
        metas = read_local(data_dir, locations)
        seqs = _record_seqs(data_dir, [location.record for location in locations])
        for location, (meta, _), record_seq in zip(locations, metas, seqs, strict=True):
            if meta is None:
                msg = "a sealed file went missing during compaction"
                raise CorruptLog(str(log_dir(data_dir) / location.record.segment), 0, msg)
            meta.pop("group", None)  # complete: the snapshot holds it as single chunks
            record = location.record
            audio = read_blob(
                data_dir, BlobRef(record.segment, location.audio_offset, location.audio_length)
            )
            yield meta, record_seq, audio


def write_snapshot(data_dir: Path, start: int, files: FileOps = REAL_FILES) -> Snapshot | None:
    """Steps 2 and 3: fold what is sealed before *start* into ``<start>.snap``, durably.
    None when nothing was sealed since the last snapshot."""
    directory = log_dir(data_dir)
    if not any(int(n[:16]) < start for n in list_segments(data_dir)):
        return None
    loader, replaced = fold_sealed(data_dir, start)
    index = loader.index
    name = snapshot_name(start)
    tmp = directory / (name + TMP_SUFFIX)
    salt = secrets.randbits(32)
    moved: dict[str, Place] = {}
    fd = files.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        offset = write_all(files, fd, [pack_segment_header(salt, start, magic=SNAPSHOT_MAGIC)], 0)
        buffers: list[bytes] = []
        buffered = 0
        for meta, record_seq, audio in _live_chunks(data_dir, index):
            frame = build_frame(salt, RecordType.CHUNK, record_seq, meta, audio)
            size = sum(len(b) for b in frame)
            header = 2 if len(audio) < 1 << 8 else 3 if len(audio) < 1 << 16 else 5
            length = size - FRAME_HEADER_SIZE - header - len(audio)
            moved[meta["chunk_id"]] = Place(name, offset + buffered, length)
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
    if loader.groups:
        logger.warning(
            "compaction dropped %d records of multipart uploads cut short by a crash",
            sum(len(m) for m in loader.groups.values()),
        )
    return Snapshot(
        name=name,
        start=start,
        moved=moved,
        replaced=replaced,
        records=len(moved),
        bytes=offset,
        folded_records=loader.records,
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
