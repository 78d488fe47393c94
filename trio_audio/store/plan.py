"""Planning a batch: each part of a job gets its seq and record, or is found stored. Pure.

A new chunk's record is the ``ChunkRecord`` the analysis built, with what only the committer
decides (its seq, its transcript status, the group of a multipart job): ``Planned.meta`` as a
map for the index and the answers, ``Planned.packed`` as the log's bytes, made from the
record's own packed bytes (nothing is packed twice, nothing unpacked).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import attrs

from ..errors import InvalidField, SeqConflict
from ..models import MAX_SEQ, new_chunk_id

if TYPE_CHECKING:
    from ..models import ChunkRecord, Job, Part
    from .index import Index


class NotRead(RuntimeError):
    """A stored chunk at a seq the job names was not read before planning: on a shared log,
    another node's chunk the follower applied meanwhile (plan it again, reading it)."""


@attrs.frozen
class Stored:
    """The outcome of committing one part: its chunk JSON and whether it is new."""

    chunk: dict[str, Any]
    created: bool


@attrs.frozen(eq=False)
class Planned:
    """One part of a job as the committer will handle it: a new record, or one stored."""

    part: Part
    record: ChunkRecord
    meta: dict[str, Any] | None  # the record to write; None: answered by ``existing``
    existing: dict[str, Any] | None = None

    @functools.cached_property
    def packed(self) -> bytes:
        """``meta`` as the log stores it (msgpack), from the bytes the record was built with;
        made once, for the log and then the metadata cache."""
        meta = self.meta
        assert meta is not None
        return self.record.packed(meta["seq"], meta["transcript"]["status"], meta.get("group"))


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
    new: list[tuple[int, int]] = []  # (index in *planned*, seq) of the parts to write
    twins: list[tuple[int, int]] = []  # (index, seq) of parts that repeat one of those
    for part, record in zip(job.parts, job.records, strict=True):
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
                raise NotRead(msg)
            if existing["checksum"] != record.checksum:
                msg = (
                    f"seq {seq} of session {job.session_id!r} is already stored "
                    f"as chunk {existing['chunk_id']} with other bytes"
                )
                raise SeqConflict(msg)
            planned.append(Planned(part, record, None, existing))
            continue
        twin = taken.get(seq) or claims.get(seq)
        if twin is not None:  # the same seq earlier in this batch: same bytes, same chunk
            if twin["checksum"] != record.checksum:
                msg = f"seq {seq} of session {job.session_id!r} is sent with other bytes"
                raise SeqConflict(msg)
            if seq in claims:  # earlier in this job: its record is made below
                twins.append((len(planned), seq))
            planned.append(Planned(part, record, None, twin))
            continue
        claims[seq] = {"checksum": record.checksum}  # its record once the group is known
        new.append((len(planned), seq))
        planned.append(Planned(part, record, None))
    # Replay indexes a group only when all of it made it to disk: all or none.
    group = new_chunk_id() if len(new) > 1 else None
    for i, (at, seq) in enumerate(new):
        meta = planned[at].record.meta(
            seq, index.transcript_status, None if group is None else [group, i, len(new)]
        )
        claims[seq] = meta
        planned[at] = attrs.evolve(planned[at], meta=meta)
    for at, seq in twins:
        planned[at] = attrs.evolve(planned[at], existing=claims[seq])
    taken.update(claims)
    return planned
