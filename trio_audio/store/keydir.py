"""The keydir's storage: per chunk a fixed-size row in one numpy array, chunk ids found by a
sorted key array, and each session's chunks as seq-ordered arrays. Pure data, no I/O.

A row (``ROW``, 65 bytes) holds what routing, listing, ownership and the transcript queue
need and where the chunk's records lie; nothing of its metadata but its seq and transcript
status. Memory per chunk, all told: the row, 32 bytes of its session's arrays and 16
of the id index, with the slack of arrays that grow by doubling (see docs/storage-memory.md).

Chunk ids as the service makes them (``models.new_chunk_id``: 28 lowercase hex digits) are
kept as two integers in the row; any other id (tools and tests write their own) is kept as a
string beside them (``Ids.other``).
"""

from __future__ import annotations

import re
from typing import Final, NamedTuple

import attrs
import numpy as np
import numpy.typing as npt

ROW: Final = np.dtype(
    [
        ("lo", "<u8"),  # the id's last 16 hex digits (random), the id index's key
        ("hi", "<u8"),  # its first 12 (time)
        ("seq", "<i8"),  # the chunk's seq in its session
        ("off", "<u8"),  # where its CHUNK record's frame starts (cluster: stream sequence)
        ("uoff", "<u8"),  # where its latest UPDATE record's frame starts (ulen 0: none)
        ("sess", "<u4"),  # its session's number (DEAD: the row is free)
        ("seg", "<u4"),  # the file of its CHUNK record (a number in ``Keydir.segments``)
        ("mlen", "<u4"),  # bytes of its packed metadata (after the frame header)
        ("alen", "<u4"),  # bytes of its audio (right after the metadata's bin header)
        ("useg", "<u4"),  # the file of its latest UPDATE record
        ("ulen", "<u4"),  # bytes of that update's payload
        ("status", "u1"),  # transcript status, a number in STATUSES
    ]
)
DEAD: Final = 0xFFFFFFFF
STATUSES: Final = ("disabled", "pending", "done", "failed", "other")
STATUS_CODES: Final = {name: code for code, name in enumerate(STATUSES)}
PENDING: Final = STATUS_CODES["pending"]
CANONICAL: Final = re.compile(r"[0-9a-f]{28}")
MERGE_MIN: Final = 4096  # ids kept in the dict before they are merged into the sorted keys

U64 = npt.NDArray[np.uint64]
I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]


def status_code(status: object) -> int:
    return STATUS_CODES.get(status, 4) if isinstance(status, str) else 4


def split_id(chunk_id: str) -> tuple[int, int] | None:
    """``(hi, lo)`` of a canonical chunk id; None for any other."""
    if len(chunk_id) != 28 or not CANONICAL.fullmatch(chunk_id):
        return None
    value = int(chunk_id, 16)
    return value >> 64, value & 0xFFFFFFFFFFFFFFFF


class Ids:
    """Chunk id -> row: a sorted array of the ids' random halves (``keys``, with ``rows``)
    plus a dict of the newest, merged into the arrays once it holds an eighth as many."""

    def __init__(self) -> None:
        self.keys: U64 = np.zeros(0, np.uint64)
        self.rows: I64 = np.zeros(0, np.int64)
        self.recent: dict[int, int] = {}  # lo -> row, not merged yet
        self.other: dict[str, int] = {}  # a non-canonical id -> row
        self.other_ids: dict[int, str] = {}  # ... and back

    def find(self, table: np.ndarray, chunk_id: str) -> int | None:
        split = split_id(chunk_id)
        if split is None:
            return self.other.get(chunk_id)
        hi, lo = split
        row = self.recent.get(lo)
        if row is not None and int(table["hi"][row]) == hi and table["sess"][row] != DEAD:
            return row
        i = int(np.searchsorted(self.keys, np.uint64(lo)))
        while i < len(self.keys) and int(self.keys[i]) == lo:
            row = int(self.rows[i])
            if int(table["hi"][row]) == hi and table["sess"][row] != DEAD:
                return row
            i += 1
        return None

    def add(self, chunk_id: str, row: int, split: tuple[int, int] | None) -> None:
        if split is None:
            self.other[chunk_id] = row
            self.other_ids[row] = chunk_id
            return
        lo = split[1]
        if lo in self.recent:  # two ids with one random half: astronomically rare
            self.merge()
        self.recent[lo] = row
        if len(self.recent) >= max(MERGE_MIN, len(self.keys) // 8):
            self.merge()

    def remove(self, chunk_id: str, row: int) -> None:
        """Forget *chunk_id* (the sorted arrays keep it until ``rebuild``: its row is DEAD)."""
        if chunk_id in self.other:
            del self.other[chunk_id]
            del self.other_ids[row]
            return
        split = split_id(chunk_id)
        if split is not None and self.recent.get(split[1]) == row:
            del self.recent[split[1]]

    def merge(self) -> None:
        if not self.recent:
            return
        new_keys = np.fromiter(self.recent.keys(), np.uint64, len(self.recent))
        new_rows = np.fromiter(self.recent.values(), np.int64, len(self.recent))
        order = np.argsort(new_keys, kind="stable")
        new_keys, new_rows = new_keys[order], new_rows[order]
        at = np.searchsorted(self.keys, new_keys)
        self.keys = np.insert(self.keys, at, new_keys)
        self.rows = np.insert(self.rows, at, new_rows)
        self.recent = {}

    def rebuild(self, renumber: I64) -> None:
        """After rows moved (``renumber[old] = new``, -1 for dead rows): index them again."""
        self.merge()
        keep = renumber[self.rows] >= 0 if len(self.rows) else np.zeros(0, bool)
        self.keys = self.keys[keep]
        self.rows = renumber[self.rows[keep]]
        self.other = {cid: int(renumber[row]) for cid, row in self.other.items()}
        self.other_ids = {row: cid for cid, row in self.other.items()}

    def chunk_id(self, table: np.ndarray, row: int) -> str:
        """The id of the chunk in *row* (for many rows, ``chunk_ids``: one gather)."""
        other = self.other_ids.get(row)
        return other or _format_id(int(table["hi"][row]), int(table["lo"][row]))

    def chunk_ids(self, table: np.ndarray, rows: list[int]) -> list[str]:
        """``chunk_id`` of each of *rows* (one gather of the table)."""
        picked = table[rows]
        other = self.other_ids
        return [
            other.get(row) or _format_id(hi, lo)
            for row, hi, lo in zip(rows, picked["hi"].tolist(), picked["lo"].tolist(), strict=True)
        ]

    def nbytes(self) -> int:
        return int(self.keys.nbytes + self.rows.nbytes)


def _format_id(hi: int, lo: int) -> str:
    """A generated chunk id's text: its two halves in hex."""
    return f"{hi:012x}{lo:016x}"


def grown(array: np.ndarray, need: int) -> np.ndarray:
    """*array* with room for at least *need* items (capacity doubles)."""
    if need <= len(array):
        return array
    bigger = np.zeros(max(need, 2 * len(array), 8), array.dtype)
    bigger[: len(array)] = array
    return bigger


class Chunks:
    """A session's chunks in seq order: seqs, rows, durations and where each starts on the
    session's timeline (``starts[i]`` is the summed duration of the chunks before it)."""

    __slots__ = ("durs", "end", "last", "n", "rows", "seqs", "starts")

    def __init__(self) -> None:
        self.n = 0
        self.last = -(1 << 63)  # the highest seq (kept as an int: appending is the fast path)
        self.end = 0.0  # where the last chunk ends: the session's duration
        self.seqs: I64 = np.zeros(4, np.int64)
        self.rows: I64 = np.zeros(4, np.int64)
        self.durs: F64 = np.zeros(4, np.float64)
        self.starts: F64 = np.zeros(4, np.float64)

    def position(self, seq: int) -> int:
        """Where *seq* is (or would go): the number of chunks before it."""
        n = self.n
        if n and seq >= self.last:  # after the last, or the last (a chunk just stored): no search
            return n if seq > self.last else n - 1
        return int(np.searchsorted(self.seqs[:n], seq))

    def row_of(self, seq: int) -> int | None:
        i = self.position(seq)
        return int(self.rows[i]) if i < self.n and int(self.seqs[i]) == seq else None

    def add(self, seq: int, row: int, duration_ms: float) -> None:
        n = self.n
        if n == len(self.seqs):
            size = max(8, 2 * n)
            self.seqs, self.rows = grown(self.seqs, size), grown(self.rows, size)
            self.durs, self.starts = grown(self.durs, size), grown(self.starts, size)
        if seq > self.last:  # in order: the common case
            self.seqs[n], self.rows[n], self.durs[n], self.starts[n] = (
                seq,
                row,
                duration_ms,
                self.end,
            )
            self.n, self.last = n + 1, seq
            self.end += duration_ms
            return
        i = self.position(seq)
        start = float(self.starts[i - 1] + self.durs[i - 1]) if i else 0.0
        if i < n:  # out of order: the chunks after it move along
            for column in (self.seqs, self.rows, self.durs, self.starts):
                column[i + 1 : n + 1] = column[i:n]
            self.starts[i + 1 : n + 1] += duration_ms
        self.seqs[i], self.rows[i], self.durs[i], self.starts[i] = seq, row, duration_ms, start
        self.n = n + 1
        self.end += duration_ms

    def remove(self, seq: int) -> int | None:
        """Take *seq* out; its row (None: it was not there)."""
        i = self.position(seq)
        n = self.n
        if i == n or int(self.seqs[i]) != seq:
            return None
        row, duration = int(self.rows[i]), float(self.durs[i])
        for column in (self.seqs, self.rows, self.durs, self.starts):
            column[i : n - 1] = column[i + 1 : n]
        self.starts[i : n - 1] -= duration
        self.n = n - 1
        self.end -= duration
        self.last = int(self.seqs[n - 2]) if n > 1 else -(1 << 63)
        return row

    def offset_ms(self, seq: int) -> float:
        i = self.position(seq)
        return float(self.starts[i - 1] + self.durs[i - 1]) if i else 0.0

    @property
    def duration_ms(self) -> float:
        return self.end

    def after(self, seq: int | None) -> tuple[I64, I64]:
        """Seqs and rows of the chunks after *seq* (all when None): views, copy to keep."""
        start = 0 if seq is None else int(np.searchsorted(self.seqs[: self.n], seq, "right"))
        return self.seqs[start : self.n], self.rows[start : self.n]

    def nbytes(self) -> int:
        return int(self.seqs.nbytes * 4)


class Place(NamedTuple):
    """Where one record lies: its file (or, on a cluster, ``""``) and its frame's offset (a
    stream sequence on a cluster), and the length of its metadata (0: read the whole).
    A tuple, as ``Location``: a page makes a thousand of each, at a third of an attrs
    class's cost."""

    segment: str
    offset: int
    length: int


class Location(NamedTuple):
    """Where a chunk's metadata lies: its CHUNK record, then the UPDATE records to apply on
    top in order; and where its audio lies (``audio_offset`` is absolute in that file)."""

    record: Place
    updates: tuple[Place, ...]
    audio_offset: int
    audio_length: int


@attrs.frozen
class Entry:
    """What a tombstone took away: whose chunk it was."""

    user_id: str
    session_id: str
    seq: int


@attrs.define(eq=False)
class Session:
    """One session: its chunks in seq order, the text of the transcribed ones by seq, and
    its transcript as last computed (cached until a chunk changes)."""

    user_id: str
    session_id: str
    number: int
    chunks: Chunks = attrs.field(factory=Chunks)
    texts: dict[int, str] = attrs.field(factory=dict)
    transcript: dict[str, str] | None = None

    @property
    def next_seq(self) -> int:
        return self.chunks.last + 1 if self.chunks.n else 0
