"""Writing, replaying and damaging logs on real files: the helpers the log's tests share."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from trio_audio.store.files import MANIFEST_FILE, list_segments
from trio_audio.store.record import (
    FRAME_HEADER,
    FRAME_HEADER_SIZE,
    SEGMENT_HEADER_SIZE,
    BlobRef,
    Record,
    RecordType,
    parse_segment_header,
)
from trio_audio.store.replay import ReplayReport, read_blob, replay
from trio_audio.store.writer import LogWriter

Item = tuple[RecordType, dict[str, Any], bytes | None]
Written = tuple[int, RecordType, dict[str, Any], bytes | None, BlobRef | None]


def replay_all(data_dir: Path) -> tuple[ReplayReport, list[Record]]:
    records: list[Record] = []
    report = replay(data_dir, records.append)
    return report, records


def write_records(
    data_dir: Path,
    items: list[Item],
    *,
    next_seq: int = 1,
    segment_max_bytes: int = 1 << 20,
    batch: int = 1,
    seal: bool = True,
) -> list[Written]:
    """Write *items* in batches; *seal* ends as a clean close does (a checkpoint proving
    every record durable, and a manifest saying so), otherwise the last records are fsync'd
    but neither a checkpoint nor the manifest says so yet (the manifest is removed: a crash
    between two of its rewrites, seen by the torn-tail rules alone)."""
    writer = LogWriter(data_dir, next_seq=next_seq, segment_max_bytes=segment_max_bytes)
    written: list[Written] = []
    try:
        for i, (rtype, meta, audio) in enumerate(items):
            seq, ref = writer.append(rtype, meta, audio)
            written.append((seq, rtype, meta, audio, ref))
            if (i + 1) % batch == 0:
                writer.flush()
        if seal:
            writer.checkpoint()
        else:
            writer.flush()
            writer.sync()
    finally:
        writer.close()
    if not seal:
        drop_manifest(data_dir)
    return written


def drop_manifest(data_dir: Path) -> None:
    """Remove the log's manifest, as a log written before there was one."""
    (data_dir / "log" / MANIFEST_FILE).unlink()


def chunks(n: int, size: int = 100, seed: int = 0) -> list[Item]:
    rng = random.Random(seed)
    return [
        (RecordType.CHUNK, {"chunk_id": f"c{i}", "n": i}, rng.randbytes(rng.randrange(size + 1)))
        for i in range(n)
    ]


def assert_matches(data_dir: Path, written: list[Written], records: list[Record]) -> None:
    assert [r.seq for r in records] == [w[0] for w in written]
    for (_, rtype, meta, audio, ref), record in zip(written, records, strict=True):
        assert record.type == rtype
        assert record.meta == meta
        assert record.blob == ref
        if audio is not None:
            assert record.blob is not None
            assert read_blob(data_dir, record.blob) == audio
        else:
            assert record.blob is None


def seg_path(data_dir: Path, index: int) -> Path:
    return data_dir / "log" / list_segments(data_dir)[index]


def flip_bit(path: Path, offset: int, bit: int = 0) -> None:
    with path.open("r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ (1 << bit)]))


def frame_ends(data: bytes) -> list[int]:
    """Where every frame of a segment's bytes ends, checkpoints included."""
    ends, pos = [], SEGMENT_HEADER_SIZE
    while pos + FRAME_HEADER_SIZE <= len(data):
        pos += FRAME_HEADER_SIZE + FRAME_HEADER.unpack_from(data, pos)[0]
        ends.append(pos)
    return ends


def salt_of(path: Path) -> int:
    parsed = parse_segment_header(path.read_bytes()[:SEGMENT_HEADER_SIZE])
    assert not isinstance(parsed, str)
    return parsed[0]
