"""The segment log on real files: round trips, rolls, torn tails, corruption, lock, failures."""

from __future__ import annotations

import errno
import logging
import os
import random
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import msgpack
import pytest

from trio_audio.errors import CorruptLog, DataDirLocked, StoreError
from trio_audio.store.log import (
    FRAME_HEADER,
    FRAME_HEADER_SIZE,
    MAX_RECORD_BYTES,
    SEGMENT_HEADER_SIZE,
    BlobRef,
    LogWriter,
    Record,
    RecordType,
    ReplayReport,
    build_frame,
    list_segments,
    lock_data_dir,
    parse_segment_header,
    read_blob,
    replay,
    segment_name,
)

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
    every record durable), otherwise the last records are fsync'd but not yet proven."""
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
    return written


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


# -- round trips ------------------------------------------------------------------------------


def test_round_trip_sizes_and_types(tmp_path: Path) -> None:
    rng = random.Random(1)
    sizes = [0, 1, 255, 256, 4096, 4097, 65535, 65536, 100_000]
    items: list[Item] = []
    for i, size in enumerate(sizes):
        meta = {"chunk_id": f"c{i}", "size": size, "nested": {"a": [1, 2.5, "x"], "b": None}}
        items.append((RecordType.CHUNK, meta, rng.randbytes(size)))
        items.append((RecordType.UPDATE, {"chunk_id": f"c{i}", "transcript": "hé"}, None))
    items.append((RecordType.TOMBSTONE, {"chunk_id": "c0"}, None))
    written = write_records(tmp_path, items, batch=4)

    report, records = replay_all(tmp_path)
    assert [r.seq for r in records] == list(range(1, len(items) + 1))
    assert_matches(tmp_path, written, records)
    assert report.records == len(items)
    assert report.last_seq == len(items)
    assert report.segments == 1
    assert report.torn_bytes == 0 and report.torn_file is None
    assert report.bytes == seg_path(tmp_path, 0).stat().st_size
    # The audio is stored as a msgpack bin: the bytes before the blob are msgpack's header.
    data = seg_path(tmp_path, 0).read_bytes()
    for _, _, _, audio, ref in written:
        if ref is not None:
            assert audio is not None
            packed = msgpack.packb(audio)
            start = ref.offset - (len(packed) - len(audio))
            assert data[start : ref.offset + ref.length] == packed


def test_append_after_replay_continues_seq(tmp_path: Path) -> None:
    first = write_records(tmp_path, chunks(5))
    report, _ = replay_all(tmp_path)
    second = write_records(tmp_path, chunks(4, seed=9), next_seq=report.last_seq + 1, batch=2)
    assert [w[0] for w in second] == [6, 7, 8, 9]
    report, records = replay_all(tmp_path)
    assert report.last_seq == 9 and report.segments == 1
    assert_matches(tmp_path, first + second, records)


def test_writer_properties(tmp_path: Path) -> None:
    writer = LogWriter(tmp_path, next_seq=1)
    before = writer.current_segment
    assert before is None and writer.next_seq == 1
    seq, ref = writer.append(RecordType.CHUNK, {"k": 1}, b"abc")
    assert (seq, writer.next_seq, writer.pending_records) == (1, 2, 1)
    assert ref == BlobRef(segment_name(1), ref.offset if ref else -1, 3)
    writer.flush()
    assert writer.current_segment == segment_name(1)
    assert writer.bytes_written == seg_path(tmp_path, 0).stat().st_size
    writer.sync()
    writer.close()
    writer.close()
    with pytest.raises(StoreError, match="closed"):
        writer.append(RecordType.UPDATE, {})


def test_append_refuses_what_replay_could_not_read(tmp_path: Path) -> None:
    writer = LogWriter(tmp_path, next_seq=1)
    with pytest.raises(ValueError, match="needs its audio"):
        writer.append(RecordType.CHUNK, {"a": 1})
    with pytest.raises(ValueError, match="carries no audio"):
        writer.append(RecordType.UPDATE, {"a": 1}, b"x")
    with pytest.raises(TypeError):
        writer.append(RecordType.UPDATE, {1: "int key"})  # type: ignore[dict-item]
    with pytest.raises(TypeError):
        writer.append(RecordType.UPDATE, {"a": object()})
    assert writer.next_seq == 1
    writer.close()


def test_segment_roll(tmp_path: Path) -> None:
    items = chunks(60, size=600)
    items.insert(30, (RecordType.CHUNK, {"big": True}, b"B" * 10_000))  # alone in a segment
    written = write_records(tmp_path, items, segment_max_bytes=4096, batch=7)
    names = list_segments(tmp_path)
    assert len(names) > 5
    big = written[30][4]
    assert big is not None and big.segment == segment_name(31)
    for name in names:
        size = (tmp_path / "log" / name).stat().st_size
        assert size <= 4096 or name == big.segment
    assert [w[0] for w in written if w[4] and w[4].segment == big.segment] == [31]
    report, records = replay_all(tmp_path)
    assert report.segments == len(names)
    assert_matches(tmp_path, written, records)
    # Each segment is named after its first record's seq.
    firsts = {r.segment: r.seq for r in reversed(records)}
    assert all(int(name[:16]) == firsts[name] for name in names)

    more = write_records(
        tmp_path, chunks(10, size=600, seed=3), next_seq=report.last_seq + 1, segment_max_bytes=4096
    )
    report, records = replay_all(tmp_path)
    assert_matches(tmp_path, written + more, records)


# -- torn tails -------------------------------------------------------------------------------


def test_torn_tail_at_every_offset(tmp_path: Path) -> None:
    source = tmp_path / "source"
    written = write_records(source, chunks(30, size=60), segment_max_bytes=1200, batch=3)
    names = list_segments(source)
    assert len(names) >= 2
    _, records = replay_all(source)
    last = source / "log" / names[-1]
    original = last.read_bytes()
    record_ends = [
        r.offset + FRAME_HEADER_SIZE + FRAME_HEADER.unpack_from(original, r.offset)[0]
        for r in records
        if r.segment == names[-1]
    ]
    all_ends = frame_ends(original)  # with the closing checkpoint
    assert len(all_ends) == len(record_ends) + 1
    older = [r for r in records if r.segment != names[-1]]

    for cut in range(len(original) + 1):
        data_dir = tmp_path / f"cut{cut}"
        (data_dir / "log").mkdir(parents=True)
        for name in names[:-1]:
            shutil.copy(source / "log" / name, data_dir / "log" / name)
        (data_dir / "log" / names[-1]).write_bytes(original[:cut])

        report, got = replay_all(data_dir)

        kept_in_last = [end for end in record_ends if end <= cut]
        assert len(got) == len(older) + len(kept_in_last), cut
        assert_matches(data_dir, written[: len(got)], got)
        path = data_dir / "log" / names[-1]
        if cut < SEGMENT_HEADER_SIZE:
            assert not path.exists()
            good_end = 0
        else:
            good_end = max([SEGMENT_HEADER_SIZE, *(end for end in all_ends if end <= cut)])
            assert path.stat().st_size == good_end
        assert report.torn_bytes == cut - good_end
        if cut > good_end:
            assert report.torn_file is not None
            assert Path(report.torn_file).read_bytes() == original[good_end:cut]
        else:
            assert report.torn_file is None

        seq = write_records(data_dir, chunks(1, seed=cut), next_seq=report.last_seq + 1)[0][0]
        assert seq == len(got) + 1
        report2, again = replay_all(data_dir)
        assert [r.seq for r in again] == list(range(1, len(got) + 2))
        assert report2.torn_bytes == 0
        shutil.rmtree(data_dir)


@pytest.mark.parametrize("n", [1, 16, 17, 100, 5000])
def test_zeros_after_last_record_are_torn(tmp_path: Path, n: int) -> None:
    written = write_records(tmp_path, chunks(10))
    path = seg_path(tmp_path, 0)
    size = path.stat().st_size
    with path.open("ab") as f:
        f.write(bytes(n))
    report, records = replay_all(tmp_path)
    assert_matches(tmp_path, written, records)
    assert report.torn_bytes == n
    assert path.stat().st_size == size


@pytest.mark.parametrize("seed", range(8))
def test_garbage_after_last_record_is_torn(tmp_path: Path, seed: int) -> None:
    written = write_records(tmp_path, chunks(10))
    path = seg_path(tmp_path, 0)
    size = path.stat().st_size
    rng = random.Random(seed)
    garbage = rng.randbytes(rng.choice([1, 20, 300, 70_000]))
    with path.open("ab") as f:
        f.write(garbage)
    report, records = replay_all(tmp_path)
    assert_matches(tmp_path, written, records)
    assert report.torn_bytes == len(garbage)
    assert report.torn_file is not None
    assert Path(report.torn_file).read_bytes() == garbage
    assert path.stat().st_size == size


def test_torn_tail_is_logged_and_torn_files_never_overwritten(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_records(tmp_path, chunks(3))
    path = seg_path(tmp_path, 0)
    torn_files = []
    for tail in (b"first tail", b"second tail"):
        with path.open("ab") as f:
            f.write(tail)
        with caplog.at_level(logging.WARNING, logger="trio_audio.store"):
            report, _ = replay_all(tmp_path)
        assert report.torn_file is not None
        torn_files.append(report.torn_file)
        assert Path(report.torn_file).read_bytes() == tail
    assert torn_files[0] != torn_files[1]
    assert torn_files[0] == str(path) + ".torn"
    warnings = [r for r in caplog.records if r.name == "trio_audio.store"]
    assert len(warnings) == 2 and "torn tail" in warnings[0].getMessage()


def test_length_beyond_bound_in_newest_segment_is_torn(tmp_path: Path) -> None:
    written = write_records(tmp_path, chunks(4))
    path = seg_path(tmp_path, 0)
    with path.open("ab") as f:
        f.write(FRAME_HEADER.pack(MAX_RECORD_BYTES + 1, 0, 1, 5) + b"x" * 100)
    report, records = replay_all(tmp_path)
    assert_matches(tmp_path, written, records)
    assert report.torn_reason is not None and "exceeds" in report.torn_reason


def test_newest_segment_with_zeroed_header_is_removed(tmp_path: Path) -> None:
    written = write_records(tmp_path, chunks(20, size=300), segment_max_bytes=2000)
    names = list_segments(tmp_path)
    newest = tmp_path / "log" / names[-1]
    newest.write_bytes(bytes(newest.stat().st_size))  # size reached the disk, data did not
    report, records = replay_all(tmp_path)
    assert not newest.exists()
    assert report.segments == len(names) - 1
    assert_matches(tmp_path, written[: len(records)], records)


def test_newest_segment_with_bad_full_header_is_corrupt(tmp_path: Path) -> None:
    write_records(tmp_path, chunks(20, size=300), segment_max_bytes=2000)
    newest = seg_path(tmp_path, -1)
    flip_bit(newest, 3)
    with pytest.raises(CorruptLog) as info:
        replay_all(tmp_path)
    assert info.value.path == str(newest) and info.value.offset == 0


# -- corruption -------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["length", "crc", "type", "seq", "meta", "audio", "end"])
def test_flipped_bit_in_older_segment_is_corrupt(tmp_path: Path, where: str) -> None:
    write_records(tmp_path, chunks(20, size=300), segment_max_bytes=2000)
    _, records = replay_all(tmp_path)
    first_segment = list_segments(tmp_path)[0]
    victim = [r for r in records if r.segment == first_segment][1]
    assert victim.blob is not None
    path = tmp_path / "log" / first_segment
    offsets = {
        "length": victim.offset + 1,
        "crc": victim.offset + 5,
        "type": victim.offset + 8,
        "seq": victim.offset + 9,
        "meta": victim.offset + FRAME_HEADER_SIZE + 2,
        "audio": victim.blob.offset,
        "end": victim.blob.offset + victim.blob.length - 1,
    }
    if victim.blob.length == 0 and where in ("audio", "end"):
        pytest.skip("empty audio")
    flip_bit(path, offsets[where], bit=6)
    with pytest.raises(CorruptLog) as info:
        replay_all(tmp_path)
    assert info.value.path == str(path)
    assert info.value.offset == victim.offset
    assert str(path) in str(info.value) and str(victim.offset) in str(info.value)


def test_bad_header_of_older_segment_is_corrupt(tmp_path: Path) -> None:
    write_records(tmp_path, chunks(20, size=300), segment_max_bytes=2000)
    path = seg_path(tmp_path, 0)
    flip_bit(path, 20)
    with pytest.raises(CorruptLog) as info:
        replay_all(tmp_path)
    assert (info.value.path, info.value.offset) == (str(path), 0)


def test_missing_segment_is_corrupt(tmp_path: Path) -> None:
    write_records(tmp_path, chunks(30, size=300), segment_max_bytes=2000)
    assert len(list_segments(tmp_path)) >= 3
    seg_path(tmp_path, 1).unlink()
    with pytest.raises(CorruptLog, match="expected"):
        replay_all(tmp_path)
    seg_path(tmp_path, 0).unlink()
    with pytest.raises(CorruptLog, match="expected 1"):
        replay_all(tmp_path)


def test_flipped_bit_in_newest_segment_last_record_is_torn(tmp_path: Path) -> None:
    # As a crash leaves it: the last batch fsync'd, no checkpoint after it yet.
    written = write_records(tmp_path, chunks(20, size=300), segment_max_bytes=2000, seal=False)
    _, records = replay_all(tmp_path)
    last = records[-1]
    path = tmp_path / "log" / last.segment
    size = path.stat().st_size
    flip_bit(path, size - 1)
    report, got = replay_all(tmp_path)
    assert_matches(tmp_path, written[:-1], got)
    assert report.torn_bytes == size - last.offset
    assert path.stat().st_size == last.offset


def test_flipped_bit_mid_newest_segment_is_corruption_not_a_torn_tail(tmp_path: Path) -> None:
    # A later checkpoint says the record had been fsync'd: a crash cannot have damaged it,
    # so replay refuses (naming file and offset) and changes nothing.
    write_records(tmp_path, chunks(10, size=300))
    _, records = replay_all(tmp_path)
    path = seg_path(tmp_path, 0)
    flip_bit(path, records[4].offset + 12)
    damaged = path.read_bytes()
    with pytest.raises(CorruptLog, match="crc mismatch in a record that was fsync'd") as info:
        replay_all(tmp_path)
    assert info.value.offset == records[4].offset
    assert info.value.path == str(path)
    assert path.read_bytes() == damaged
    assert not list(path.parent.glob("*.torn"))


def test_crc_valid_frame_with_wrong_seq_is_corrupt_even_at_the_tail(tmp_path: Path) -> None:
    write_records(tmp_path, chunks(3))
    path = seg_path(tmp_path, 0)
    frame = b"".join(build_frame(salt_of(path), RecordType.UPDATE, 7, {"x": 1}))
    size = path.stat().st_size
    with path.open("ab") as f:
        f.write(frame)
    with pytest.raises(CorruptLog, match="seq 7, expected 4") as info:
        replay_all(tmp_path)
    assert info.value.offset == size


def test_crc_valid_frame_with_bad_payload_is_corrupt(tmp_path: Path) -> None:
    write_records(tmp_path, chunks(3))
    path = seg_path(tmp_path, 0)
    salt = salt_of(path)
    # A CHUNK whose payload is a map and no audio bin, framed with the right salt and seq.
    frame = b"".join(build_frame(salt, RecordType.UPDATE, 4, {"x": 1}))
    frame = frame[:8] + bytes([RecordType.CHUNK]) + frame[9:]
    import crc32c

    crc = crc32c.crc32c(frame[8:], value=crc32c.crc32c(salt.to_bytes(4, "little")))
    frame = frame[:4] + crc.to_bytes(4, "little") + frame[8:]
    with path.open("ab") as f:
        f.write(frame)
    with pytest.raises(CorruptLog, match="audio is not a msgpack bin"):
        replay_all(tmp_path)


# -- salt: audio that looks like a frame ------------------------------------------------------


def test_embedded_frame_in_audio_never_replays(tmp_path: Path) -> None:
    # Record 1's audio is a perfectly framed record 2 (real framing code, other salt).
    inner = b"".join(build_frame(0x1234ABCD, RecordType.CHUNK, 2, {"evil": True}, b"E" * 50))
    written = write_records(tmp_path, [(RecordType.CHUNK, {"a": 0}, inner)], seal=False)
    path = seg_path(tmp_path, 0)
    original = path.read_bytes()
    ref = written[0][4]
    assert ref is not None
    for cut in range(SEGMENT_HEADER_SIZE, len(original)):
        path.write_bytes(original[:cut])
        report, records = replay_all(tmp_path)
        assert records == [] and report.last_seq == 0, cut
        assert path.stat().st_size == SEGMENT_HEADER_SIZE
    # A frame-looking audio is no frame even at a frame boundary with the right next seq.
    path.write_bytes(original[:SEGMENT_HEADER_SIZE] + original[ref.offset :])
    report, records = replay_all(tmp_path)
    assert records == [] and report.torn_bytes == len(inner)
    # ... and whole, record 1 replays with the frame-looking bytes as its audio only.
    path.write_bytes(original)
    _, records = replay_all(tmp_path)
    assert [r.seq for r in records] == [1]
    assert records[0].blob is not None and read_blob(tmp_path, records[0].blob) == inner


# -- lock -------------------------------------------------------------------------------------


def test_lock_twice_in_one_process(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    fd = lock_data_dir(data_dir)
    try:
        assert (data_dir / "log").is_dir()
        with pytest.raises(DataDirLocked) as info:
            lock_data_dir(data_dir)
        message = str(info.value)
        assert str(data_dir) in message and f"pid {os.getpid()}" in message
        assert "in use by another trio-audio process" in message
    finally:
        os.close(fd)
    os.close(lock_data_dir(data_dir))


_LOCK_CHILD = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    from trio_audio.errors import DataDirLocked
    from trio_audio.store.log import lock_data_dir
    try:
        fd = lock_data_dir(Path(sys.argv[1]))
    except DataDirLocked as exc:
        print("LOCKED", exc, flush=True)
        sys.exit(3)
    print("OWNER", os.getpid(), flush=True)
    sys.stdin.read()
    """
)


def test_lock_across_processes(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    fd = lock_data_dir(data_dir)
    try:
        child = subprocess.run(
            [sys.executable, "-c", _LOCK_CHILD, str(data_dir)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert child.returncode == 3, child.stderr
        assert f"pid {os.getpid()}" in child.stdout and str(data_dir) in child.stdout
    finally:
        os.close(fd)

    with subprocess.Popen(
        [sys.executable, "-c", _LOCK_CHILD, str(data_dir)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as owner:
        assert owner.stdout is not None and owner.stdin is not None
        line = owner.stdout.readline().split()
        assert line == ["OWNER", str(owner.pid)]
        with pytest.raises(DataDirLocked, match=f"pid {owner.pid}"):
            lock_data_dir(data_dir)
        owner.stdin.close()
        assert owner.wait(timeout=60) == 0
    os.close(lock_data_dir(data_dir))  # released when its owner exited


# -- failed writes ----------------------------------------------------------------------------


_FSIZE_CHILD = textwrap.dedent(
    """
    import errno, os, resource, signal, sys
    from pathlib import Path
    from trio_audio.store.log import LogWriter, RecordType, list_segments

    data_dir, rolling = Path(sys.argv[1]), sys.argv[2] == "rolling"
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    w = LogWriter(data_dir, next_seq=1)
    for i in range(5):
        w.append(RecordType.CHUNK, {"i": i}, bytes([i]) * 1000)
    w.flush()
    w.sync()
    w.close()
    seg = data_dir / "log" / w.current_segment
    good = seg.stat().st_size
    before = list_segments(data_dir)

    # Record 6 fits under the limit, a later one is cut by it: a short write, then EFBIG.
    # Rolling: record 6 fills the old segment, 7 and 8 go to a new one, 9 fails there.
    limit = good + 3100
    w = LogWriter(data_dir, next_seq=6, segment_max_bytes=good + 5000 if rolling else 1 << 20)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    refs = [w.append(RecordType.CHUNK, {"i": i}, bytes([i]) * 3000)[1] for i in range(5, 9)]
    assert (refs[1].segment != refs[0].segment) == rolling, refs
    assert refs[3].segment == refs[1].segment, refs
    try:
        w.flush()
    except OSError as exc:
        assert exc.errno == errno.EFBIG, exc
    else:
        raise AssertionError("flush did not fail")
    assert seg.stat().st_size == good, (seg.stat().st_size, good)
    assert list_segments(data_dir) == before, (list_segments(data_dir), before)
    assert w.next_seq == 6 and w.current_segment == seg.name, (w.next_seq, w.current_segment)

    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    seq, _ = w.append(RecordType.CHUNK, {"i": "after"}, b"z" * 1500)
    assert seq == 6
    w.flush()
    w.sync()
    w.close()
    print("OK", good)
    """
)


@pytest.mark.parametrize("mode", ["same-segment", "rolling"])
def test_failed_flush_leaves_last_good_record(tmp_path: Path, mode: str) -> None:
    child = subprocess.run(
        [sys.executable, "-c", _FSIZE_CHILD, str(tmp_path), mode],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert child.returncode == 0, child.stderr
    assert child.stdout.startswith("OK")
    report, records = replay_all(tmp_path)
    assert report.torn_bytes == 0
    assert [r.seq for r in records] == [1, 2, 3, 4, 5, 6]
    assert [r.meta["i"] for r in records] == [0, 1, 2, 3, 4, "after"]
    blob = records[-1].blob
    assert blob is not None and read_blob(tmp_path, blob) == b"z" * 1500


def test_unrecoverable_write_failure_makes_writer_unusable(tmp_path: Path) -> None:
    writer = LogWriter(tmp_path, next_seq=1)
    writer.append(RecordType.CHUNK, {"i": 0}, b"a")
    writer.flush()
    fd = writer._fd
    assert fd is not None
    os.close(fd)  # the fd vanishes underneath: the write and its rollback both fail
    writer.append(RecordType.CHUNK, {"i": 1}, b"b")
    with pytest.raises(StoreError, match="could not be rolled back") as info:
        writer.flush()
    assert isinstance(info.value.__cause__, OSError)
    assert info.value.__cause__.errno == errno.EBADF
    with pytest.raises(StoreError, match="unusable"):
        writer.append(RecordType.CHUNK, {"i": 2}, b"c")
    writer._fd = None  # already closed above
    writer.close()
    _, records = replay_all(tmp_path)
    assert [r.seq for r in records] == [1]


def test_read_blob_short_read(tmp_path: Path) -> None:
    written = write_records(tmp_path, chunks(2, size=10), seal=False)
    ref = written[-1][4]
    assert ref is not None
    with pytest.raises(StoreError, match="short read"):
        read_blob(tmp_path, BlobRef(ref.segment, ref.offset, ref.length + 10))
    with pytest.raises(StoreError, match="not a segment"):
        read_blob(tmp_path, BlobRef("../LOCK", 0, 1))
