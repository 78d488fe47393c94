"""The log writer on real files: round trips, segment rolls, failed writes."""

from __future__ import annotations

import errno
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import msgpack
import pytest

from trio_audio.errors import StoreError
from trio_audio.store.files import list_segments, segment_name
from trio_audio.store.record import BlobRef, RecordType
from trio_audio.store.replay import read_blob
from trio_audio.store.writer import LogWriter

from .logs import Item, assert_matches, chunks, replay_all, seg_path, write_records

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


# -- failed writes ----------------------------------------------------------------------------


_FSIZE_CHILD = textwrap.dedent(
    """
    import errno, os, resource, signal, sys
    from pathlib import Path
    from trio_audio.store.files import list_segments
    from trio_audio.store.record import RecordType
    from trio_audio.store.writer import LogWriter

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
    fd = writer._segments.fd
    assert fd is not None
    os.close(fd)  # the fd vanishes underneath: the write and its rollback both fail
    writer.append(RecordType.CHUNK, {"i": 1}, b"b")
    with pytest.raises(StoreError, match="could not be rolled back") as info:
        writer.flush()
    assert isinstance(info.value.__cause__, OSError)
    assert info.value.__cause__.errno == errno.EBADF
    with pytest.raises(StoreError, match="unusable"):
        writer.append(RecordType.CHUNK, {"i": 2}, b"c")
    writer._segments.fd = None  # already closed above
    writer.close()
    _, records = replay_all(tmp_path)
    assert [r.seq for r in records] == [1]
