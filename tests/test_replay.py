"""Replay on real files: torn tails are cut and kept, damage to what was durable is refused."""

from __future__ import annotations

import logging
import random
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from trio_audio.errors import CorruptLog, StoreError
from trio_audio.store.files import MANIFEST_FILE, list_segments
from trio_audio.store.record import (
    FRAME_HEADER,
    FRAME_HEADER_SIZE,
    MAX_RECORD_BYTES,
    SEGMENT_HEADER_SIZE,
    BlobRef,
    Manifest,
    RecordType,
    build_frame,
    pack_manifest,
    parse_manifest,
)
from trio_audio.store.replay import read_blob
from trio_audio.store.writer import LogWriter

from .audio_samples import wav
from .logs import (
    assert_matches,
    chunks,
    drop_manifest,
    flip_bit,
    frame_ends,
    replay_all,
    salt_of,
    seg_path,
    write_records,
)
from .processes import Process

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
    drop_manifest(tmp_path)  # it would name the newest segment: see test_manifest_*
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
    drop_manifest(tmp_path)  # the checkpoint alone proves it
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


def test_read_blob_short_read(tmp_path: Path) -> None:
    written = write_records(tmp_path, chunks(2, size=10), seal=False)
    ref = written[-1][4]
    assert ref is not None
    with pytest.raises(StoreError, match="short read"):
        read_blob(tmp_path, BlobRef(ref.segment, ref.offset, ref.length + 10))
    with pytest.raises(StoreError, match="not a segment"):
        read_blob(tmp_path, BlobRef("../LOCK", 0, 1))


# -- the manifest: how far the log was durable ------------------------------------------------


def manifest_of(data_dir: Path) -> Manifest:
    parsed = parse_manifest((data_dir / "log" / MANIFEST_FILE).read_bytes())
    assert not isinstance(parsed, str)
    return parsed


def test_manifest_names_the_newest_segment_and_its_durable_end(tmp_path: Path) -> None:
    written = write_records(tmp_path, chunks(20, size=300), segment_max_bytes=2000)
    newest = seg_path(tmp_path, -1)
    assert manifest_of(tmp_path) == Manifest(
        int(newest.name[:16]), newest.stat().st_size, written[-1][0]
    )
    report, _ = replay_all(tmp_path)
    assert report.manifest == manifest_of(tmp_path)


def test_truncating_the_newest_segment_below_the_manifest_is_corrupt(tmp_path: Path) -> None:
    write_records(tmp_path, chunks(10, size=300))
    path = seg_path(tmp_path, 0)
    data = path.read_bytes()
    ends = frame_ends(data)
    for cut in (ends[5], ends[5] + 3, SEGMENT_HEADER_SIZE, 10):
        path.write_bytes(data[:cut])
        with pytest.raises(CorruptLog, match="manifest says it was fsync'd to offset") as info:
            replay_all(tmp_path)
        assert info.value.path == str(path)
        assert info.value.offset == (0 if cut < SEGMENT_HEADER_SIZE else min(cut, ends[5]))
        assert path.read_bytes() == data[:cut]  # nothing cut, nothing saved
        assert not list(path.parent.glob("*.torn"))


def test_removing_the_newest_segment_is_corrupt(tmp_path: Path) -> None:
    write_records(tmp_path, chunks(30, size=300), segment_max_bytes=2000)
    newest = seg_path(tmp_path, -1)
    newest.unlink()
    with pytest.raises(CorruptLog, match="the segment is missing, but the manifest") as info:
        replay_all(tmp_path)
    assert (info.value.path, info.value.offset) == (str(newest), 0)


def test_a_log_cut_short_of_the_manifests_durable_seq_is_corrupt(tmp_path: Path) -> None:
    write_records(tmp_path, chunks(3))
    seg_path(tmp_path, 0).unlink()
    manifest = tmp_path / "log" / MANIFEST_FILE
    manifest.write_bytes(pack_manifest(Manifest(0, 0, 3)))  # no segment named, seq 3 durable
    with pytest.raises(CorruptLog, match="the log ends at seq 0, but the manifest says"):
        replay_all(tmp_path)


def test_damaged_manifest_is_corrupt(tmp_path: Path) -> None:
    write_records(tmp_path, chunks(3))
    manifest = tmp_path / "log" / MANIFEST_FILE
    flip_bit(manifest, 30)
    with pytest.raises(CorruptLog, match="manifest crc mismatch") as info:
        replay_all(tmp_path)
    assert (info.value.path, info.value.offset) == (str(manifest), 0)


def test_past_the_manifest_the_torn_tail_rules_hold(tmp_path: Path) -> None:
    # The manifest was last written after record 5; 6..10 were fsync'd (acknowledged) later,
    # with no checkpoint yet: cutting into them is a torn tail, the stated window.
    writer = LogWriter(tmp_path, next_seq=1, manifest_interval_s=1e9)
    for n, item in enumerate(chunks(10)):
        writer.append(*item)
        writer.flush()
        writer.sync()
        if n == 4:
            writer.checkpoint()
    writer.close()
    durable_end = manifest_of(tmp_path).offset
    path = seg_path(tmp_path, 0)
    path.write_bytes(path.read_bytes()[: durable_end + 40])
    report, records = replay_all(tmp_path)
    assert [r.seq for r in records] == [1, 2, 3, 4, 5]
    assert report.torn_bytes == 40 and path.stat().st_size == durable_end


def test_a_log_without_a_manifest_replays_and_the_writer_adds_one(tmp_path: Path) -> None:
    write_records(tmp_path, chunks(5))
    drop_manifest(tmp_path)
    report, records = replay_all(tmp_path)
    assert report.manifest is None and len(records) == 5
    writer = LogWriter(tmp_path, next_seq=6, proven_seq=report.durable_seq)
    writer.checkpoint()  # as the store does at start-up
    writer.close()
    assert manifest_of(tmp_path).durable == 5


def test_writer_rewrites_the_manifest_at_most_every_interval(tmp_path: Path) -> None:
    writer = LogWriter(tmp_path, next_seq=1, segment_max_bytes=2000, manifest_interval_s=1e9)
    writer.append(RecordType.CHUNK, {"n": 0}, b"a" * 100)
    writer.flush()
    writer.sync()  # the first sync writes it
    assert manifest_of(tmp_path).durable == 1
    writer.append(RecordType.CHUNK, {"n": 1}, b"b" * 100)
    writer.flush()
    writer.sync()  # not due
    assert manifest_of(tmp_path).durable == 1
    writer.append(RecordType.CHUNK, {"n": 2}, b"c" * 2000)  # rolls to a new segment
    writer.flush()
    writer.sync()  # the first sync into a new segment names it
    assert manifest_of(tmp_path).segment == 3 and manifest_of(tmp_path).durable == 3
    writer.append(RecordType.CHUNK, {"n": 3}, b"d")
    writer.checkpoint()  # always
    assert manifest_of(tmp_path).durable == 4
    writer.close()


@pytest.mark.parametrize("how", ["renamed", "emptied"])
def test_serve_and_check_refuse_a_log_that_is_gone(
    tmp_path: Path, spawn: type[Process], how: str
) -> None:
    """A data dir that had a log, whose log/ was renamed or emptied: serving it would start
    empty and serve none of the chunks it acknowledged. Both ``serve`` and ``check`` refuse
    it (exit 3) and say what to do; a new data dir still starts."""
    data_dir = tmp_path / "data"
    server = spawn("--asr-engine", "none", directory=data_dir)
    url = server.wait_ready()
    for seq in range(3):
        response = httpx.post(
            f"{url}/upload", params={"user_id": "u", "session_id": "s", "seq": seq},
            content=wav(440, 0.1), headers={"Content-Type": "audio/wav"},
        )  # fmt: skip
        assert response.status_code == 201, response.text
    code, _ = server.stop()
    assert code == 0
    log = data_dir / "log"
    if how == "renamed":
        log.rename(data_dir / "log.old")
    else:
        shutil.rmtree(log)
        log.mkdir()
    serve = ["serve", "--port", "0", "--ws-port", "0", "--data-dir", str(data_dir)]
    for command in (serve, ["check", str(data_dir)]):
        done = subprocess.run(
            [sys.executable, "-m", "trio_audio", *command], capture_output=True, text=True,
            timeout=60,
        )  # fmt: skip
        assert done.returncode == 3, (command, done.stderr)
        if command is serve:  # it says why, and the way out
            assert "is gone" in done.stderr and "LOG_CREATED" in done.stderr, done.stderr
    fresh = spawn("--asr-engine", "none", directory=tmp_path / "fresh")
    fresh.wait_ready()
    assert fresh.stop()[0] == 0
