"""The in-memory index: seqs, idempotent retries, conflicts, timelines, paging. Pure."""

from __future__ import annotations

from typing import Any

import pytest

from trio_audio.errors import SeqConflict
from trio_audio.models import Job, Part
from trio_audio.store.index import Index
from trio_audio.store.record import BlobRef


def part(checksum: str, seq: int | None = None, duration_ms: float = 100.0) -> Part:
    p = Part(body=checksum.encode(), content_type="audio/wav", seq=seq)
    p.checksum = checksum
    p.audio_info = {"duration_ms": duration_ms}
    p.analysis = {}
    return p


def commit(index: Index, job: Job) -> list[dict[str, Any]]:
    """Plan *job* alone and apply it as the committer would; the chunk JSON of each part."""
    out = []
    for planned in index.plan_chunks(job, {}):
        if planned.meta is None:
            assert planned.existing is not None
            out.append(index.chunk_json(planned.existing))
            continue
        index.insert_meta(planned.meta, BlobRef("seg", 0, len(planned.part.body)))
        out.append(index.chunk_json(planned.meta))
    return out


def test_seqs_are_given_in_order_and_a_retry_is_answered_with_the_stored_chunk() -> None:
    index = Index()
    first = commit(index, Job("u", "s", [part("a"), part("b")]))
    assert [c["seq"] for c in first] == [0, 1]
    assert first[0]["chunk_id"] != first[1]["chunk_id"]
    again = commit(index, Job("u", "s", [part("a", seq=0)]))
    assert again[0]["chunk_id"] == first[0]["chunk_id"]
    assert index.summary("u", "s") is not None
    assert index.summary("u", "s").chunk_count == 2  # type: ignore[union-attr]


def test_the_same_seq_with_other_bytes_is_a_conflict_and_changes_nothing() -> None:
    index = Index()
    commit(index, Job("u", "s", [part("a", seq=0)]))
    with pytest.raises(SeqConflict):
        index.plan_chunks(Job("u", "s", [part("z", seq=1), part("other", seq=0)]), {})
    assert [seq for seq, _ in index.chunks_after("u", "s", None)] == [0]


def test_two_jobs_in_one_batch_never_share_a_seq() -> None:
    index = Index()
    reserved: dict[tuple[str, str], dict[int, dict[str, Any]]] = {}
    one = index.plan_chunks(Job("u", "s", [part("a")]), reserved)
    two = index.plan_chunks(Job("u", "s", [part("b")]), reserved)
    assert one[0].meta is not None and two[0].meta is not None
    assert (one[0].meta["seq"], two[0].meta["seq"]) == (0, 1)
    same = index.plan_chunks(Job("u", "s", [part("a", seq=0)]), reserved)
    assert same[0].meta is None and same[0].existing is one[0].meta  # a retry in the batch


def test_a_multipart_job_is_one_group() -> None:
    index = Index()
    planned = index.plan_chunks(Job("u", "s", [part("a"), part("b"), part("c")]), {})
    groups = {p.meta["group"][0] for p in planned if p.meta is not None}
    assert len(groups) == 1
    assert [p.meta["group"][1:] for p in planned if p.meta is not None] == [
        [0, 3],
        [1, 3],
        [2, 3],
    ]


def test_offsets_follow_the_session_timeline_whatever_the_commit_order() -> None:
    index = Index()
    late = commit(index, Job("u", "s", [part("c", seq=2, duration_ms=300.0)]))[0]
    commit(index, Job("u", "s", [part("a", seq=0, duration_ms=100.0)]))
    commit(index, Job("u", "s", [part("b", seq=1, duration_ms=200.0)]))
    assert index.get(late["chunk_id"])["offset_ms"] == 300.0
    index.apply_tombstone({"chunk_ids": [index.chunks_after("u", "s", None)[1][1]]})
    assert index.get(late["chunk_id"])["offset_ms"] == 100.0


def test_updates_tombstones_and_the_session_transcript() -> None:
    index = Index(transcript_status="pending")
    chunks = commit(index, Job("u", "s", [part("a"), part("b")]))
    assert index.summary("u", "s").transcript["status"] == "pending"  # type: ignore[union-attr]
    for n, chunk in enumerate(chunks):
        done = {"status": "done", "text": f"word{n}", "words": []}
        index.apply_update({"chunk_id": chunk["chunk_id"], "set": {"transcript": done}})
    summary = index.summary("u", "s")
    assert summary is not None and summary.transcript == {"status": "done", "text": "word0 word1"}
    assert index.apply_update({"chunk_id": "gone", "set": {}}) is None
    removed = index.apply_tombstone({"chunk_ids": [c["chunk_id"] for c in chunks] + ["gone"]})
    assert len(removed) == 2
    assert index.summary("u", "s") is None and index.users == {}
    assert index.audio_bytes == 0 and index.dead_bytes > 0


def test_pages_walk_every_chunk_once_across_sessions() -> None:
    index = Index()
    for session in ("b", "a"):
        commit(index, Job("u", session, [part(f"{session}{n}") for n in range(3)]))
    seen: list[tuple[str, int]] = []
    after = None
    while True:
        page, after = index.page("u", None, 2, after)
        seen += [(summary.session_id, c["seq"]) for summary, chunks in page for c in chunks]
        if after is None:
            break
    assert seen == [("a", 0), ("a", 1), ("a", 2), ("b", 0), ("b", 1), ("b", 2)]
    only, more = index.page("u", "b", 10, None)
    assert [s.session_id for s, _ in only] == ["b"] and more is None


def test_a_session_is_done_only_when_every_chunk_is() -> None:
    index = Index(transcript_status="pending")
    chunks = commit(index, Job("u", "s", [part("a"), part("b")]))
    done = {"status": "done", "text": "hello", "words": []}
    failed = {"status": "failed", "text": "", "words": [], "error": "the worker died"}
    index.apply_update({"chunk_id": chunks[0]["chunk_id"], "set": {"transcript": done}})
    index.apply_update({"chunk_id": chunks[1]["chunk_id"], "set": {"transcript": failed}})
    summary = index.summary("u", "s")
    assert summary is not None and summary.transcript == {"status": "failed", "text": "hello"}


def test_the_pending_transcripts_follow_updates_and_deletes_in_session_order() -> None:
    index = Index("pending")
    b = commit(index, Job("u", "b", [part("x")]))[0]
    a0, a1 = commit(index, Job("u", "a", [part("y"), part("z")]))
    assert index.pending_chunks() == [("u", "a", a0["chunk_id"]), ("u", "a", a1["chunk_id"]),
                                      ("u", "b", b["chunk_id"])]  # fmt: skip
    index.apply_update({"chunk_id": a0["chunk_id"], "set": {"transcript": {"status": "done"}}})
    index.apply_tombstone({"chunk_ids": [b["chunk_id"]]})
    assert index.pending_transcripts() == [a1["chunk_id"]]
    index.apply_update({"chunk_id": a1["chunk_id"], "set": {"transcript": {"status": "pending"}}})
    assert index.pending_transcripts() == [a1["chunk_id"]]
    plain = Index()  # no speech engine: new chunks start "disabled"
    commit(plain, Job("u", "s", [part("q")]))
    assert plain.pending_transcripts() == []
