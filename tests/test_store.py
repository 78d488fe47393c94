"""The store's index over the log: replay rules that the HTTP tests cannot reach."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import msgpack
import pytest
import trio
import trio.testing

from trio_audio.config import Config
from trio_audio.errors import NotFound
from trio_audio.metrics import Metrics
from trio_audio.models import Job, Part
from trio_audio.pipeline.stages import Stages
from trio_audio.store.commit import apply_batch, plan_batch, records_of
from trio_audio.store.files import FileOps
from trio_audio.store.index import Index, SessionSummary
from trio_audio.store.logio import append
from trio_audio.store.reads import MetaCache
from trio_audio.store.record import RecordType
from trio_audio.store.store import Store
from trio_audio.store.writer import LogWriter

from .audio_samples import wav
from .logs import replay_all


def summary(store: Store) -> SessionSummary:
    found = store.summary("u", "s")
    assert found is not None
    return found


def meta(chunk_id: str, seq: int, group: list[Any] | None = None) -> dict[str, Any]:
    record: dict[str, Any] = {
        "chunk_id": chunk_id, "user_id": "u", "session_id": "s", "seq": seq,
        "checksum": chunk_id, "content_type": "audio/wav", "audio": {"duration_ms": 10.0},
        "transcript": {"status": "disabled", "text": "", "words": []},
    }  # fmt: skip
    if group is not None:
        record["group"] = group
    return record


async def test_a_multipart_group_cut_short_by_a_crash_is_not_replayed(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    log = LogWriter(tmp_path, next_seq=1)
    log.append(RecordType.CHUNK, meta("alone", 0), b"a")
    log.append(RecordType.CHUNK, meta("g0", 1, ["g", 0, 2]), b"b")
    log.append(RecordType.CHUNK, meta("g1", 2, ["g", 1, 2]), b"c")
    log.append(RecordType.CHUNK, meta("h0", 3, ["h", 0, 3]), b"d")  # 2 of 3 reached the disk
    log.append(RecordType.CHUNK, meta("h1", 4, ["h", 1, 3]), b"e")
    log.flush()
    log.sync()
    log.close()

    store: Store = await nursery.start(Store(Config(data_dir=tmp_path)).run)
    assert sorted(store.chunk_ids()) == ["alone", "g0", "g1"]
    assert [seq for seq, _ in store.chunks_after("u", "s", None)] == [0, 1, 2]
    assert "group" not in await store.get("g0")
    assert await store.read_audio("g1") == (b"c", "audio/wav")


async def test_updates_are_durable_grouped_and_replayed(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    log = LogWriter(tmp_path, next_seq=1)
    for n in range(3):
        log.append(RecordType.CHUNK, meta(f"c{n}", n), b"x")
    log.flush()
    log.close()
    config = Config(data_dir=tmp_path)
    texts = {f"c{n}": {"status": "done", "text": f"word {n}", "words": []} for n in range(3)}
    async with trio.open_nursery() as first:
        store: Store = await first.start(Store(config).run)
        assert summary(store).transcript == {"status": "disabled", "text": ""}
        async with trio.open_nursery() as updates:  # concurrent updates
            for chunk_id, transcript in texts.items():
                updates.start_soon(store.update, chunk_id, {"transcript": transcript})
        assert (await store.get("c1"))["transcript"]["text"] == "word 1"
        # The session's transcript (cached for paging) follows its chunks' updates.
        assert summary(store).transcript == {"status": "done", "text": "word 0 word 1 word 2"}
        assert (await store.get("c1"))["checksum"] == "c1"  # other fields untouched
        with pytest.raises(NotFound):
            await store.update("nope", {"transcript": {}})
        first.cancel_scope.cancel()  # the store closes its log and unlocks the data dir

    # What a restart sees: the same records replayed by a second store on the same log.
    again: Store = await nursery.start(Store(config).run)
    assert {c: (await again.get(c))["transcript"] for c in texts} == texts
    assert again.stats().replayed_records == 6


class CountingDisk(FileOps):
    """Real files, counting the fdatasyncs (one a group commit)."""

    def __init__(self) -> None:
        self.syncs = 0

    def fdatasync(self, fd: int) -> None:
        self.syncs += 1
        super().fdatasync(fd)


async def test_many_updates_commit_together_in_the_order_given(tmp_path: Path) -> None:
    # A transcribed utterance's chunks: their transcripts stored in one go, answered each.
    log = LogWriter(tmp_path, next_seq=1)
    for n in range(40):
        log.append(RecordType.CHUNK, meta(f"c{n}", n), b"x")
    log.flush()
    log.close()
    disk = CountingDisk()
    store = Store(Config(data_dir=tmp_path), files=disk)
    events = store.events()
    order = [f"c{n}" for n in (5, 3, 39, 0, *range(6, 30))] + ["gone"]
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        answers = await store.update_many(
            [(c, {"transcript": {"status": "done", "text": c, "words": []}}) for c in order]
        )
        assert [a["transcript"]["text"] for a in answers[:-1]] == order[:-1]
        assert isinstance(answers[-1], NotFound)  # each is answered for itself
        updated = []
        while len(updated) < len(order) - 1:
            updated.append(events.receive_nowait().chunk["chunk_id"])
        assert updated == order[:-1]  # committed (and told) in the order given
        assert disk.syncs <= 6  # queued before any was waited for: a few group commits, not 28
        nursery.cancel_scope.cancel()


class StallingDisk(FileOps):
    """Real files whose fdatasync waits until the test lets the disk go on."""

    def __init__(self) -> None:
        self.flowing = threading.Event()
        self.flowing.set()

    def fdatasync(self, fd: int) -> None:
        assert self.flowing.wait(10), "the test never let the disk go on"
        super().fdatasync(fd)


async def test_a_writer_cancelled_while_the_disk_stalls_never_strands_the_ones_behind_it(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    log = LogWriter(tmp_path, next_seq=1)
    for n in (1, 2):
        log.append(RecordType.CHUNK, meta(f"c{n}", n), b"x")
    log.flush()
    log.close()
    disk = StallingDisk()
    store: Store = await nursery.start(Store(Config(data_dir=tmp_path), files=disk).run)
    disk.flowing.clear()  # the next fsync stalls
    answers: dict[str, Any] = {}
    gave_up = trio.Event()

    async def impatient() -> None:
        with trio.move_on_after(0.1):
            await store.update("c1", {"note": 1})
        answers["c1"] = "gave up"
        gave_up.set()

    async def patient() -> None:
        answers["c2"] = await store.update("c2", {"note": 2})

    with trio.fail_after(5):
        async with trio.open_nursery() as writers:
            writers.start_soon(impatient)
            await trio.testing.wait_all_tasks_blocked()  # its batch waits on the stalled fsync
            writers.start_soon(patient)  # queued behind it
            await gave_up.wait()  # the first caller is cancelled while the disk stalls
            await trio.testing.wait_all_tasks_blocked()
            assert answers == {"c1": "gave up"}
            disk.flowing.set()
    assert answers["c2"]["note"] == 2
    assert (await store.get("c1"))["note"] == 1  # queued before its caller gave up: written anyway
    assert (await store.get("c2"))["note"] == 2


async def test_metadata_is_read_back_from_the_log_through_updates_compaction_and_restart(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    # A cache too small for any record: every read of a chunk's metadata goes to the log.
    config = Config(data_dir=tmp_path, meta_cache_mb=0.0001, segment_max_bytes=4096)
    log = LogWriter(tmp_path, next_seq=1, segment_max_bytes=4096)
    for n in range(40):
        log.append(RecordType.CHUNK, meta(f"c{n}", n), bytes([n]) * 300)
    log.flush()
    log.close()
    transcript = {"status": "done", "text": "hello", "words": [{"word": "hello"}]}

    async def check(store: Store) -> None:
        chunk = await store.get("c7")
        assert (chunk["seq"], chunk["checksum"], chunk["offset_ms"]) == (7, "c7", 60.0)
        assert chunk["transcript"] == transcript and chunk["note"] == 2
        assert await store.read_audio("c9") == (bytes([9]) * 300, "audio/wav")
        page, more = await store.page("u", "s", 15, ("s", 4))
        assert [c["seq"] for _, chunks in page for c in chunks] == list(range(5, 20))
        assert more == ("s", 19) and page[0][0].transcript == {"status": "done", "text": "hello"}
        assert (await store.get("c30"))["offset_ms"] == 290.0  # c3 is gone

    async with trio.open_nursery() as first:
        store: Store = await first.start(Store(config).run)
        await store.update("c7", {"transcript": transcript, "note": 1})
        await store.update("c7", {"note": 2})  # two updates on top of the record
        await store.delete_chunk("c3")
        await check(store)
        assert await store.compact() is not None  # the records move into a snapshot
        await check(store)
        await store.update("c8", {"note": 8})  # after the snapshot, in a new segment
        assert (await store.get("c8"))["note"] == 8
        assert store._cache.misses > 0 and store._cache.bytes == 0
        first.cancel_scope.cancel()
    again: Store = await nursery.start(Store(config).run)
    await check(again)
    assert (await again.get("c8"))["note"] == 8
    with pytest.raises(NotFound):
        await again.get("c3")


async def test_a_page_read_in_spans_is_what_was_written_across_files_gaps_and_updates(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    # Small files, and audio that is sometimes small (records read in one span) and sometimes
    # larger than the gap a span bridges: a page then takes several reads of several files.
    config = Config(data_dir=tmp_path, segment_max_bytes=64 * 1024)
    log = LogWriter(tmp_path, next_seq=1, segment_max_bytes=64 * 1024)
    written = {}
    for n in range(120):
        record = meta(f"c{n}", n, ["g", 0, 1] if n == 5 else None)
        record["note"] = "é" * n  # lengths differ record to record
        log.append(RecordType.CHUNK, record, bytes([n]) * (20_000 if n % 7 == 0 else 300))
        written[f"c{n}"] = record
    log.flush()
    log.close()
    assert len(list((tmp_path / "log").glob("*.seg"))) > 3
    store: Store = await nursery.start(Store(config).run)
    await store.update("c40", {"note": "updated"})
    written["c40"]["note"] = "updated"
    expected = []
    for n in range(120):
        chunk = {k: v for k, v in written[f"c{n}"].items() if k != "group"}
        chunk["offset_ms"] = 10.0 * n
        expected.append(chunk)
    for _ in ("cold", "warm"):
        page, more = await store.page("u", "s", 1000, None)
        assert more is None and [chunks for _, chunks in page] == [expected]
        assert [await store.get(f"c{n}") for n in range(120)] == expected


async def test_a_page_over_two_sessions_is_right_when_rows_are_renumbered_meanwhile(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    log = LogWriter(tmp_path, next_seq=1)
    for session in ("a", "b"):
        for n in range(10):
            record = {**meta(f"{session}{n}", n), "session_id": session}
            log.append(RecordType.CHUNK, record, b"x")
    log.flush()
    log.close()
    store: Store = await nursery.start(Store(Config(data_dir=tmp_path)).run)
    read = store._reader

    async def deleting_while_reading(locations: list[Any]) -> list[Any]:
        got = await read(locations)
        # A delete lands while the page is read, and the index packs its rows together.
        await store.delete_chunk("a0")
        store._index.vacuum()
        return got

    store._reader = deleting_while_reading
    page, _ = await store.page("u", None, 1000, None)
    b = next(chunks for summary, chunks in page if summary.session_id == "b")
    assert [(c["chunk_id"], c["seq"], c["checksum"]) for c in b] == [
        (f"b{n}", n, f"b{n}") for n in range(10)
    ]


async def test_a_chunk_record_is_packed_once_for_the_log_and_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stages build each chunk's record once; the committer adds its seq, transcript and
    group to the record's own packed bytes: the log gets those bytes, the metadata cache the
    very same object, and nothing packs the whole map again. Replay reads back the map the
    answer was made from, in its order."""
    stages = Stages(Config(asr_engine="none"), trio.CapacityLimiter(1))
    parts = [Part(wav(440, 0.1), "audio/wav"), Part(wav(880, 0.2), "audio/wav", seq=7)]
    jobs = [Job("u", "s", parts)]
    assert await stages.validate(jobs) == [None]
    assert await stages.analyse(jobs) == [None]
    whole_maps: list[dict[str, Any]] = []
    real_packb = msgpack.packb

    def counting(obj: Any, **kwargs: Any) -> bytes:
        if isinstance(obj, dict) and "spectrum" in obj:
            whole_maps.append(obj)
        packed: bytes = real_packb(obj, **kwargs)
        return packed

    monkeypatch.setattr(msgpack, "packb", counting)
    index, cache, metrics = Index("pending"), MetaCache(1 << 20), Metrics()
    plans = plan_batch(index, list(jobs), {}, metrics)
    records = records_of(plans)
    log = LogWriter(tmp_path, next_seq=1)
    frames, _ = append(log, records, sync=True)
    _, answers = apply_batch(index, cache, metrics, plans, frames, {})
    log.close()
    assert whole_maps == []  # neither the log nor the cache packed a record again
    (_, planned), (_, stored) = plans[0], answers[0]
    assert isinstance(planned, list)
    for (_, packed, _), one in zip(records, planned, strict=True):
        assert one.meta is not None
        assert cache._items[one.meta["chunk_id"]] is packed
    _, replayed = replay_all(tmp_path)
    for record, one, result in zip(replayed, planned, stored, strict=True):
        assert one.meta is not None
        assert list(record.meta.items()) == list(one.meta.items())
        assert result.chunk == {
            **{k: v for k, v in one.meta.items() if k != "group"},
            "offset_ms": result.chunk["offset_ms"],
        }
    assert [r.meta["seq"] for r in replayed] == [0, 7]
    assert [r.meta["group"][1:] for r in replayed] == [[0, 2], [1, 2]]
    assert replayed[0].meta["transcript"]["status"] == "pending"
