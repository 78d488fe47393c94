"""One commit's batch, planned and applied: the local store's committer without its I/O.

Before the write, ``plan_batch`` says what each write adds to the log (all or nothing), or
refuses it with the error that says why (``SeqConflict``, ``NotFound``); ``wanted`` names
the chunks whose metadata planning needs, which the committer reads from the log first.
After the write, ``apply_batch`` applies the written plans to the index and the metadata
cache, in the order of their records, and gives the ``Committed`` events they make and the
answers for their writers. Nothing here reads or writes a file or waits: ``Store._commit``
reads, writes the records, and sends events and answers.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ..errors import InternalError, NotFound, ServiceError
from ..metrics import Metrics
from ..models import Job, Reply
from .events import ChunkStored, ChunkUpdated, Committed, Update, Write, deleted_events
from .index import Index, Place, Planned, Stored
from .logio import Frame, Record
from .plan import NotRead, plan_chunks
from .reads import MetaCache
from .record import FRAME_HEADER_SIZE, RecordType

Plans = list[tuple[Write, list[Planned] | Record]]
Answers = list[tuple[Reply, Any]]


def wanted(index: Index, batch: list[Write]) -> list[str]:
    """The chunks whose metadata planning *batch* needs, once each: the stored chunks at
    the seqs jobs name (their checksums) and the chunks updates change."""
    ids: list[str] = []
    for write in batch:
        if isinstance(write, Job):
            ids += index.collisions(write)
        elif isinstance(write, Update) and index.has(write.chunk_id):
            ids.append(write.chunk_id)
    return list(dict.fromkeys(ids))


def plan_batch(
    index: Index, batch: list[Write], known: dict[str, dict[str, Any]], metrics: Metrics
) -> Plans:
    """The plans of *batch*'s writes that go on; a refused one is answered here and then,
    one whose sender gave up (a stage timeout) is passed over."""
    plans: Plans = []
    reserved: dict[tuple[str, str], dict[int, dict[str, Any]]] = {}
    for write in batch:
        if write.reply.done:  # its sender gave up (a stage timeout): nothing to do
            continue
        try:
            plans.append((write, _plan(index, write, reserved, known)))
        except ServiceError as exc:
            metrics.failed(exc.code)
            write.reply.fail(exc)
        except NotRead as exc:  # the index lists a chunk the log could not give back
            metrics.failed(InternalError.code)
            write.reply.fail(InternalError(f"a stored chunk could not be read: {exc}"))
    return plans


def records_of(plans: Plans) -> list[Record]:
    """The records *plans* add to the log, in order."""
    records: list[Record] = []
    for _, plan in plans:
        if isinstance(plan, list):
            records += [(RecordType.CHUNK, p.packed, p.part.body) for p in plan if p.meta]
        else:
            records.append(plan)
    return records


def _plan(
    index: Index,
    write: Write,
    reserved: dict[tuple[str, str], dict[int, dict[str, Any]]],
    known: dict[str, dict[str, Any]],
) -> list[Planned] | Record:
    """What *write* adds to the log (all or nothing), or the error that refuses it."""
    if isinstance(write, Job):
        return plan_chunks(index, write, reserved, known)
    if isinstance(write, Update):
        if write.chunk_id not in known:
            msg = f"no chunk {write.chunk_id!r}"
            raise NotFound(msg)
        return RecordType.UPDATE, {"chunk_id": write.chunk_id, "set": write.fields}, None
    if write.session is not None:
        user_id, session_id = write.session
        chunk_ids = index.session_chunk_ids(user_id, session_id)
        if not chunk_ids:
            msg = f"user {user_id!r} has no session {session_id!r}"
            raise NotFound(msg)
    else:
        chunk_ids = index.present(write.chunk_ids)
        if not chunk_ids:
            msg = f"no chunk {', '.join(repr(c) for c in write.chunk_ids[:3])}"
            raise NotFound(msg)
    return RecordType.TOMBSTONE, {"chunk_ids": chunk_ids}, None


def apply_batch(
    index: Index,
    cache: MetaCache,
    metrics: Metrics,
    plans: Plans,
    frames: list[Frame],
    known: dict[str, dict[str, Any]],
) -> tuple[list[Committed], Answers]:
    """Apply *plans*, whose records the log holds at *frames*: the events they make and the
    answers for their writers (an update of a chunk deleted meanwhile is refused here)."""
    events: list[Committed] = []
    answers: Answers = []
    frame_iter = iter(frames)
    for write, plan in plans:
        if isinstance(write, Job):
            assert isinstance(plan, list)
            results, stored = _apply_job(index, cache, metrics, write, plan, frame_iter)
            answers.append((write.reply, results))
            events += stored
        elif isinstance(write, Update):
            _, (segment, offset, size) = next(frame_iter)
            assert not isinstance(plan, list) and isinstance(plan[1], dict)
            place = Place(segment, offset, size - FRAME_HEADER_SIZE)
            meta = known.get(write.chunk_id)
            if meta is None or not index.apply_update(plan[1], place):
                write.reply.fail(NotFound(f"chunk {write.chunk_id!r} was deleted"))
                continue
            meta.update(write.fields)
            cache.put(write.chunk_id, meta)
            chunk = index.chunk_json(meta)
            answers.append((write.reply, chunk))
            events.append(ChunkUpdated(chunk))
        else:
            next(frame_iter)
            assert not isinstance(plan, list) and isinstance(plan[1], dict)
            removed = index.apply_tombstone(plan[1])
            for chunk_id, _ in removed:
                cache.drop(chunk_id)
                known.pop(chunk_id, None)
            answers.append((write.reply, [chunk_id for chunk_id, _ in removed]))
            events += deleted_events(removed)
    return events, answers


def _apply_job(
    index: Index,
    cache: MetaCache,
    metrics: Metrics,
    job: Job,
    plan: list[Planned],
    frames: Iterator[Frame],
) -> tuple[list[Stored], list[Committed]]:
    events: list[Committed] = []
    results = []
    for planned in plan:
        if planned.meta is None:
            assert planned.existing is not None
            results.append(Stored(index.chunk_json(planned.existing), created=False))
            continue
        ref, (segment, offset, _) = next(frames)
        assert ref is not None
        header = 2 if ref.length < 1 << 8 else 3 if ref.length < 1 << 16 else 5
        length = ref.offset - header - offset - FRAME_HEADER_SIZE
        meta = planned.meta
        index.insert_meta(meta, Place(segment, offset, length), ref.length)
        # The cache keeps the very bytes the log has (made once, from the record's own).
        cache.put(meta["chunk_id"], meta, planned.packed)
        chunk = index.chunk_json(meta)
        results.append(Stored(chunk, created=True))
        metrics.stored(planned.record.size_bytes)
        events.append(ChunkStored(chunk, job.source, planned.record.speech_pcm))
    return results, events
