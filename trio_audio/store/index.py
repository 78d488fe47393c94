"""The in-memory index of stored chunks: pure data, no I/O, no trio.

Memory holds, per chunk, its metadata packed as msgpack and where its audio lies in the log
(``BlobRef``); audio bytes stay on disk, so memory grows with metadata only. ``users`` maps
``user_id -> session_id -> SessionIndex`` (the session's chunks in seq order).

The committer is the only writer: it plans a batch (``plan_chunks``: seqs, idempotent
retries, conflicts), writes it, then applies it here (``insert``, ``apply_update``,
``apply_tombstone``). Replay applies the same records at start-up. Readers get copies
(chunk JSON dicts, ``SessionSummary``), never the index's own objects.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import attrs
import msgpack

from ..errors import InvalidField, NotFound, SeqConflict
from ..models import MAX_SEQ, new_chunk_id

if TYPE_CHECKING:
    from ..models import Job, Part
    from .record import BlobRef


@attrs.define(eq=False)
class Entry:
    """What memory keeps of one chunk."""

    packed: bytes  # msgpack of the chunk's metadata
    blob: BlobRef
    user_id: str
    session_id: str
    seq: int
    duration_ms: float

    def meta(self) -> dict[str, Any]:
        value: dict[str, Any] = msgpack.unpackb(self.packed)
        return value


@attrs.define(eq=False)
class SessionIndex:
    """The chunks of one session in seq order, with where each starts on its timeline.

    ``starts[i]`` is the summed duration of the chunks before ``seqs[i]``, kept up to date as
    chunks arrive (appending is O(1); a chunk that arrives out of order shifts the ones after
    it). A chunk's ``offset_ms`` is read from here, so it always agrees with the session as
    stored, whatever order the pipeline committed its chunks in.
    """

    by_seq: dict[int, str] = attrs.field(factory=dict)
    seqs: list[int] = attrs.field(factory=list)
    durations: list[float] = attrs.field(factory=list)
    starts: list[float] = attrs.field(factory=list)
    duration_ms: float = 0.0
    transcript: dict[str, str] | None = None  # the session's, cached until a chunk changes

    def add(self, seq: int, chunk_id: str, duration_ms: float) -> None:
        self.transcript = None
        if seq in self.by_seq:
            self.remove(seq)
        i = bisect.bisect_left(self.seqs, seq)
        start = self.starts[i - 1] + self.durations[i - 1] if i else 0.0
        self.seqs.insert(i, seq)
        self.durations.insert(i, duration_ms)
        self.starts.insert(i, start)
        for j in range(i + 1, len(self.starts)):
            self.starts[j] += duration_ms
        self.by_seq[seq] = chunk_id
        self.duration_ms += duration_ms

    def remove(self, seq: int) -> None:
        self.transcript = None
        i = bisect.bisect_left(self.seqs, seq)
        if i == len(self.seqs) or self.seqs[i] != seq:
            return
        duration = self.durations[i]
        del self.seqs[i], self.durations[i], self.starts[i]
        for j in range(i, len(self.starts)):
            self.starts[j] -= duration
        del self.by_seq[seq]
        self.duration_ms -= duration

    def offset_ms(self, seq: int) -> float:
        """Where the chunk *seq* starts (or would start) on the session's timeline."""
        i = bisect.bisect_left(self.seqs, seq)  # the chunks before it are seqs[:i]
        return self.starts[i - 1] + self.durations[i - 1] if i else 0.0

    @property
    def next_seq(self) -> int:
        return self.seqs[-1] + 1 if self.seqs else 0

    def after(self, seq: int | None) -> Iterator[tuple[int, str]]:
        """(seq, chunk_id) pairs in order, starting after *seq* (from the start if None)."""
        start = 0 if seq is None else bisect.bisect_right(self.seqs, seq)
        for s in self.seqs[start:]:
            yield s, self.by_seq[s]


@attrs.frozen
class SessionSummary:
    """A reader's copy of one session's totals."""

    session_id: str
    chunk_count: int
    duration_ms: float
    next_seq: int
    transcript: dict[str, str]


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


def _transcript_pending(meta: dict[str, Any]) -> bool:
    return bool(meta.get("transcript", {}).get("status") == "pending")


class Index:
    """Chunks by id and by ``user -> session -> seq``; the committer's and replay's target."""

    def __init__(self, transcript_status: str = "disabled") -> None:
        self.chunks: dict[str, Entry] = {}
        self.users: dict[str, dict[str, SessionIndex]] = {}
        self.audio_bytes = 0
        self.dead_bytes = 0  # deleted or replaced bytes since the last compaction
        # New chunks start "pending" when a speech engine will transcribe them.
        self.transcript_status = transcript_status
        self.pending: set[str] = set()  # chunks whose transcript is still pending

    # -- applying records ------------------------------------------------------------------

    def insert(self, chunk_id: str, entry: Entry, meta: dict[str, Any] | None = None) -> Entry:
        """Index *entry* (*meta*: its metadata unpacked, when the caller has it)."""
        self.chunks[chunk_id] = entry
        if _transcript_pending(entry.meta() if meta is None else meta):
            self.pending.add(chunk_id)
        sessions = self.users.setdefault(entry.user_id, {})
        sessions.setdefault(entry.session_id, SessionIndex()).add(
            entry.seq, chunk_id, entry.duration_ms
        )
        self.audio_bytes += entry.blob.length
        return entry

    def insert_meta(self, meta: dict[str, Any], blob: BlobRef) -> Entry:
        entry = Entry(
            packed=msgpack.packb(meta),
            blob=blob,
            user_id=meta["user_id"],
            session_id=meta["session_id"],
            seq=meta["seq"],
            duration_ms=float(meta["audio"]["duration_ms"]),
        )
        return self.insert(meta["chunk_id"], entry, meta)

    def apply_update(self, patch: dict[str, Any]) -> dict[str, Any] | None:
        """Replace the top-level fields in ``patch["set"]`` of the chunk it names."""
        entry = self.chunks.get(patch["chunk_id"])
        if entry is None:
            return None  # deleted since
        meta = entry.meta()
        meta.update(patch["set"])
        self.dead_bytes += len(entry.packed)
        entry.packed = msgpack.packb(meta)
        self.users[entry.user_id][entry.session_id].transcript = None
        if _transcript_pending(meta):
            self.pending.add(patch["chunk_id"])
        else:
            self.pending.discard(patch["chunk_id"])
        return meta

    def apply_tombstone(self, tombstone: dict[str, Any]) -> list[tuple[str, Entry]]:
        """Remove the chunks a TOMBSTONE names; ``(chunk_id, entry)`` of those that were there."""
        removed = []
        for chunk_id in tombstone["chunk_ids"]:
            entry = self.chunks.pop(chunk_id, None)
            if entry is None:
                continue
            self.pending.discard(chunk_id)
            removed.append((chunk_id, entry))
            sessions = self.users.get(entry.user_id, {})
            session = sessions.get(entry.session_id)
            if session is not None and session.by_seq.get(entry.seq) == chunk_id:
                session.remove(entry.seq)
                if not session.seqs:
                    del sessions[entry.session_id]
                    if not sessions:
                        del self.users[entry.user_id]
            self.audio_bytes -= entry.blob.length
            self.dead_bytes += entry.blob.length + len(entry.packed)
        return removed

    # -- planning a batch ------------------------------------------------------------------

    def plan_chunks(
        self, job: Job, reserved: dict[tuple[str, str], dict[int, dict[str, Any]]]
    ) -> list[Planned]:
        """Give each part of *job* its seq and record, or find it already stored.

        All or nothing: a ``SeqConflict`` refuses the whole job. *reserved* holds the seqs
        earlier jobs of the same batch claimed, so two jobs in one batch never share a seq.
        """
        key = (job.user_id, job.session_id)
        taken = reserved.setdefault(key, {})
        session = self.users.get(job.user_id, {}).get(job.session_id)
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
            chunk_id = session.by_seq.get(seq) if session is not None else None
            if chunk_id is not None:
                existing = self.chunks[chunk_id].meta()
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
            meta = claims[seq] = build_meta(job, part, seq, self.transcript_status)
            planned.append(Planned(part, meta))
        new = [p.meta for p in planned if p.meta is not None]
        if len(new) > 1:
            # Replay indexes a group only when all of it made it to disk: all or none.
            group = new_chunk_id()
            for i, meta in enumerate(new):
                meta["group"] = [group, i, len(new)]
        taken.update(claims)
        return planned

    def present(self, chunk_ids: list[str]) -> list[str]:
        return [chunk_id for chunk_id in chunk_ids if chunk_id in self.chunks]

    def session_chunk_ids(self, user_id: str, session_id: str) -> list[str]:
        session = self.users.get(user_id, {}).get(session_id)
        return [chunk_id for _, chunk_id in session.after(None)] if session is not None else []

    # -- reads -------------------------------------------------------------------------------

    def entry(self, chunk_id: str) -> Entry:
        entry = self.chunks.get(chunk_id)
        if entry is None:
            msg = f"no chunk {chunk_id!r}"
            raise NotFound(msg)
        return entry

    def chunk_json(self, meta: dict[str, Any]) -> dict[str, Any]:
        """The chunk JSON a client sees: the record, less the store's own fields, plus
        ``offset_ms``, where the chunk starts on its session's timeline as stored now."""
        chunk = {k: v for k, v in meta.items() if k != "group"}
        session = self.users.get(meta["user_id"], {}).get(meta["session_id"])
        offset = session.offset_ms(meta["seq"]) if session is not None else 0.0
        chunk["offset_ms"] = round(offset, 3)
        return chunk

    def get(self, chunk_id: str) -> dict[str, Any]:
        return self.chunk_json(self.entry(chunk_id).meta())

    def session_transcript(self, index: SessionIndex) -> dict[str, str]:
        """The session's transcript so far: the text of its done chunks in seq order.

        ``status`` is ``pending`` while any chunk is, else ``failed`` if any chunk failed,
        ``disabled`` when no chunk was transcribed, and ``done`` only when every chunk is.
        Computed from every chunk once, then kept until one of them changes, so paging
        through a long session does not read the whole session for each page."""
        if index.transcript is None:
            statuses = set()
            texts = []
            for _, chunk_id in index.after(None):
                transcript = self.chunks[chunk_id].meta()["transcript"]
                statuses.add(transcript["status"])
                if transcript["status"] == "done" and transcript["text"]:
                    texts.append(transcript["text"])
            if "pending" in statuses:
                status = "pending"
            elif "failed" in statuses:
                status = "failed"
            elif statuses == {"disabled"}:
                status = "disabled"
            else:
                status = "done"
            index.transcript = {"status": status, "text": " ".join(texts)}
        return index.transcript

    def summary(self, user_id: str, session_id: str) -> SessionSummary | None:
        index = self.users.get(user_id, {}).get(session_id)
        if index is None:
            return None
        return SessionSummary(
            session_id=session_id,
            chunk_count=len(index.seqs),
            duration_ms=round(index.duration_ms, 3),
            next_seq=index.next_seq,
            transcript=dict(self.session_transcript(index)),
        )

    def chunks_after(self, user_id: str, session_id: str, seq: int | None) -> list[tuple[int, str]]:
        """(seq, chunk_id) of the session's chunks after *seq* (all when None), in order."""
        index = self.users.get(user_id, {}).get(session_id)
        return list(index.after(seq)) if index is not None else []

    def page(
        self, user_id: str, only: str | None, limit: int, after: tuple[str, int] | None
    ) -> tuple[list[tuple[SessionSummary, list[dict[str, Any]]]], tuple[str, int] | None]:
        """One page of a user's chunks, grouped by session (sessions by id, chunks by seq).

        *after* is where the previous page ended; the second value is where this one ends
        when more follow (None on the last page)."""
        sessions = self.users.get(user_id, {})
        names = sorted(n for n in sessions if only is None or n == only)
        if after is not None:
            names = [n for n in names if n >= after[0]]

        def positions() -> Iterator[tuple[str, int, str]]:
            for name in names:
                start = after[1] if after is not None and name == after[0] else None
                for seq, chunk_id in sessions[name].after(start):
                    yield name, seq, chunk_id

        page: dict[str, list[dict[str, Any]]] = {}
        last: tuple[str, int] | None = None
        more = None
        for taken, (name, seq, chunk_id) in enumerate(positions()):
            if taken == limit:
                more = last
                break
            page.setdefault(name, []).append(self.get(chunk_id))
            last = (name, seq)
        out = []
        for name, chunks in page.items():
            summary = self.summary(user_id, name)
            assert summary is not None
            out.append((summary, chunks))
        return out, more

    def pending_transcripts(self) -> list[str]:
        """Every chunk still ``pending`` transcription, in user, session and seq order."""
        return [chunk_id for _, _, chunk_id in self.pending_chunks()]

    def pending_chunks(self) -> list[tuple[str, str, str]]:
        """``(user_id, session_id, chunk_id)`` of every chunk still ``pending``
        transcription, in user, session and seq order (costs what is pending, not the
        index)."""
        chunks = self.chunks
        found = sorted(
            (chunks[c].user_id, chunks[c].session_id, chunks[c].seq, c) for c in self.pending
        )
        return [(user_id, session_id, chunk_id) for user_id, session_id, _, chunk_id in found]


class IndexReads:
    """The read API every backend answers from its in-memory index: mixed into ``Store``
    and ``JetStreamStore``, which set ``_index`` and ``_pending`` (the chunks their replay
    found still pending transcription). Copies out, never the index's own objects."""

    _index: Index
    _pending: list[str]

    def get(self, chunk_id: str) -> dict[str, Any]:
        """The chunk JSON of *chunk_id*; ``NotFound`` if it is not stored."""
        return self._index.get(chunk_id)

    def has(self, chunk_id: str) -> bool:
        return chunk_id in self._index.chunks

    def offset_ms(self, chunk_id: str) -> float | None:
        """Where a stored chunk starts on its session's timeline now (None: not stored);
        what its chunk JSON says, without unpacking it."""
        entry = self._index.chunks.get(chunk_id)
        if entry is None:
            return None
        session = self._index.users[entry.user_id][entry.session_id]
        return round(session.offset_ms(entry.seq), 3)

    def chunk_ids(self) -> list[str]:
        """Every stored chunk's id (in no particular order)."""
        return list(self._index.chunks)

    def session_ids(self, user_id: str) -> list[str]:
        """The ids of a user's sessions that hold chunks, sorted."""
        return sorted(self._index.users.get(user_id, {}))

    def owner(self, chunk_id: str) -> str | None:
        """The user a stored chunk belongs to (None: not stored)."""
        entry = self._index.chunks.get(chunk_id)
        return entry.user_id if entry is not None else None

    def summary(self, user_id: str, session_id: str) -> SessionSummary | None:
        """A session's totals and transcript (None: no chunk stored)."""
        return self._index.summary(user_id, session_id)

    def chunks_after(self, user_id: str, session_id: str, seq: int | None) -> list[tuple[int, str]]:
        """``(seq, chunk_id)`` of a session's chunks after *seq* (all when None), in order."""
        return self._index.chunks_after(user_id, session_id, seq)

    def page(
        self, user_id: str, only: str | None, limit: int, after: tuple[str, int] | None
    ) -> tuple[list[tuple[SessionSummary, list[dict[str, Any]]]], tuple[str, int] | None]:
        """One page of a user's chunks by session; see ``Index.page``."""
        return self._index.page(user_id, only, limit, after)

    def pending_transcripts(self) -> list[str]:
        """Chunks that replay found still ``pending`` transcription, in session/seq order."""
        return list(self._pending)


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
