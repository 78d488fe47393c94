"""Storage that loses nothing: power loss, bit flips, compaction crashes, deletes, disk faults.

The log runs on real files; the doubles in ``faults.py`` sit under its file layer and only
add what a power cut or a failing disk does. End-to-end tests run the real server.
"""

from __future__ import annotations

import errno
import logging
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trio_audio.config import Config
from trio_audio.errors import CorruptLog, StoreError
from trio_audio.service import Running, serve
from trio_audio.store.check import check
from trio_audio.store.files import MANIFEST_FILE, list_segments, list_snapshots, segment_name
from trio_audio.store.record import (
    FRAME_HEADER,
    FRAME_HEADER_SIZE,
    SEGMENT_HEADER_SIZE,
    RecordType,
    parse_manifest,
)
from trio_audio.store.replay import read_blob
from trio_audio.store.store import Store
from trio_audio.store.writer import LogWriter

from .audio_samples import pcm_s16le, wav
from .conftest import Server, StartServer, upload_params
from .faults import Crash, FaultyFiles, PowerLossFiles
from .logs import flip_bit, frame_ends, replay_all

Written = tuple[int, dict[str, Any], bytes]


def log_files(data_dir: Path) -> list[str]:
    return sorted(os.listdir(data_dir / "log"))


# -- power loss --------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["always", "interval"])
def test_power_loss_loses_only_what_was_not_fsynced(tmp_path: Path, mode: str) -> None:
    for schedule in range(40):
        rng = random.Random(f"{mode}{schedule}")
        source = tmp_path / f"run{schedule}"
        files = PowerLossFiles()
        writer = LogWriter(source, next_seq=1, segment_max_bytes=2500, files=files)
        written: list[Written] = []
        acked = durable = 0

        def batch(
            n: int,
            written: list[Written] = written,
            writer: LogWriter = writer,
            rng: random.Random = rng,
        ) -> None:
            for _ in range(n):
                meta = {"chunk_id": f"c{len(written)}", "pad": "x" * rng.randrange(200)}
                audio = rng.randbytes(rng.choice([0, 7, 300, 1400]))
                seq, _ = writer.append(RecordType.CHUNK, meta, audio)
                written.append((seq, meta, audio))
            writer.flush()

        for _ in range(rng.randint(1, 12)):
            batch(rng.randint(1, 4))
            if mode == "always":  # the store fsyncs before it answers
                writer.sync()
                acked = durable = len(written)
            else:  # answered once written; fsync'd every so often
                acked = len(written)
                if rng.random() < 0.3:
                    writer.sync()
                    durable = len(written)
        if rng.random() < 0.5:
            batch(rng.randint(1, 3))  # the power goes while this batch is in flight
        crashed = tmp_path / f"crash{schedule}"
        files.crash_image(source, crashed, rng)
        writer.close()

        report, records = replay_all(crashed)  # never raises: only unsynced writes were hit
        got = [(r.seq, r.meta, read_blob(crashed, r.blob)) for r in records if r.blob]
        assert got == written[: len(got)], schedule  # a prefix, never garbage or a gap
        assert len(got) >= (acked if mode == "always" else durable), schedule

        # The log goes on, and from now on every record is proven durable: a flipped bit
        # in any of them is corruption, never a torn tail.
        after = LogWriter(crashed, next_seq=report.last_seq + 1, proven_seq=report.durable_seq)
        after.append(RecordType.UPDATE, {"chunk_id": "c0", "set": {}})
        after.checkpoint()
        after.close()
        _, again = replay_all(crashed)
        assert [r.seq for r in again] == list(range(1, len(got) + 2))
        victim = rng.choice(again)
        flip_bit(crashed / "log" / victim.segment, victim.offset + FRAME_HEADER_SIZE - 1)
        with pytest.raises(CorruptLog) as info:
            replay_all(crashed)
        assert info.value.offset == victim.offset
        shutil.rmtree(source)
        shutil.rmtree(crashed)


def test_every_bit_flip_before_the_last_record_is_corruption(tmp_path: Path) -> None:
    rng = random.Random(5)
    source = tmp_path / "source"
    writer = LogWriter(source, next_seq=1, segment_max_bytes=900)
    for n in range(9):
        writer.append(RecordType.CHUNK, {"chunk_id": f"c{n}"}, rng.randbytes(rng.randrange(120)))
        if n % 3 == 2:
            writer.flush()
            writer.sync()  # later batches carry a checkpoint
    writer.append(RecordType.UPDATE, {"chunk_id": "c1", "set": {"a": 1}})
    writer.checkpoint()  # a clean close
    writer.close()
    names = list_segments(source)
    assert len(names) >= 2
    for index, name in enumerate(names):
        original = (source / "log" / name).read_bytes()
        last = frame_ends(original)[-2] if index == len(names) - 1 else len(original)
        for offset in range(last):
            data_dir = tmp_path / "flip"
            shutil.copytree(source, data_dir)
            flip_bit(data_dir / "log" / name, offset, bit=offset % 8)
            with pytest.raises(CorruptLog) as info:
                replay_all(data_dir)
            assert info.value.path == str(data_dir / "log" / name)
            assert str(info.value.offset) in str(info.value)
            shutil.rmtree(data_dir)


def test_valid_records_after_garbage_that_no_checkpoint_covers_are_torn(tmp_path: Path) -> None:
    # A power cut kept a later write and garbled an earlier one, both after the last fsync.
    writer = LogWriter(tmp_path, next_seq=1)
    for n in range(3):
        writer.append(RecordType.CHUNK, {"chunk_id": f"c{n}"}, b"a" * 50)
    writer.checkpoint()
    for n in range(3, 6):
        writer.append(RecordType.CHUNK, {"chunk_id": f"c{n}"}, b"b" * 50)
    writer.flush()  # not fsync'd
    writer.close()
    _, records = replay_all(tmp_path)
    path = tmp_path / "log" / records[0].segment
    flip_bit(path, records[3].offset + 20)
    size = path.stat().st_size
    report, records = replay_all(tmp_path)
    assert [r.meta["chunk_id"] for r in records] == ["c0", "c1", "c2"]
    assert report.torn_file is not None and report.torn_bytes == size - path.stat().st_size


# -- compaction ----------------------------------------------------------------------------------


def chunk_meta(n: int, session: str = "s") -> dict[str, Any]:
    return {
        "chunk_id": f"c{n}", "user_id": "u", "session_id": session, "seq": n,
        "checksum": f"sum{n}", "content_type": "audio/wav", "audio": {"duration_ms": 10.0},
        "transcript": {"status": "disabled", "text": "", "words": []},
    }  # fmt: skip


def build_log(data_dir: Path, first: int, count: int) -> None:
    writer = LogWriter(data_dir, next_seq=first, segment_max_bytes=1500)
    for n in range(first, first + count):
        writer.append(RecordType.CHUNK, chunk_meta(n, f"s{n % 3}"), bytes([n]) * (100 + n))
        if n % 4 == 0:
            writer.append(RecordType.UPDATE, {"chunk_id": f"c{n}", "set": {"note": n}})
        if n % 5 == 0:
            writer.append(RecordType.TOMBSTONE, {"chunk_ids": [f"c{n - 2}"]})
        writer.flush()
    writer.checkpoint()
    writer.close()


async def state_of(data_dir: Path) -> dict[str, Any]:
    async with trio.open_nursery() as nursery:
        store: Store = await nursery.start(Store(Config(data_dir=data_dir)).run)
        state = {c: (await store.get(c), (await store.read_audio(c))[0]) for c in store.chunk_ids()}
        nursery.cancel_scope.cancel()
    return state


async def test_compaction_replays_to_the_same_state_from_a_crash_at_every_step(
    tmp_path: Path,
) -> None:
    base = tmp_path / "base"
    build_log(base, 1, 15)
    async with trio.open_nursery() as nursery:  # a first compaction: the next one replaces it
        store: Store = await nursery.start(Store(Config(data_dir=base)).run)
        assert await store.compact() is not None
        nursery.cancel_scope.cancel()
    last = replay_all(base)[0].last_seq
    build_log(base, last + 1, 10)
    expected = await state_of(base)
    assert len(expected) > 10

    steps: int | None = None
    n = 0
    while steps is None or n < steps:
        data_dir = tmp_path / (f"step{n}" if steps is not None else "whole")
        shutil.copytree(base, data_dir)
        files = FaultyFiles()
        async with trio.open_nursery() as nursery:
            store = await nursery.start(Store(Config(data_dir=data_dir), files=files).run)
            begin = files.calls
            files.crash_at = begin + n if steps is not None else None
            if steps is None:
                assert await store.compact() is not None
                steps = files.calls - begin
                files.crash_at = None
            else:
                with pytest.raises(Crash):
                    await store.compact()
                # What a crash leaves behind: the files as they are now.
                shutil.copytree(data_dir, tmp_path / f"image{n}")
            nursery.cancel_scope.cancel()
        if files.crash_at is not None:
            image = tmp_path / f"image{n}"
            assert await state_of(image) == expected, n
            names = log_files(image)
            assert all(
                name.endswith((".seg", ".snap")) or name == MANIFEST_FILE for name in names
            ), (n, names)
            assert len(list_snapshots(image)) == 1
            n += 1
        else:
            assert await state_of(data_dir) == expected
            assert len(list_snapshots(data_dir)) == 1
    assert steps is not None and steps >= 6  # open, write, fsync, rename, fsync dir, unlink...


def test_a_damaged_snapshot_is_corruption(tmp_path: Path) -> None:
    build_log(tmp_path, 1, 8)

    async def compact() -> None:
        async with trio.open_nursery() as nursery:
            store: Store = await nursery.start(Store(Config(data_dir=tmp_path)).run)
            await store.compact()
            nursery.cancel_scope.cancel()

    trio.run(compact)
    snapshot = tmp_path / "log" / list_snapshots(tmp_path)[0]
    size = snapshot.stat().st_size
    for offset in (5, 40, size // 2, size - 3):
        original = snapshot.read_bytes()
        flip_bit(snapshot, offset)
        with pytest.raises(CorruptLog) as info:
            replay_all(tmp_path)
        assert info.value.path == str(snapshot)
        snapshot.write_bytes(original)
    snapshot.write_bytes(original[: size - 10])  # a snapshot is renamed in only when whole
    with pytest.raises(CorruptLog):
        replay_all(tmp_path)


# -- deletes over HTTP ----------------------------------------------------------------------------


async def upload_again(server: Server) -> httpx.Response:
    async with server.client() as client:
        return await client.post("/upload", params=upload_params(session_id="t"), content=wav())


async def upload(client: httpx.AsyncClient, session: str, freq: float) -> dict[str, Any]:
    response = await client.post(
        "/upload", params=upload_params(session_id=session), content=wav(freq, 0.25)
    )
    assert response.status_code == 201, response.text
    chunk: dict[str, Any] = response.json()
    return chunk


async def test_deletes_are_durable_and_compaction_reclaims_their_space(
    start_server: StartServer, data_dir: Path
) -> None:
    server = await start_server()
    async with server.client() as client:
        kept = [await upload(client, "keep", f) for f in (300, 400)]
        gone = await upload(client, "keep", 500)
        doomed = [await upload(client, "drop", f) for f in (600, 700, 800)]

        response = await client.delete(f"/chunks/{gone['chunk_id']}")
        assert response.json() == {"chunk_id": gone["chunk_id"], "deleted": True}
        assert (await client.get(f"/chunks/{gone['chunk_id']}")).status_code == 404
        assert (await client.get(f"/chunks/{gone['chunk_id']}/audio")).status_code == 404
        again = await client.delete(f"/chunks/{gone['chunk_id']}")
        assert again.status_code == 404 and again.json()["code"] == "not_found"

        response = await client.delete("/sessions/alice", params={"session_id": "drop"})
        assert response.status_code == 200
        assert response.json()["deleted"] == 3
        assert sorted(response.json()["chunk_ids"]) == sorted(c["chunk_id"] for c in doomed)
        missing = await client.delete("/sessions/alice", params={"session_id": "drop"})
        assert missing.status_code == 404
        no_id = await client.delete("/sessions/alice")
        assert no_id.status_code == 400 and no_id.json()["code"] == "missing_field"
        bad = await client.delete("/chunks/..%2F..")
        assert bad.status_code in (400, 404)
        sessions = (await client.get("/sessions/alice")).json()["sessions"]
        assert [s["session_id"] for s in sessions] == ["keep"]
        assert [c["chunk_id"] for c in sessions[0]["chunks"]] == [c["chunk_id"] for c in kept]
    await server.stop()

    server = await start_server()  # the deletes survive a restart
    store = server.running.store
    assert sorted(store.chunk_ids()) == sorted(c["chunk_id"] for c in kept)
    before = sum(p.stat().st_size for p in (data_dir / "log").iterdir())
    snapshot = await store.compact()
    assert snapshot is not None and snapshot.records == 2
    after = sum(p.stat().st_size for p in (data_dir / "log").iterdir())
    assert before - after > 4 * len(wav(500, 0.25))  # the deleted audio is gone from disk
    async with server.client() as client:
        for chunk in kept:  # reads follow the audio into the snapshot
            audio = await client.get(f"/chunks/{chunk['chunk_id']}/audio")
            assert audio.content == wav(300 if chunk is kept[0] else 400, 0.25)
        await upload(client, "keep", 900)  # writes go on after the snapshot
    await server.stop()

    server = await start_server()
    assert server.running.store.stats().chunks == 3
    assert server.running.store.stats().snapshot == snapshot.name


async def test_deleting_enough_compacts_by_itself(start_server: StartServer) -> None:
    server = await start_server(compact_min_bytes=1, compact_dead_ratio=0.1)
    async with server.client() as client:
        chunks = [await upload(client, "s", f) for f in (300, 400, 500)]
        for chunk in chunks[:2]:
            assert (await client.delete(f"/chunks/{chunk['chunk_id']}")).status_code == 200
        with trio.fail_after(10):
            while server.running.store.stats().compactions == 0:  # noqa: ASYNC110 - polled, bounded
                await trio.sleep(0.01)
        audio = await client.get(f"/chunks/{chunks[2]['chunk_id']}/audio")
        assert audio.content == wav(500, 0.25)


# -- disk faults ----------------------------------------------------------------------------------


async def test_disk_full_gives_507_keeps_reads_and_resumes(
    start_server: StartServer, data_dir: Path
) -> None:
    files = FaultyFiles()
    server = await start_server(files=files, store_reserve_bytes=0)
    async with server.client() as client:
        first = await upload(client, "s", 300)
        files.full = True  # a short write, then ENOSPC
        for _ in range(2):
            response = await client.post("/upload", params=upload_params(), content=wav(400))
            assert response.status_code == 507, response.text
            problem = response.json()
            assert problem["code"] == "insufficient_storage" and problem["retryable"] is True
            assert response.headers["content-type"].startswith("application/problem+json")
        deleted = await client.delete(f"/chunks/{first['chunk_id']}")
        assert deleted.status_code == 507  # a tombstone needs room too: here, no reserve
        assert (await client.get(f"/chunks/{first['chunk_id']}")).json() == first
        audio = await client.get(f"/chunks/{first['chunk_id']}/audio")
        assert audio.content == wav(300, 0.25)
        files.full = False  # room again: no restart needed
        second = await upload(client, "s", 500)
        assert second["seq"] == 1
    assert files.short_writes == 1
    await server.stop()
    report, records = replay_all(data_dir)
    assert report.torn_bytes == 0  # the failed writes were cut back to the last good record
    assert [r.meta["chunk_id"] for r in records] == [first["chunk_id"], second["chunk_id"]]


@pytest.mark.parametrize("write", ["upload", "delete"])
async def test_fsync_failure_never_acknowledges_and_stops_the_service(
    nursery: trio.Nursery, start_server: StartServer, data_dir: Path, write: str
) -> None:
    files = FaultyFiles()
    config = Config(port=0, ws_port=0, data_dir=data_dir, asr_engine="none")
    failure: list[BaseException] = []
    done = trio.Event()

    async def run(task_status: trio.TaskStatus[Running]) -> None:
        try:
            await serve(config, files=files, task_status=task_status)
        except BaseException as exc:  # the test inspects what stopped the service
            failure.append(exc)
        finally:
            done.set()

    running: Running = await nursery.start(run)
    async with httpx.AsyncClient(base_url=running.http_url, timeout=30) as client:
        first = await upload(client, "s", 300)
        files.fail_fsync = True
        try:
            if write == "upload":
                response = await client.post("/upload", params=upload_params(), content=wav(400))
            else:  # a tombstone goes through the store's other write path
                response = await client.delete(f"/chunks/{first['chunk_id']}")
        except httpx.HTTPError:
            pass  # the server may stop before it answers: never with a 2xx
        else:
            assert response.status_code == 500
    with trio.fail_after(30):
        await done.wait()
    assert failure and isinstance(failure[0], BaseExceptionGroup)
    errors, rest = failure[0].split(StoreError)
    assert errors is not None and rest is None
    leaf: BaseException = errors
    while isinstance(leaf, BaseExceptionGroup):
        leaf = leaf.exceptions[0]
    assert "fsync of the log failed" in str(leaf)

    again = await start_server()  # recovers from the log
    if write == "upload":
        assert await again.running.store.get(first["chunk_id"]) == first
    else:  # the unacknowledged delete may or may not have reached the disk: whole either way
        assert not again.running.store.has(first["chunk_id"]) or (
            await again.running.store.get(first["chunk_id"]) == first
        )
    assert (await upload_again(again)).status_code == 201  # and it takes uploads again


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Any:
    mount = tmp_path / "tiny"
    mount.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tiny tmpfs here: {result.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


async def test_disk_full_on_a_real_tiny_filesystem(
    start_server: StartServer, tiny_fs: Path
) -> None:
    filler = tiny_fs / "filler"
    filler.write_bytes(bytes(300_000))
    data_dir = tiny_fs / "data"
    server = await start_server(data_dir=data_dir)
    body = pcm_s16le(440, seconds=1.0)  # 32 KB
    params = upload_params(encoding="pcm_s16le", sample_rate="16000", channels="1")
    stored: list[dict[str, Any]] = []
    async with server.client() as client:
        for _ in range(60):
            response = await client.post("/upload", params=params, content=body)
            if response.status_code == 507:
                break
            assert response.status_code == 201, response.text
            stored.append(response.json())
        else:
            pytest.fail("the 1 MiB file system never filled up")
        assert response.json()["code"] == "insufficient_storage"
        assert stored
        assert (await client.get(f"/chunks/{stored[-1]['chunk_id']}/audio")).content == body
        filler.unlink()  # space comes back
        response = await client.post("/upload", params=params, content=body)
        assert response.status_code == 201, response.text
        stored.append(response.json())
    await server.stop()
    report, records = replay_all(data_dir)
    assert report.torn_bytes == 0
    assert [r.meta["chunk_id"] for r in records] == [c["chunk_id"] for c in stored]


def test_disk_full_while_writing_a_snapshot_leaves_the_log_as_it_was(tmp_path: Path) -> None:
    build_log(tmp_path, 1, 10)
    before = trio.run(state_of, tmp_path)
    files = FaultyFiles()

    async def compact() -> None:
        async with trio.open_nursery() as nursery:
            store: Store = await nursery.start(Store(Config(data_dir=tmp_path), files=files).run)
            files.full = True
            with pytest.raises(OSError, match="No space") as info:
                await store.compact()
            assert info.value.errno == errno.ENOSPC
            files.full = False
            assert await store.read_audio("c1") == (bytes([1]) * 101, "audio/wav")
            nursery.cancel_scope.cancel()

    trio.run(compact)
    assert not list((tmp_path / "log").glob("*.tmp"))
    assert trio.run(state_of, tmp_path) == before


# -- check and repair ------------------------------------------------------------------------


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "trio_audio", *args],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_check_reports_and_repair_salvages(tmp_path: Path) -> None:
    build_log(tmp_path, 1, 20)
    healthy = run_cli("check", str(tmp_path))
    assert healthy.returncode == 0, healthy.stderr
    assert "records" in healthy.stdout and "sessions" in healthy.stdout
    assert healthy.stdout.strip().endswith("ok")
    expected = trio.run(state_of, tmp_path)

    _, records = replay_all(tmp_path)
    victim = records[5]
    path = tmp_path / "log" / victim.segment
    flip_bit(path, victim.offset + FRAME_HEADER_SIZE + 2)
    with (tmp_path / "log" / list_segments(tmp_path)[-1]).open("ab") as f:
        f.write(b"\0" * 40)  # and a torn tail
    broken = run_cli("check", str(tmp_path))
    assert broken.returncode == 1
    assert f"CORRUPT: {path} offset {victim.offset}" in broken.stdout
    assert "torn tail" in broken.stdout

    repaired = run_cli("check", "--repair", str(tmp_path))
    assert repaired.returncode == 0, repaired.stderr
    assert f"dropped {path} offset {victim.offset}" in repaired.stdout
    assert (tmp_path / "log.broken-0").is_dir()  # nothing is deleted
    after = run_cli("check", str(tmp_path))
    assert after.returncode == 0 and after.stdout.strip().endswith("ok")
    state = trio.run(state_of, tmp_path)
    lost = victim.meta.get("chunk_id") if victim.type == RecordType.CHUNK else None
    assert set(expected) - set(state) <= {lost}
    for chunk_id, (meta, audio) in state.items():
        assert audio == expected[chunk_id][1]
        if victim.type != RecordType.UPDATE:  # (a lost chunk moves the later ones' offsets)
            assert {**meta, "offset_ms": 0} == {**expected[chunk_id][0], "offset_ms": 0}


def test_check_applies_replays_rules_and_refuses_what_is_no_log(tmp_path: Path) -> None:
    missing = run_cli("check", str(tmp_path / "nowhere"))
    assert missing.returncode == 3 and f"no data dir at {tmp_path / 'nowhere'}" in missing.stderr
    (tmp_path / "empty").mkdir()
    empty = run_cli("check", str(tmp_path / "empty"))
    assert empty.returncode == 3 and "no log in" in empty.stderr

    data_dir = tmp_path / "data"
    build_log(data_dir, 1, 30)
    healthy = run_cli("check", str(data_dir))
    assert healthy.returncode == 0, healthy.stdout
    _, records = replay_all(data_dir)
    assert f"{len(records)} records + " in healthy.stdout
    names = list_segments(data_dir)
    assert len(names) >= 3
    for victim in (names[-1], names[1], names[0]):  # newest, a middle one, the first
        image = tmp_path / f"without-{victim}"
        shutil.copytree(data_dir, image)
        (image / "log" / victim).unlink()
        result = run_cli("check", str(image))
        assert result.returncode == 1, result.stdout
        with pytest.raises(CorruptLog) as info:
            replay_all(image)
        assert f"CORRUPT: {info.value.path} offset {info.value.offset}" in result.stdout


def test_check_of_a_frame_length_flip_resyncs(tmp_path: Path) -> None:
    build_log(tmp_path, 1, 12)
    _, records = replay_all(tmp_path)
    victim = records[2]
    path = tmp_path / "log" / victim.segment
    length = FRAME_HEADER.unpack_from(path.read_bytes(), victim.offset)[0]
    flip_bit(path, victim.offset + 3, bit=7)  # the frame now claims ~2 GB
    result = run_cli("check", str(tmp_path))
    assert result.returncode == 1
    end = victim.offset + FRAME_HEADER_SIZE + length
    assert f"CORRUPT: {path} offset {victim.offset}..{end}" in result.stdout


# -- torn logs at scale ----------------------------------------------------------------------


def test_a_log_of_hundreds_of_records_cut_at_every_offset(tmp_path: Path) -> None:
    rng = random.Random(3)
    source = tmp_path / "source"
    writer = LogWriter(source, next_seq=1)
    for n in range(200):
        writer.append(RecordType.CHUNK, {"n": n}, rng.randbytes(rng.randrange(5)))
        if n % 16 == 15:
            writer.flush()
            writer.sync()
    writer.flush()  # as a crash leaves it: the last batch not yet proven
    writer.close()
    (name,) = list_segments(source)
    original = (source / "log" / name).read_bytes()
    ends = frame_ends(original)  # checkpoints included
    record_ends = [
        r.offset + FRAME_HEADER_SIZE + FRAME_HEADER.unpack_from(original, r.offset)[0]
        for r in replay_all(source)[1]
    ]
    assert len(record_ends) == 200 and len(ends) > 200
    data_dir = tmp_path / "cut"
    path = data_dir / "log" / name
    for cut in range(len(original) + 1):
        (data_dir / "log").mkdir(parents=True, exist_ok=True)
        path.write_bytes(original[:cut])
        report, records = replay_all(data_dir)
        good = max([0 if cut < 32 else 32, *(end for end in ends if end <= cut)])
        assert len(records) == sum(1 for end in record_ends if end <= cut), cut
        assert [r.meta["n"] for r in records] == list(range(len(records)))
        if cut >= 32:
            assert path.stat().st_size == good
        assert report.torn_bytes == cut - good
        if cut % 37 == 0:  # the log goes on after the cut, and replays
            after = LogWriter(data_dir, next_seq=report.last_seq + 1)
            after.append(RecordType.CHUNK, {"n": len(records)}, b"x")
            after.checkpoint()
            after.close()
            assert [r.meta["n"] for r in replay_all(data_dir)[1]] == list(range(len(records) + 1))
        shutil.rmtree(data_dir)


def test_audio_holding_a_checkpoint_frame_proves_nothing(tmp_path: Path) -> None:
    from trio_audio.store.record import build_checkpoint

    fake = build_checkpoint(0x0BADC0DE, 1 << 40)  # another salt: it never verifies here
    writer = LogWriter(tmp_path, next_seq=1)
    writer.append(RecordType.CHUNK, {"n": 0}, b"a" * 40)
    writer.checkpoint()
    writer.append(RecordType.CHUNK, {"n": 1}, b"b" * 40)
    writer.append(RecordType.CHUNK, {"n": 2}, fake * 3)
    writer.flush()  # not fsync'd: a power cut garbles record 1
    writer.close()
    _, records = replay_all(tmp_path)
    path = tmp_path / "log" / records[0].segment
    flip_bit(path, records[1].offset + FRAME_HEADER_SIZE + 3)
    report, records = replay_all(tmp_path)  # a torn tail, not "corruption"
    assert [r.meta["n"] for r in records] == [0]
    assert report.torn_bytes > 0


# -- the log's structure: any damage is refused by replay and check, or loses nothing ---------

DAMAGE_EXAMPLES = int(os.environ.get("TRIO_AUDIO_CRASH_ROUNDS", "6")) * 5


@st.composite
def damaged_logs(draw: st.DrawFn) -> dict[str, Any]:
    return {
        "sizes": draw(st.lists(st.integers(0, 300), min_size=1, max_size=30)),
        "segment_max": draw(st.sampled_from([400, 1200, 1 << 20])),
        "manifest_at": draw(st.integers(0, 30)),  # records the last manifest rewrite covers
        "clean": draw(st.booleans()),  # a clean close, or a crash after the last fsync
        "damage": draw(
            st.sampled_from(["truncate", "remove", "copy-segment", "flip", "copy-record"])
        ),
        "pick": draw(st.integers(0, 1 << 32)),
        "at": draw(st.floats(0, 1, exclude_max=True)),
    }


def write_acknowledged(data_dir: Path, case: dict[str, Any]) -> tuple[list[Written], int]:
    """Each record fsync'd before the next (acknowledged, as in ``always`` mode); the
    manifest rewritten after record *manifest_at* and otherwise only when a segment rolls,
    and at the close when it is clean. Returns the records and the manifest's durable seq."""
    writer = LogWriter(
        data_dir, next_seq=1, segment_max_bytes=case["segment_max"], manifest_interval_s=1e9
    )
    written: list[Written] = []
    for n, size in enumerate(case["sizes"]):
        audio = bytes([n % 251]) * size
        meta = chunk_meta(n, "s")
        seq, _ = writer.append(RecordType.CHUNK, meta, audio)
        writer.flush()
        writer.sync()
        written.append((seq, meta, audio))
        if n + 1 == case["manifest_at"]:
            writer.checkpoint()
    if case["clean"]:
        writer.checkpoint()
    writer.close()
    manifest = parse_manifest((data_dir / "log" / MANIFEST_FILE).read_bytes())
    assert not isinstance(manifest, str)
    return written, manifest.durable


def damage(data_dir: Path, case: dict[str, Any]) -> None:
    directory = data_dir / "log"
    segments = list_segments(data_dir)
    files = [*segments, MANIFEST_FILE]
    rng = random.Random(case["pick"])
    name = rng.choice(files if case["damage"] in ("truncate", "flip", "remove") else segments)
    path = directory / name
    data = path.read_bytes()
    at = int(case["at"] * len(data))
    if case["damage"] == "truncate":
        path.write_bytes(data[:at])
    elif case["damage"] == "flip":
        flip_bit(path, at, rng.randrange(8))
    elif case["damage"] == "remove":
        path.unlink()
    elif case["damage"] == "copy-segment":  # under the name of any other seq
        other = rng.randrange(1, int(segments[-1][:16]) + 40)
        target = directory / segment_name(other)
        if target != path:
            target.write_bytes(data)
    else:  # a record's frame written again, at a frame boundary of any segment
        ends = [SEGMENT_HEADER_SIZE, *frame_ends(data)]
        if len(ends) > 1:
            i = rng.randrange(len(ends) - 1)
            frame = data[ends[i] : ends[i + 1]]
            into = directory / rng.choice(segments)
            target_data = into.read_bytes()
            cut = rng.choice([SEGMENT_HEADER_SIZE, *frame_ends(target_data)])
            into.write_bytes(target_data[:cut] + frame + target_data[cut:])


@settings(
    max_examples=DAMAGE_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(case=damaged_logs())
def test_any_damage_is_refused_by_replay_and_check_or_loses_nothing(
    tmp_path_factory: pytest.TempPathFactory, case: dict[str, Any]
) -> None:
    """Either replay (as ``serve`` does) gives back exactly the acknowledged records, all
    of them up to the manifest's durable seq (the stated window: records fsync'd after the
    manifest's last rewrite may be cut with the newest segment's tail), and ``check`` says
    the log is sound; or both refuse, naming the same file and offset."""
    data_dir = tmp_path_factory.mktemp("damage")
    written, durable = write_acknowledged(data_dir, case)
    damage(data_dir, case)
    checked = check(data_dir)  # first: replay changes files (it cuts a torn tail)
    try:
        _, records = replay_all(data_dir)
    except CorruptLog as exc:
        assert exc.path.startswith(str(data_dir / "log")) and exc.offset >= 0
        assert checked.corrupt, (exc, checked)
        assert any(
            (d.path, d.offset, d.torn) == (exc.path, exc.offset, False) for d in checked.damage
        ), (exc, checked.damage)
        return
    assert not checked.corrupt, checked.damage
    assert len(records) >= durable, (len(records), durable)
    assert checked.records == len(records)
    got = [(r.seq, r.meta, read_blob(data_dir, r.blob) if r.blob else None) for r in records]
    assert got == written[: len(records)]


async def test_a_delete_refused_for_room_is_written_from_the_reserve(
    start_server: StartServer, data_dir: Path
) -> None:
    files = FaultyFiles()
    server = await start_server(files=files, store_reserve_bytes=64 * 1024)
    async with server.client() as client:
        first = await upload(client, "s", 300)
        kept = await upload(client, "s", 310)
        files.full = True
        refused = await client.post("/upload", params=upload_params(), content=wav(400))
        assert refused.status_code == 507 and refused.headers["retry-after"] == "10"
        deleted = await client.delete(f"/chunks/{first['chunk_id']}")
        assert deleted.status_code == 200, deleted.text
        assert not (data_dir / "RESERVE").exists()
        assert (await client.get(f"/chunks/{first['chunk_id']}")).status_code == 404
        still = (await client.get(f"/chunks/{kept['chunk_id']}")).json()
        assert still["checksum"] == kept["checksum"]
        files.full = False
        assert (
            await client.post("/upload", params=upload_params(), content=wav(410))
        ).status_code == 201
    await server.stop()
    again = await start_server(data_dir=data_dir)
    assert not again.running.store.has(first["chunk_id"])
    assert (data_dir / "RESERVE").exists()


def fill(path: Path) -> None:
    """Take every page the file system has left."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, bytes(4096))
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)


async def test_a_delete_frees_space_on_a_full_disk(
    start_server: StartServer, tiny_fs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """On a real full file system: uploads get 507 with Retry-After, the episode is logged
    once (no traceback per refused batch), a DELETE is still written (from the reserve), and
    the compaction it starts gives the space back, so uploads are taken again."""
    caplog.set_level(logging.INFO, logger="trio_audio.store")
    (tiny_fs / "filler").write_bytes(bytes(300_000))
    data_dir = tiny_fs / "data"
    server = await start_server(data_dir=data_dir, store_reserve_bytes=64 * 1024)
    assert (data_dir / "RESERVE").stat().st_size == 64 * 1024
    body = pcm_s16le(440, seconds=1.0)  # 32 KB
    params = upload_params(encoding="pcm_s16le", sample_rate="16000", channels="1")
    async with server.client() as client:
        for _ in range(60):
            response = await client.post("/upload", params=params, content=body)
            if response.status_code == 507:
                break
            assert response.status_code == 201, response.text
        else:
            pytest.fail("the 1 MiB file system never filled up")
        for _ in range(3):
            assert response.status_code == 507
            assert response.headers["retry-after"] == "10"
            assert response.json()["retryable"] is True
            response = await client.post("/upload", params=params, content=body)
        await trio.to_thread.run_sync(fill, tiny_fs / "rest")  # not a page left
        gone = await client.delete("/sessions/alice", params={"session_id": "s1"})
        assert gone.status_code == 200, gone.text
        assert not (data_dir / "RESERVE").exists()  # given up: the compaction's room
        sessions = await client.get("/sessions/alice")
        assert sessions.json()["sessions"] == []
        for _ in range(100):  # the compaction the delete started frees the deleted audio
            response = await client.post("/upload", params=params, content=body)
            if response.status_code == 201:
                break
            await trio.sleep(0.05)
        assert response.status_code == 201, response.text
    store_logs = [r for r in caplog.records if r.name == "trio_audio.store"]
    full = [r for r in store_logs if "the disk is full" in r.getMessage()]
    assert len(full) == 1, [r.getMessage() for r in store_logs]
    assert not any(r.exc_info for r in store_logs), [r.getMessage() for r in store_logs]
    assert any("room again" in r.getMessage() for r in store_logs)
    assert (data_dir / "RESERVE").exists()  # taken again once there was room
