"""Planning a batch: each part of a job gets its seq and record, or is found stored. Pure."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs

from ..errors import InvalidField, SeqConflict
from ..models import MAX_SEQ, new_chunk_id

if TYPE_CHECKING:
    from ..models import Job, Part
    from .index import Index


@attrs.frozen
class Stored:
    """The outcome of committing one part: its chunk JSON and whether it is new."""

    chunk: dict[str, Any]
    created: bool


@attrs.define(eq=False)
class Planned:
    """One part of a job as the committer will handle it: a new record, or one stored."""

    part: Part
    meta: dict[str, Any] | None  # the record to write; None: answered by ``existing``
    existing: dict[str, Any] | None = None


def plan_chunks(
    index: Index,
    job: Job,
    reserved: dict[tuple[str, str], dict[int, dict[str, Any]]],
    known: dict[str, dict[str, Any]] | None = None,
) -> list[Planned]:
    """Give each part of *job* its seq and record, or find it already stored.

    All or nothing: a ``SeqConflict`` refuses the whole job. *reserved* holds the seqs
    earlier jobs of the same batch claimed, so two jobs in one batch never share a seq;
    *known* the metadata of the chunks ``collisions`` named.
    """
    key = (job.user_id, job.session_id)
    taken = reserved.setdefault(key, {})
    session = index.users.get(job.user_id, {}).get(job.session_id)
    next_seq = max(session.next_seq if session else 0, max(taken, default=-1) + 1)
    planned: list[Planned] = []
    claims: dict[int, dict[str, Any]] = {}
    for part in job.parts:
        seq = part.seq
        if seq is None:
            seq = max(next_seq, max(claims, default=-1) + 1)
        if seq >= MAX_SEQ:  # a client's seq + its multipart index, or the next one given
            msg = (
                f"seq {seq} is past 2^53-1, the last a session can hold (exact in JSON): "
                f"session {job.session_id!r} is full; go on in a new session"
            )
            raise InvalidField(msg)
        row = session.chunks.row_of(seq) if session is not None else None
        if row is not None:
            chunk_id = index.ids.chunk_id(index.table, row)
            existing = (known or {}).get(chunk_id)
            if existing is None:
                msg = f"chunk {chunk_id} was not read before planning"
                raise RuntimeError(msg)
            if existing["checksum"] != part.checksum:
                msg = (
                    f"seq {seq} of session {job.session_id!r} is already stored "
                    f"as chunk {existing['chunk_id']} with other bytes"
                )
                raise SeqConflict(msg)
            planned.append(Planned(part, None, existing))
            continue
        twin = taken.get(seq) or claims.get(seq)
        if twin is not None:  # the same seq earlier in this batch: same bytes, same chunk
            if twin["checksum"] != part.checksum:
                msg = f"seq {seq} of session {job.session_id!r} is sent with other bytes"
                raise SeqConflict(msg)
            planned.append(Planned(part, None, twin))
            continue
        meta = claims[seq] = build_meta(job, part, seq, index.transcript_status)
        planned.append(Planned(part, meta))
    new = [p.meta for p in planned if p.meta is not None]
    if len(new) > 1:
        # Replay indexes a group only when all of it made it to disk: all or none.
        group = new_chunk_id()
        for i, meta in enumerate(new):
            meta["group"] = [group, i, len(new)]
    taken.update(claims)
    return planned


def build_meta(
    job: Job, part: Part, seq: int, transcript_status: str = "disabled"
) -> dict[str, Any]:
    """The durable record of one chunk: its chunk JSON plus what the store needs."""
    assert part.audio_info is not None and part.analysis is not None
    return {
        "chunk_id": new_chunk_id(),
        "user_id": job.user_id,
        "session_id": job.session_id,
        "seq": seq,
        "received_at": job.received_at,
        "timestamp": part.timestamp,
        "size_bytes": len(part.body),
        "checksum": part.checksum,
        "content_type": part.content_type,
        "audio": part.audio_info,
        **part.analysis,
        "transcript": {"status": transcript_status, "text": "", "words": []},
        "processing_ms": {k: round(v * 1000, 3) for k, v in part.timings.items()},
    }
