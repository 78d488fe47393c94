"""The store's index over the log: replay rules that the HTTP tests cannot reach."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from trio_audio.config import Config
from trio_audio.errors import NotFound
from trio_audio.store.record import RecordType
from trio_audio.store.store import Store
from trio_audio.store.writer import LogWriter


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
    assert sorted(store.chunks) == ["alone", "g0", "g1"]
    assert store.sessions("u")["s"].seqs == [0, 1, 2]
    assert "group" not in store.get("g0")
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
        index = store.sessions("u")["s"]
        assert store.session_transcript(index) == {"status": "disabled", "text": ""}
        async with trio.open_nursery() as updates:  # concurrent updates
            for chunk_id, transcript in texts.items():
                updates.start_soon(store.update, chunk_id, {"transcript": transcript})
        assert store.get("c1")["transcript"]["text"] == "word 1"
        # The session's transcript (cached for paging) follows its chunks' updates.
        assert store.session_transcript(index) == {"status": "done", "text": "word 0 word 1 word 2"}
        assert store.get("c1")["checksum"] == "c1"  # other fields untouched
        with pytest.raises(NotFound):
            await store.update("nope", {"transcript": {}})
        first.cancel_scope.cancel()  # the store closes its log and unlocks the data dir

    # What a restart sees: the same records replayed by a second store on the same log.
    again: Store = await nursery.start(Store(config).run)
    assert {c: again.get(c)["transcript"] for c in texts} == texts
    assert again.report is not None and again.report.records == 6
