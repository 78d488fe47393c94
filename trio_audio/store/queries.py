"""What the index answers: lookups by id, places in the log, sessions, pages, the transcript
queue. Mixed into ``index.Index``, which holds the data and applies records. Pure."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import attrs
import numpy as np

from ..errors import NotFound
from .keydir import DEAD, PENDING, STATUSES, Ids, Location, Place, Session


@attrs.frozen
class PageSlice:
    """A session's part of a page: its chunks' ids, rows and offsets on its timeline."""

    session_id: str
    chunk_ids: list[str]
    rows: list[int]
    offsets: list[float]


@attrs.frozen
class SessionSummary:
    """A reader's copy of one session's totals."""

    session_id: str
    chunk_count: int
    duration_ms: float
    next_seq: int
    transcript: dict[str, str]


def _bin_header_size(n: int) -> int:
    return 2 if n < 1 << 8 else 3 if n < 1 << 16 else 5


class Lookups:
    """The index's reads (see the module docstring); ``Index`` sets the attributes."""

    table: np.ndarray
    count: int
    ids: Ids
    users: dict[str, dict[str, Session]]
    sessions: list[Session | None]
    segments: list[str]
    more_updates: dict[int, list[tuple[int, int, int]]]
    cluster: bool
    _header: int

    def has(self, chunk_id: str) -> bool:
        return self.ids.find(self.table, chunk_id) is not None

    def row(self, chunk_id: str) -> int:
        row = self.ids.find(self.table, chunk_id)
        if row is None:
            msg = f"no chunk {chunk_id!r}"
            raise NotFound(msg)
        return row

    def session_of(self, row: int) -> Session:
        session = self.sessions[int(self.table["sess"][row])]
        assert session is not None
        return session

    def owner(self, chunk_id: str) -> str | None:
        row = self.ids.find(self.table, chunk_id)
        return None if row is None else self.session_of(row).user_id

    def key(self, chunk_id: str) -> tuple[str, str, int] | None:
        """``(user_id, session_id, seq)`` of a stored chunk (None: not stored)."""
        row = self.ids.find(self.table, chunk_id)
        if row is None:
            return None
        session = self.session_of(row)
        return session.user_id, session.session_id, int(self.table["seq"][row])

    def stream_seq(self, chunk_id: str) -> int | None:
        """Where a chunk's CHUNK record lies (on a cluster: its stream sequence)."""
        row = self.ids.find(self.table, chunk_id)
        return None if row is None else int(self.table["off"][row])

    def status(self, chunk_id: str) -> str | None:
        """A stored chunk's transcript status (None: not stored)."""
        row = self.ids.find(self.table, chunk_id)
        return None if row is None else STATUSES[int(self.table["status"][row])]

    def offset_ms(self, chunk_id: str) -> float | None:
        row = self.ids.find(self.table, chunk_id)
        if row is None:
            return None
        return round(self.session_of(row).chunks.offset_ms(int(self.table["seq"][row])), 3)

    def location(self, chunk_id: str) -> Location:
        """Where a stored chunk's metadata and audio lie; ``NotFound`` if it is not stored."""
        return self.locations([self.row(chunk_id)])[0]

    def locations(self, rows: list[int]) -> list[Location]:
        """Where the chunks in *rows* lie (one gather of the table)."""
        segments, more, header, cluster = (
            self.segments,
            self.more_updates,
            self._header,
            self.cluster,
        )
        out = []
        for row, item in zip(rows, self.table[rows].tolist(), strict=True):
            _, _, _, off, uoff, _, seg, mlen, alen, useg, ulen, _ = item
            updates: tuple[Place, ...] = ()
            if ulen:
                older = [
                    Place(segments[s], o, 0 if cluster else n) for s, o, n in more.get(row, ())
                ]
                updates = (*older, Place(segments[useg], uoff, 0 if cluster else ulen))
            audio = 0 if cluster else off + header + mlen + _bin_header_size(alen)
            out.append(Location(Place(segments[seg], off, mlen), updates, audio, alen))
        return out

    def chunk_json(self, meta: dict[str, Any], offset: float | None = None) -> dict[str, Any]:
        """The chunk JSON a client sees: the record, less the store's own fields, plus
        ``offset_ms``, where the chunk starts on its session's timeline as stored now
        (*offset*, when the caller has it)."""
        where = self.offset_of(meta) if offset is None else offset
        return own_chunk_json(dict(meta), round(where, 3))

    def offset_of(self, meta: dict[str, Any]) -> float:
        """Where the chunk of *meta* starts on its session's timeline as stored now."""
        session = self.users.get(meta["user_id"], {}).get(meta["session_id"])
        return session.chunks.offset_ms(meta["seq"]) if session is not None else 0.0

    def session_transcript(self, session: Session) -> dict[str, str]:
        """The session's transcript so far: the text of its done chunks in seq order.

        ``status`` is ``pending`` while any chunk is, else ``failed`` if any chunk failed,
        ``disabled`` when no chunk was transcribed, and ``done`` only when every chunk is.
        Counted from the status column, then kept until a chunk of it changes."""
        if session.transcript is None:
            rows = session.chunks.rows[: session.chunks.n]
            counts = np.bincount(self.table["status"][rows], minlength=len(STATUSES))
            if counts[PENDING]:
                status = "pending"
            elif counts[STATUSES.index("failed")]:
                status = "failed"
            elif counts[0] == len(rows):
                status = "disabled"
            else:
                status = "done"
            text = " ".join(session.texts[s] for s in sorted(session.texts))
            session.transcript = {"status": status, "text": text}
        return session.transcript

    def summary(self, user_id: str, session_id: str) -> SessionSummary | None:
        session = self.users.get(user_id, {}).get(session_id)
        if session is None:
            return None
        return SessionSummary(
            session_id=session_id,
            chunk_count=session.chunks.n,
            duration_ms=round(session.chunks.duration_ms, 3),
            next_seq=session.next_seq,
            transcript=dict(self.session_transcript(session)),
        )

    def chunks_after(self, user_id: str, session_id: str, seq: int | None) -> list[tuple[int, str]]:
        """(seq, chunk_id) of the session's chunks after *seq* (all when None), in order."""
        session = self.users.get(user_id, {}).get(session_id)
        if session is None:
            return []
        seqs, rows = session.chunks.after(seq)
        name = self.ids.chunk_id
        return [(s, name(self.table, r)) for s, r in zip(seqs.tolist(), rows.tolist(), strict=True)]

    def page_ids(
        self, user_id: str, only: str | None, limit: int, after: tuple[str, int] | None
    ) -> tuple[list[PageSlice], tuple[str, int] | None]:
        """One page of a user's chunks, grouped by session (sessions by id, chunks by seq):
        per session its chunk ids, rows and offsets; and where the page ends when more
        follow (None on the last page)."""
        sessions = self.users.get(user_id, {})
        names = sorted(n for n in sessions if only is None or n == only)
        if after is not None:
            names = [n for n in names if n >= after[0]]
        out: list[PageSlice] = []
        left = limit
        more = None
        last: tuple[str, int] | None = None
        for name in names:
            start = after[1] if after is not None and name == after[0] else None
            chunks = sessions[name].chunks
            seqs, rows = chunks.after(start)
            if not len(seqs):
                continue
            if left == 0:
                more = last
                break
            take = min(left, len(seqs))
            first = chunks.n - len(seqs)
            taken = rows[:take].tolist()
            ids = self.ids.chunk_ids(self.table, taken)
            offsets = chunks.starts[first : first + take].round(3).tolist()
            out.append(PageSlice(name, ids, taken, offsets))
            left -= take
            last = (name, int(seqs[take - 1]))
            if take < len(seqs):
                more = last
                break
        return out, more

    def pending_transcripts(self) -> list[str]:
        """Every chunk still ``pending`` transcription, in user, session and seq order."""
        return [chunk_id for _, _, chunk_id in self.pending_chunks()]

    def pending_chunks(self) -> list[tuple[str, str, str]]:
        """``(user_id, session_id, chunk_id)`` of every chunk still ``pending``
        transcription, in user, session and seq order (one scan of the status column)."""
        table = self.table[: self.count]
        rows = np.flatnonzero((table["status"] == PENDING) & (table["sess"] != DEAD))
        found = []
        for row in rows.tolist():
            session = self.session_of(row)
            found.append((session.user_id, session.session_id, int(table["seq"][row]), row))
        found.sort()
        ids = self.ids.chunk_ids(self.table, [r for _, _, _, r in found])
        return [(u, s, chunk_id) for (u, s, _, _), chunk_id in zip(found, ids, strict=True)]

    def chunk_ids(self) -> Iterator[str]:
        table = self.table[: self.count]
        yield from self.ids.chunk_ids(self.table, np.flatnonzero(table["sess"] != DEAD).tolist())

    def nbytes(self) -> int:
        """Bytes of the index's arrays (rows, ids, sessions' arrays), slack included."""
        sessions = sum(s.chunks.nbytes() for s in self.sessions if s is not None)
        return int(self.table.nbytes) + self.ids.nbytes() + sessions


def own_chunk_json(meta: dict[str, Any], offset: float) -> dict[str, Any]:
    """*meta*, a fresh dict the caller owns, made the chunk JSON a client sees in place: the
    record less the store's own fields, plus *offset* as its ``offset_ms`` (rounded to the
    microsecond already)."""
    meta.pop("group", None)
    meta["offset_ms"] = offset
    return meta
