"""The in-memory index (the keydir): seqs, idempotent retries, conflicts, timelines, paging,
ids, deletes at scale, and the metadata cache. Pure: metadata lives in a dict here, standing
for the log the store reads it from."""

from __future__ import annotations

from typing import Any

import attrs
import pytest

from trio_audio.errors import InternalError, SeqConflict
from trio_audio.metrics import Metrics
from trio_audio.models import ChunkRecord, Job, Part, new_chunk_id, utc_now
from trio_audio.store.commit import plan_batch
from trio_audio.store.index import Index, Place
from trio_audio.store.plan import NotRead, plan_chunks
from trio_audio.store.reads import SPAN_GAP, SPAN_MAX, MetaCache, spans
from trio_audio.store.record import FRAME_HEADER_SIZE

LOG: dict[int, dict[str, dict[str, Any]]] = {}  # id(index) -> chunk_id -> metadata


def part(
    checksum: str, seq: int | None = None, duration_ms: float = 100.0
) -> tuple[Part, ChunkRecord]:
    """A part as received, and its record as the analysis would build it."""
    p = Part(body=checksum.encode(), content_type="audio/wav", seq=seq)
    record = ChunkRecord(new_chunk_id(), "u", "s", utc_now(), None, len(p.body), checksum,
                         p.content_type, {"duration_ms": duration_ms}, {}, {}, {})  # fmt: skip
    return p, record


def made(user_id: str, session_id: str, parts: list[tuple[Part, ChunkRecord]]) -> Job:
    """A job as it reaches the committer: its parts with their records."""
    job = Job(user_id, session_id, [p for p, _ in parts])
    job.records = tuple(attrs.evolve(r, user_id=user_id, session_id=session_id) for _, r in parts)
    return job


def metas(index: Index) -> dict[str, dict[str, Any]]:
    return LOG.setdefault(id(index), {})


def commit(index: Index, job: Job) -> list[dict[str, Any]]:
    """Plan *job* alone and apply it as the committer would (reading the metadata of the
    chunks at the seqs it names first); the chunk JSON of each part."""
    known = {c: metas(index)[c] for c in index.collisions(job)}
    out = []
    for planned in plan_chunks(index, job, {}, known):
        if planned.meta is None:
            assert planned.existing is not None
            out.append(index.chunk_json(planned.existing))
            continue
        index.insert_meta(planned.meta, Place("seg", 0, 0), len(planned.part.body))
        metas(index)[planned.meta["chunk_id"]] = planned.meta
        out.append(index.chunk_json(planned.meta))
    return out


def update(index: Index, chunk_id: str, fields: dict[str, Any]) -> bool:
    patch = {"chunk_id": chunk_id, "set": fields}
    if index.apply_update(patch, Place("seg", 0, 10)):
        metas(index)[chunk_id].update(fields)
        return True
    return False


def test_seqs_are_given_in_order_and_a_retry_is_answered_with_the_stored_chunk() -> None:
    index = Index()
    first = commit(index, made("u", "s", [part("a"), part("b")]))
    assert [c["seq"] for c in first] == [0, 1]
    assert first[0]["chunk_id"] != first[1]["chunk_id"]
    again = commit(index, made("u", "s", [part("a", seq=0)]))
    assert again[0]["chunk_id"] == first[0]["chunk_id"]
    assert index.summary("u", "s") is not None
    assert index.summary("u", "s").chunk_count == 2  # type: ignore[union-attr]


def test_the_same_seq_with_other_bytes_is_a_conflict_and_changes_nothing() -> None:
    index = Index()
    commit(index, made("u", "s", [part("a", seq=0)]))
    with pytest.raises(SeqConflict):
        job = made("u", "s", [part("z", seq=1), part("other", seq=0)])
        plan_chunks(index, job, {}, {c: metas(index)[c] for c in index.collisions(job)})
    assert [seq for seq, _ in index.chunks_after("u", "s", None)] == [0]


def test_a_chunk_that_came_to_a_seq_after_the_reads_is_planned_again_not_guessed() -> None:
    # On a shared log a chunk may be applied at a job's seq between the committer's reads of
    # the colliding chunks and its plan: the plan refuses to go on (NotRead), claims nothing,
    # and the cluster's committer plans that write again.
    index = Index()
    commit(index, made("u", "s", [part("a", seq=0)]))
    reserved: dict[tuple[str, str], dict[int, dict[str, Any]]] = {}
    with pytest.raises(NotRead):
        plan_chunks(index, made("u", "s", [part("b", seq=1), part("a", seq=0)]), reserved, {})
    assert not any(reserved.values())  # no seq claimed
    again = made("u", "s", [part("b", seq=1), part("a", seq=0)])
    known = {c: metas(index)[c] for c in index.collisions(again)}
    planned = plan_chunks(index, again, reserved, known)
    assert planned[1].meta is None and planned[1].existing is not None  # the stored one


def test_the_local_committer_answers_a_chunk_it_cannot_read_with_a_500_and_goes_on() -> None:
    # The index lists the stored chunk at the job's seq, but its metadata was not read back
    # (a segment file lost under the service): that write fails, the batch goes on.
    index = Index()
    commit(index, made("u", "s", [part("a", seq=0)]))
    lost, fine = made("u", "s", [part("a", seq=0)]), made("u", "t", [part("b")])
    plans = plan_batch(index, [lost, fine], {}, Metrics())
    assert [write for write, _ in plans] == [fine]
    with pytest.raises(InternalError, match="could not be read"):
        lost.reply.result()


def test_two_jobs_in_one_batch_never_share_a_seq() -> None:
    index = Index()
    reserved: dict[tuple[str, str], dict[int, dict[str, Any]]] = {}
    one = plan_chunks(index, made("u", "s", [part("a")]), reserved)
    two = plan_chunks(index, made("u", "s", [part("b")]), reserved)
    assert one[0].meta is not None and two[0].meta is not None
    assert (one[0].meta["seq"], two[0].meta["seq"]) == (0, 1)
    same = plan_chunks(index, made("u", "s", [part("a", seq=0)]), reserved)
    assert same[0].meta is None and same[0].existing is one[0].meta  # a retry in the batch


def test_a_multipart_job_is_one_group() -> None:
    index = Index()
    planned = plan_chunks(index, made("u", "s", [part("a"), part("b"), part("c")]), {})
    groups = {p.meta["group"][0] for p in planned if p.meta is not None}
    assert len(groups) == 1
    assert [p.meta["group"][1:] for p in planned if p.meta is not None] == [
        [0, 3],
        [1, 3],
        [2, 3],
    ]


def test_offsets_follow_the_session_timeline_whatever_the_commit_order() -> None:
    index = Index()
    late = commit(index, made("u", "s", [part("c", seq=2, duration_ms=300.0)]))[0]
    commit(index, made("u", "s", [part("a", seq=0, duration_ms=100.0)]))
    commit(index, made("u", "s", [part("b", seq=1, duration_ms=200.0)]))
    assert index.offset_ms(late["chunk_id"]) == 300.0
    assert index.chunk_json(metas(index)[late["chunk_id"]])["offset_ms"] == 300.0
    index.apply_tombstone({"chunk_ids": [index.chunks_after("u", "s", None)[1][1]]})
    assert index.offset_ms(late["chunk_id"]) == 100.0


def test_updates_tombstones_and_the_session_transcript() -> None:
    index = Index(transcript_status="pending")
    chunks = commit(index, made("u", "s", [part("a"), part("b")]))
    assert index.summary("u", "s").transcript["status"] == "pending"  # type: ignore[union-attr]
    for n, chunk in enumerate(chunks):
        done = {"status": "done", "text": f"word{n}", "words": []}
        update(index, chunk["chunk_id"], {"transcript": done})
    summary = index.summary("u", "s")
    assert summary is not None and summary.transcript == {"status": "done", "text": "word0 word1"}
    assert index.status(chunks[0]["chunk_id"]) == "done"
    assert not update(index, "gone", {})
    removed = index.apply_tombstone({"chunk_ids": [c["chunk_id"] for c in chunks] + ["gone"]})
    assert len(removed) == 2
    assert index.summary("u", "s") is None and index.users == {}
    assert index.audio_bytes == 0 and index.dead_bytes > 0


def test_pages_walk_every_chunk_once_across_sessions() -> None:
    index = Index()
    for session in ("b", "a"):
        commit(index, made("u", session, [part(f"{session}{n}") for n in range(3)]))
    seen: list[tuple[str, int]] = []
    after = None
    while True:
        page, after = index.page_ids("u", None, 2, after)
        seen += [(p.session_id, metas(index)[c]["seq"]) for p in page for c in p.chunk_ids]
        if after is None:
            break
    assert seen == [("a", 0), ("a", 1), ("a", 2), ("b", 0), ("b", 1), ("b", 2)]
    only, more = index.page_ids("u", "b", 10, None)
    assert [p.session_id for p in only] == ["b"] and more is None


def test_a_session_is_done_only_when_every_chunk_is() -> None:
    index = Index(transcript_status="pending")
    chunks = commit(index, made("u", "s", [part("a"), part("b")]))
    done = {"status": "done", "text": "hello", "words": []}
    failed = {"status": "failed", "text": "", "words": [], "error": "the worker died"}
    update(index, chunks[0]["chunk_id"], {"transcript": done})
    update(index, chunks[1]["chunk_id"], {"transcript": failed})
    summary = index.summary("u", "s")
    assert summary is not None and summary.transcript == {"status": "failed", "text": "hello"}


def test_the_pending_transcripts_follow_updates_and_deletes_in_session_order() -> None:
    index = Index("pending")
    b = commit(index, made("u", "b", [part("x")]))[0]
    a0, a1 = commit(index, made("u", "a", [part("y"), part("z")]))
    assert index.pending_chunks() == [("u", "a", a0["chunk_id"]), ("u", "a", a1["chunk_id"]),
                                      ("u", "b", b["chunk_id"])]  # fmt: skip
    update(index, a0["chunk_id"], {"transcript": {"status": "done"}})
    index.apply_tombstone({"chunk_ids": [b["chunk_id"]]})
    assert index.pending_transcripts() == [a1["chunk_id"]]
    update(index, a1["chunk_id"], {"transcript": {"status": "pending"}})
    assert index.pending_transcripts() == [a1["chunk_id"]]
    plain = Index()  # no speech engine: new chunks start "disabled"
    commit(plain, made("u", "s", [part("q")]))
    assert plain.pending_transcripts() == []


def chunk_meta(chunk_id: str, session: str, seq: int) -> dict[str, Any]:
    return {"chunk_id": chunk_id, "user_id": "u", "session_id": session, "seq": seq,
            "audio": {"duration_ms": 10.0}, "transcript": {"status": "disabled"}}  # fmt: skip


def test_ids_are_found_across_merges_deletes_and_a_vacuum() -> None:
    index = Index()
    ids = [new_chunk_id() for _ in range(10_000)] + ["plain-id", "other.1"]
    for n, chunk_id in enumerate(ids):
        index.insert_meta(chunk_meta(chunk_id, f"s{n % 7}", n), Place("seg", n * 100, 50), 10)
    assert len(index.ids.recent) < len(ids)  # most were merged into the sorted arrays
    assert all(index.has(c) for c in ids) and not index.has(new_chunk_id())
    doomed = ids[::2]
    index.apply_tombstone({"chunk_ids": doomed})
    index.vacuum()  # pack the rows (the store does it once deletes pile up)
    assert index.count == len(ids) - len(doomed) == len(index)
    assert not any(index.has(c) for c in doomed)
    for n, chunk_id in enumerate(ids):
        if n % 2:
            location = index.location(chunk_id)
            assert location.record == Place("seg", n * 100, 50)
            assert index.key(chunk_id) == ("u", f"s{n % 7}", n)
    assert sorted(index.chunk_ids()) == sorted(ids[1::2])
    assert [seq for seq, _ in index.chunks_after("u", "s1", None)][:3] == [1, 15, 29]


def test_an_update_and_a_compaction_move_where_a_chunk_is_read_from() -> None:
    index = Index()
    chunk_id = new_chunk_id()
    index.insert_meta(chunk_meta(chunk_id, "s", 0), Place("a", 32, 40), 100)
    assert index.location(chunk_id).audio_offset == 32 + 17 + 40 + 2  # frame header, bin header
    index.apply_update({"chunk_id": chunk_id, "set": {"x": 1}}, Place("a", 500, 20))
    index.apply_update({"chunk_id": chunk_id, "set": {"x": 2}}, Place("b", 32, 20))
    assert index.location(chunk_id).updates == (Place("a", 500, 20), Place("b", 32, 20))
    # A snapshot replaced segment a: it holds the record with the first update folded in.
    index.moved({chunk_id: Place("1.snap", 32, 45)}, {"a"})
    location = index.location(chunk_id)
    assert location.record == Place("1.snap", 32, 45)
    assert location.updates == (Place("b", 32, 20),)


def test_the_metadata_cache_is_bounded_in_bytes_and_counts_hits_and_misses() -> None:
    cache = MetaCache(max_bytes=2_000)
    for n in range(50):
        cache.put(f"c{n}", {"n": n, "pad": "x" * 100})
    assert cache.bytes <= 2_000 and 0 < len(cache) < 50
    assert cache.get("c49") == {"n": 49, "pad": "x" * 100}
    assert cache.get("c0") is None  # the oldest went first
    assert (cache.hits, cache.misses) == (1, 1)
    cache.drop("c49")
    assert cache.get("c49") is None


def test_records_that_lie_close_together_are_read_in_one_span() -> None:
    # A session's records one after the other (asked for out of order), one far off, one in
    # another file: three reads, each covering exactly the records it serves.
    near = [Place("a", n * 1_000, 900) for n in range(100)]
    far = Place("a", 99_000 + 900 + FRAME_HEADER_SIZE + SPAN_GAP + 1, 900)
    other = Place("b", 0, 900)
    places = [*near[50:], far, other, *near[:50]]
    got = spans(places)
    assert [sorted(places[i] for i in members) for _, _, members in got] == [near, [far], [other]]
    start, end, _ = got[0]
    assert (start, end) == (FRAME_HEADER_SIZE, 99_000 + FRAME_HEADER_SIZE + 900)
    # A span stops at SPAN_MAX bytes.
    many = [Place("a", n * 10_000, 9_000) for n in range(3 * SPAN_MAX // 10_000)]
    assert all(end - start <= SPAN_MAX for start, end, _ in spans(many))
    assert sum(len(members) for _, _, members in spans(many)) == len(many)
