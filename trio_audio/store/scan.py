"""Walking the frames of one segment or snapshot with the replay rules (``replay`` decides
what a bad frame means), and the fast decoding of a CHUNK record for the index.

Every frame's length bound, salted CRC, seq and type are checked here, and every payload is
parsed through to its end. What changes with *routes* (the store's replay, compaction's fold
and ``check``, which only build the index) is what a CHUNK record's metadata is decoded
into: not the whole map (its features, spectrum, transcript words: most of the CPU of a
replay) but the fields the index needs (``ROUTE``), with msgspec, which still parses the
whole map to skip the rest. The metadata's end is where the audio bin's header starts: first
tried at the place the previous record's audio length gives (proven when msgspec decodes
exactly one map before it: a msgpack object ends where its own bytes say), else found by
msgpack's ``skip`` (which builds no objects), and the audio bin is checked as ever. A
payload that does not fit that shape (a field missing or of another type, a payload longer
than ``META_PREFIX_BYTES``) is decoded whole as before, so every verdict and every message
stays replay's. Not checked on this path: that strings outside the routing fields are UTF-8
(msgspec skips them undecoded); reading the chunk decodes them.
"""

from __future__ import annotations

import mmap
from collections.abc import Callable
from typing import Any, Final

import attrs
import crc32c
import msgpack
import msgspec

from ..errors import CorruptLog
from .record import (
    CHECKPOINT_MARK,
    CHECKPOINT_PAYLOAD_SIZE,
    DATA_TYPES,
    FRAME_HEADER,
    FRAME_HEADER_SIZE,
    FRAME_PREFIX,
    MAX_RECORD_BYTES,
    META_PREFIX_BYTES,
    SEGMENT_HEADER_SIZE,
    BlobRef,
    Record,
    RecordType,
    decode_payload,
    salt_crc,
)

_BIN_WIDTHS: Final = {0xC4: 1, 0xC5: 2, 0xC6: 4}  # msgpack bin marker -> its length's bytes
_BIN_MARKERS: Final = {width: marker for marker, width in _BIN_WIDTHS.items()}


class _Audio(msgspec.Struct):
    duration_ms: float


class _Transcript(msgspec.Struct):
    status: Any = None
    text: Any = None


class Route(msgspec.Struct):
    """What the index takes from a CHUNK record's metadata (``Index.insert_meta``,
    ``Loader``); every other field is skipped."""

    chunk_id: str
    user_id: str
    session_id: str
    seq: int
    audio: _Audio
    transcript: _Transcript | None = None
    group: Any = None


# Where a routes replay hands a CHUNK record that decoded fast: its routing fields, its file,
# the offset of its frame, the length of its metadata and of its audio.
RouteSink = Callable[[Route, str, int, int, int], None]
ROUTE: Final = ("chunk_id", "user_id", "session_id", "seq", "audio", "transcript", "group")


class RouteDecoder:
    """Decodes CHUNK payloads into their routing fields (see the module docstring); one per
    file scanned (it keeps a msgpack unpacker and the last audio length between records)."""

    def __init__(self) -> None:
        self._decoder = msgspec.msgpack.Decoder(Route)
        self._unpacker = self._new_unpacker()
        self._audio_length = 0  # the last record's: most records of a stream have as much

    @staticmethod
    def _new_unpacker() -> msgpack.Unpacker:
        return msgpack.Unpacker(max_buffer_size=META_PREFIX_BYTES)

    def decode(
        self, mm: mmap.mmap, view: memoryview, start: int, end: int
    ) -> tuple[Route, int, int, int] | None:
        """The routing fields of a CHUNK payload from *start* to *end*, the length of its
        metadata and where its audio lies (offset, length); None when it is not of the shape
        this decodes (the caller decodes it whole)."""
        if end - start > META_PREFIX_BYTES:
            return None
        # Most records of a stream carry as much audio as the one before: if the bytes before
        # the frame's end hold that bin's header and what precedes it decodes as exactly one
        # map, that is the split (a msgpack object ends where its own bytes say, so no other
        # split could parse too).
        n = self._audio_length
        width = 1 if n < 1 << 8 else 2 if n < 1 << 16 else 4
        at = end - n - 1 - width
        if (
            at > start
            and mm[at] == _BIN_MARKERS[width]
            and int.from_bytes(mm[at + 1 : at + 1 + width], "big") == n
        ):
            try:
                return self._decoder.decode(view[start:at]), at - start, at + 1 + width, n
            except (msgspec.DecodeError, msgspec.ValidationError):
                pass  # not that split after all, or not of this shape: found as below
        unpacker = self._unpacker
        base = unpacker.tell()
        try:
            unpacker.feed(view[start:end])
            unpacker.skip()
            at = start + unpacker.tell() - base
            unpacker.skip()
            used = unpacker.tell() - base
        except (ValueError, msgpack.UnpackException):  # not two whole objects: decoded whole
            self._unpacker = self._new_unpacker()
            return None
        if used != end - start:  # more bytes after the audio: decoded whole (and refused)
            self._unpacker = self._new_unpacker()
            return None
        found = _BIN_WIDTHS.get(mm[at]) if at < end else None
        if found is None:
            return None
        n = int.from_bytes(mm[at + 1 : at + 1 + found], "big")
        offset = at + 1 + found
        if offset + n != end:
            return None
        try:
            route = self._decoder.decode(view[start:at])
        except (msgspec.DecodeError, msgspec.ValidationError):
            return None
        self._audio_length = n
        return route, at - start, offset, n


def route_meta(route: Route) -> dict[str, Any]:
    """The routing fields as the metadata map they came from (what the index reads)."""
    meta: dict[str, Any] = {
        "chunk_id": route.chunk_id,
        "user_id": route.user_id,
        "session_id": route.session_id,
        "seq": route.seq,
        "audio": {"duration_ms": route.audio.duration_ms},
    }
    transcript = route.transcript
    if transcript is not None:
        meta["transcript"] = {"status": transcript.status, "text": transcript.text}
    if route.group is not None:
        meta["group"] = route.group
    return meta


@attrs.define
class Scan:
    """How far one file's frames are good, and why the rest is not."""

    next_seq: int
    records: int = 0
    good_end: int = SEGMENT_HEADER_SIZE
    bad_offset: int | None = None
    bad_reason: str | None = None
    durable: int = 0  # the highest seq a checkpoint in this file says was fsync'd
    checkpoints: int = 0
    end_seq: int | None = None  # a snapshot: the seq its log goes on from
    ended: bool = False  # a snapshot: its end marker was read


def scan_file(
    fd: int,
    size: int,
    salt: int,
    name: str,
    path: str,
    scan: Scan,
    on_record: Callable[[Record], None],
    *,
    routes: bool = False,
    on_route: RouteSink | None = None,
    start_at: int = SEGMENT_HEADER_SIZE,
) -> None:
    """Walk the frames of one segment or snapshot from *start_at*, calling *on_record* for
    each good record.

    Stops at the first frame that is partial or fails its bound or CRC (recorded in *scan*:
    the caller decides torn or corrupt); raises ``CorruptLog`` for a frame whose CRC holds
    but whose content is wrong. With *routes*, a CHUNK record's ``meta`` holds only the
    fields the index needs (see the module docstring); with *on_route* too, such a record is
    handed to it rather than to *on_record*, as no more than its fields and place.
    """
    seed = salt_crc(salt)
    mm = mmap.mmap(fd, size, prot=mmap.PROT_READ)
    view = memoryview(mm)
    snapshot = scan.end_seq is not None
    fast = RouteDecoder() if routes else None
    try:
        mm.madvise(mmap.MADV_SEQUENTIAL)
        pos = start_at
        while pos < size:
            if size - pos < FRAME_HEADER_SIZE:
                scan.bad_offset, scan.bad_reason = pos, "partial frame header"
                return
            length, crc, type_, seq = FRAME_HEADER.unpack_from(mm, pos)
            if length > MAX_RECORD_BYTES:
                scan.bad_offset = pos
                scan.bad_reason = f"frame length {length} exceeds {MAX_RECORD_BYTES}"
                return
            start = pos + FRAME_HEADER_SIZE
            end = start + length
            if end > size:
                scan.bad_offset = pos
                scan.bad_reason = f"frame of {length} bytes runs past end of file"
                return
            if crc32c.crc32c(view[pos + FRAME_PREFIX.size : end], value=seed) != crc:
                scan.bad_offset, scan.bad_reason = pos, "crc mismatch"
                return
            if scan.ended:
                raise CorruptLog(path, pos, "a record after the snapshot's end marker")
            if type_ == RecordType.CHECKPOINT:
                _check_checkpoint(mm, start, end, seq, scan, path, pos)
                pos = scan.good_end = end
                continue
            if snapshot:
                assert scan.end_seq is not None
                if not scan.next_seq <= seq < scan.end_seq:
                    msg = f"snapshot record seq {seq} not in {scan.next_seq}..{scan.end_seq - 1}"
                    raise CorruptLog(path, pos, msg)
                if type_ != RecordType.CHUNK:
                    raise CorruptLog(path, pos, f"record type {type_} in a snapshot")
            elif seq != scan.next_seq:
                msg = f"record seq {seq}, expected {scan.next_seq}"
                raise CorruptLog(path, pos, msg)
            if type_ not in DATA_TYPES:
                raise CorruptLog(path, pos, f"unknown record type {type_}")
            rtype = DATA_TYPES[type_]
            decoded: tuple[dict[str, Any], BlobRef | None] | str | None = None
            if fast is not None and rtype == RecordType.CHUNK:
                got = fast.decode(mm, view, start, end)
                if got is not None:
                    route, meta_length, audio_at, audio_length = got
                    if on_route is not None:
                        on_route(route, name, pos, meta_length, audio_length)
                        scan.records += 1
                        scan.next_seq = seq + 1
                        pos = scan.good_end = end
                        continue
                    decoded = route_meta(route), BlobRef(name, audio_at, audio_length)
            if decoded is None:
                decoded = decode_payload(mm, view, start, end, rtype, name)
            if isinstance(decoded, str):
                raise CorruptLog(path, pos, decoded)
            meta, blob = decoded
            on_record(Record(rtype, seq, meta, blob, name, pos, end))
            scan.records += 1
            scan.next_seq = seq + 1
            pos = end
            scan.good_end = end
    finally:
        view.release()
        mm.close()


def _check_checkpoint(
    mm: mmap.mmap, start: int, end: int, seq: int, scan: Scan, path: str, pos: int
) -> None:
    payload = mm[start:end]
    if payload != CHECKPOINT_MARK + seq.to_bytes(8, "big"):
        raise CorruptLog(path, pos, "checkpoint payload does not match its seq")
    if scan.end_seq is not None:  # a snapshot's end marker
        if seq != scan.end_seq - 1:
            msg = f"snapshot end marker says {seq}, the log starts at {scan.end_seq}"
            raise CorruptLog(path, pos, msg)
        scan.ended = True
    elif seq >= scan.next_seq:
        msg = f"checkpoint says seq {seq} was fsync'd, but the last record is {scan.next_seq - 1}"
        raise CorruptLog(path, pos, msg)
    scan.durable = max(scan.durable, seq)
    scan.checkpoints += 1


def find_checkpoint(fd: int, size: int, salt: int, after: int, seq: int) -> tuple[int, int] | None:
    """(offset, D) of a valid checkpoint frame past *after* saying seqs up to D >= *seq* were
    fsync'd; None if there is none.

    Candidates are found by their payload's marker and proven by the salted CRC, so audio
    that merely looks like a checkpoint never counts.
    """
    seed = salt_crc(salt)
    mm = mmap.mmap(fd, size, prot=mmap.PROT_READ)
    try:
        hit = mm.find(CHECKPOINT_MARK, after + FRAME_HEADER_SIZE)
        while hit >= 0:
            pos = hit - FRAME_HEADER_SIZE
            end = hit + CHECKPOINT_PAYLOAD_SIZE
            if end <= size:
                length, crc, type_, durable = FRAME_HEADER.unpack_from(mm, pos)
                if (
                    length == CHECKPOINT_PAYLOAD_SIZE
                    and type_ == RecordType.CHECKPOINT
                    and durable >= seq
                    and mm[hit + len(CHECKPOINT_MARK) : end] == durable.to_bytes(8, "big")
                    and crc32c.crc32c(mm[pos + FRAME_PREFIX.size : end], value=seed) == crc
                ):
                    return pos, durable
            hit = mm.find(CHECKPOINT_MARK, hit + 1)
        return None
    finally:
        mm.close()
