"""The in-memory index of stored chunks, Bitcask's keydir: pure data, no I/O, no trio.

Memory holds, per chunk, where its records lie and what routing, listing, ownership and the
transcript queue need (``keydir.ROW``: id, session, seq, owner through the session, the
place of its CHUNK record and audio and of its latest UPDATE, transcript status), and per
session its chunks in seq order (``keydir.Chunks``) plus the text of its transcribed chunks.
A chunk's metadata (its chunk JSON, transcript words) stays in the log and is read from
there when asked for (``Location``; ``reads.py`` reads and caches it).

The committer is the only writer: it plans a batch (``plan_chunks``: seqs, idempotent
retries, conflicts), writes it, then applies it here (``insert_meta``, ``apply_update``,
``apply_tombstone``). Replay (``Loader``) applies the same records at start-up. Readers get
copies (lists, ``SessionSummary``), never the index's own objects.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

import numpy as np

from .keydir import (
    DEAD,
    ROW,
    Entry,
    Ids,
    Location,
    Place,
    Session,
    grown,
    split_id,
    status_code,
)
from .plan import Planned, Stored
from .queries import Lookups, PageSlice, SessionSummary
from .record import FRAME_HEADER_SIZE

if TYPE_CHECKING:
    from ..models import Job

__all__ = [
    "Entry",
    "Index",
    "Location",
    "PageSlice",
    "Place",
    "Planned",
    "Session",
    "SessionSummary",
    "Stored",
]

VACUUM_MIN: Final = 65536  # free rows before the table is packed again


class Index(Lookups):
    """Chunks by id and by ``user -> session -> seq``; the committer's and replay's target
    (what it answers is in ``queries.Lookups``)."""

    def __init__(self, transcript_status: str = "disabled", *, cluster: bool = False) -> None:
        self.table = np.zeros(1024, ROW)
        self.count = 0  # rows used (live or DEAD)
        self.live = 0
        self.ids = Ids()
        self.users: dict[str, dict[str, Session]] = {}
        self.sessions: list[Session | None] = []
        self.segments: list[str] = []
        self._last_segment = ("\0", 0)  # the file of the last record indexed, and its number
        self._segment_numbers: dict[str, int] = {}
        self.more_updates: dict[int, list[tuple[int, int, int]]] = {}  # row -> older UPDATEs
        self.audio_bytes = 0
        self.dead_bytes = 0  # deleted or replaced bytes since the last compaction
        # New chunks start "pending" when a speech engine will transcribe them.
        self.transcript_status = transcript_status
        self.cluster = cluster  # locations are stream sequences, read whole
        self.version = 0  # changes whenever a chunk's metadata or place may have changed
        self._header = 0 if cluster else FRAME_HEADER_SIZE

    def __len__(self) -> int:
        return self.live

    # -- applying records ------------------------------------------------------------------

    def segment_number(self, name: str) -> int:
        if name == self._last_segment[0]:
            return self._last_segment[1]
        number = self._segment_numbers.get(name)
        if number is None:
            number = self._segment_numbers[name] = len(self.segments)
            self.segments.append(name)
        self._last_segment = (name, number)
        return number

    def _session(self, user_id: str, session_id: str) -> Session:
        sessions = self.users.get(user_id)
        if sessions is None:
            sessions = self.users[user_id] = {}
        session = sessions.get(session_id)
        if session is None:
            session = Session(user_id, session_id, len(self.sessions))
            sessions[session_id] = session
            self.sessions.append(session)
        return session

    def insert_meta(self, meta: dict[str, Any], record: Place, audio_length: int) -> int:
        """Index a chunk from its metadata and where its CHUNK record lies; its row."""
        transcript = meta.get("transcript")
        if not isinstance(transcript, dict):
            transcript = {}
        return self.insert(
            meta["chunk_id"],
            meta["user_id"],
            meta["session_id"],
            int(meta["seq"]),
            float(meta["audio"]["duration_ms"]),
            transcript.get("status"),
            transcript.get("text"),
            self.segment_number(record.segment),
            record.offset,
            record.length,
            audio_length,
        )

    def insert(
        self,
        chunk_id: str,
        user_id: str,
        session_id: str,
        seq: int,
        duration_ms: float,
        status: Any,
        text: Any,
        segment: int,
        offset: int,
        meta_length: int,
        audio_length: int,
    ) -> int:
        """Index a chunk from the fields the index keeps (*status*, *text*: those of its
        ``transcript`` map, None without one) and where its CHUNK record lies (*segment* a
        number from ``segment_number``); its row.

        Chunk ids are unique (the committer and a cluster's follower never index one twice);
        a seq stored again (only a damaged log has that) replaces the chunk stored there."""
        session = self._session(user_id, session_id)
        chunks = session.chunks
        if seq <= chunks.last:
            taken = chunks.row_of(seq)
            if taken is not None:
                self._drop(self.ids.chunk_id(self.table, taken), taken)
                session = self._session(user_id, session_id)
                chunks = session.chunks
        if self.count == len(self.table):
            self.table = grown(self.table, self.count + 1)
        row = self.count
        self.count += 1
        split = split_id(chunk_id)
        hi, lo = split if split is not None else (0, 0)
        self.table[row] = (
            lo, hi, seq, offset, 0, session.number, segment, meta_length, audio_length, 0, 0,
            status_code(status),
        )  # fmt: skip
        self.ids.add(chunk_id, row, split)
        chunks.add(seq, row, duration_ms)
        if status == "done" or session.texts:
            self._note_text(session, seq, status, text)
        else:
            session.transcript = None
        self.live += 1
        self.audio_bytes += audio_length
        return row

    def _note_text(self, session: Session, seq: int, status: Any, text: Any) -> None:
        session.transcript = None
        if status == "done" and text:
            session.texts[seq] = str(text)
        else:
            session.texts.pop(seq, None)

    def apply_update(self, patch: dict[str, Any], record: Place) -> bool:
        """Note an UPDATE record of the chunk it names (False: that chunk is gone)."""
        self.version += 1
        row = self.ids.find(self.table, patch["chunk_id"])
        if row is None:
            return False
        item = self.table[row]
        if int(item["ulen"]):
            self.more_updates.setdefault(row, []).append(
                (int(item["useg"]), int(item["uoff"]), int(item["ulen"]))
            )
        self.dead_bytes += record.length  # dead once a compaction folds it
        item["useg"] = self.segment_number(record.segment)
        item["uoff"] = record.offset
        item["ulen"] = max(record.length, 1)  # a cluster reads it whole: 1 marks "there is one"
        fields = patch.get("set") or {}
        if "transcript" in fields:
            transcript = fields["transcript"]
            if not isinstance(transcript, dict):
                transcript = {}
            status = transcript.get("status")
            item["status"] = status_code(status)
            session = self.sessions[int(item["sess"])]
            assert session is not None
            self._note_text(session, int(item["seq"]), status, transcript.get("text"))
        self.table[row] = item
        return True

    def apply_tombstone(self, tombstone: dict[str, Any]) -> list[tuple[str, Entry]]:
        """Remove the chunks a TOMBSTONE names; ``(chunk_id, entry)`` of those that were there."""
        self.version += 1
        removed = []
        for chunk_id in tombstone["chunk_ids"]:
            row = self.ids.find(self.table, chunk_id)
            if row is not None:
                removed.append((chunk_id, self._drop(chunk_id, row)))
        if self.count - self.live >= max(VACUUM_MIN, self.live):
            self.vacuum()
        return removed

    def _drop(self, chunk_id: str, row: int) -> Entry:
        item = self.table[row]
        session = self.sessions[int(item["sess"])]
        assert session is not None
        seq = int(item["seq"])
        session.chunks.remove(seq)
        session.texts.pop(seq, None)
        session.transcript = None
        if session.chunks.n == 0:
            sessions = self.users[session.user_id]
            del sessions[session.session_id]
            if not sessions:
                del self.users[session.user_id]
            self.sessions[session.number] = None
        self.ids.remove(chunk_id, row)
        self.table["sess"][row] = DEAD
        self.more_updates.pop(row, None)
        self.live -= 1
        self.audio_bytes -= int(item["alen"])
        self.dead_bytes += int(item["alen"]) + int(item["mlen"])
        return Entry(session.user_id, session.session_id, seq)

    def vacuum(self) -> None:
        """Pack the live rows together (after many deletes) and renumber what points at them."""
        self.version += 1
        table = self.table[: self.count]
        alive = table["sess"] != DEAD
        renumber = np.full(max(self.count, 1), -1, np.int64)
        renumber[: self.count][alive] = np.arange(int(alive.sum()))
        self.table = grown(table[alive].copy(), max(1024, int(alive.sum())))
        self.count = int(alive.sum())
        self.ids.rebuild(renumber)
        for session in self.sessions:
            if session is not None:
                n = session.chunks.n
                session.chunks.rows[:n] = renumber[session.chunks.rows[:n]]
        self.more_updates = {int(renumber[r]): v for r, v in self.more_updates.items()}
        # Sessions are numbered again too, so the list keeps no gap for a session gone.
        kept = [s for s in self.sessions if s is not None]
        numbers = np.zeros(max(len(self.sessions), 1), np.uint32)
        for new, session in enumerate(kept):
            numbers[session.number] = new
            session.number = new
        self.sessions = list(kept)
        sess = self.table["sess"]
        sess[: self.count] = numbers[sess[: self.count]]

    def moved(self, moves: dict[str, Place], replaced: set[str]) -> None:
        """A compaction copied chunks into a snapshot: point their rows at it (those whose
        record lies in a file it *replaced*; updates written since stay where they are)."""
        self.version += 1
        gone = {self._segment_numbers[n] for n in replaced if n in self._segment_numbers}
        for chunk_id, place in moves.items():
            row = self.ids.find(self.table, chunk_id)
            if row is None or int(self.table["seg"][row]) not in gone:
                continue
            item = self.table[row]
            item["seg"] = self.segment_number(place.segment)
            item["off"] = place.offset
            item["mlen"] = place.length
            older = [u for u in self.more_updates.pop(row, []) if u[0] not in gone]
            if int(item["ulen"]) and int(item["useg"]) in gone:
                item["useg"] = item["uoff"] = item["ulen"] = 0
                older = []  # every update before the newest one that was folded, was too
            if older:
                self.more_updates[row] = older
            self.table[row] = item

    # -- planning a batch ------------------------------------------------------------------

    def collisions(self, job: Job) -> list[str]:
        """Ids of stored chunks at the seqs *job* names: the committer reads their metadata
        (their checksums) before planning."""
        session = self.users.get(job.user_id, {}).get(job.session_id)
        if session is None:
            return []
        rows = [session.chunks.row_of(p.seq) for p in job.parts if p.seq is not None]
        return [self.ids.chunk_id(self.table, r) for r in rows if r is not None]

    def present(self, chunk_ids: list[str]) -> list[str]:
        return [c for c in chunk_ids if self.ids.find(self.table, c) is not None]

    def session_chunk_ids(self, user_id: str, session_id: str) -> list[str]:
        return [chunk_id for _, chunk_id in self.chunks_after(user_id, session_id, None)]

    # -- reads -------------------------------------------------------------------------------
