"""The append-only record log: segment files of CRC-checked frames, replayed at startup.

Synchronous, file-level code with no trio in it: the store's writer task calls it through
``trio.to_thread.run_sync`` and replay runs in a thread before the service reports ready.

On-disk format (all integers little-endian)
-------------------------------------------
``<data_dir>/LOCK`` is the flock'd lock file (it holds the owner's pid). ``<data_dir>/log/``
holds the segments, named ``%016d.seg`` after the seq of their first record, so sorting by
name is log order. Other names there (``*.torn`` files, for one) are ignored.

Segment header, 32 bytes::

    0   8s  magic            b"TRAUDLOG"
    8   u16 format version   1
    10  u16 flags            0 (a reader refuses unknown flags)
    12  u32 salt             random per segment (``secrets``)
    16  u64 base_seq         seq of the first record of this segment (also its file name)
    24  u32 header crc       crc32c of bytes 0..24
    28  4x  padding          zero

Then frames, back to back until end of file, each a 17-byte header and a payload::

    0   u32 length           payload bytes, at most MAX_RECORD_BYTES
    4   u32 crc              crc32c(salt as u32 LE ‖ type ‖ seq ‖ payload)
    8   u8  type             RecordType: 1 CHUNK, 2 UPDATE, 3 TOMBSTONE
    9   u64 seq              global record number: 1, 2, 3 ... across all segments
    17  payload              CHUNK: packb(meta) ‖ packb(audio) (a msgpack bin);
                             UPDATE, TOMBSTONE: packb(meta). meta is a map of plain types.

Bytes 8.. of a frame header are exactly the CRC's input after the salt, so a frame is
checked with one crc32c call over ``frame[8:]`` seeded with the salt's CRC. The audio's bin
header is computed at append time, so the absolute file offset of the audio bytes is known
(``BlobRef``) and memory keeps that instead of the audio. Because the salt is random per
segment, audio that happens to contain a well-formed frame (even one cut from another
segment of this log) never verifies as a record of this segment.

Replay
------
Every segment is read in order (``mmap``, no copy of the audio) and every record is checked:
header fields, length bound and that the frame lies within the file, CRC, seq continuity
(the first segment starts at seq 1, each next one at the previous last seq + 1, each record
at the previous + 1), known type, and that the payload unpacks to a map (plus, for a CHUNK,
one bin that ends exactly at the frame's end).

The process only ever appends, and before a new segment is created the previous one is
``fdatasync``'d, so a crash can only damage the end of the newest segment. Hence the rule:

* In the newest segment, everything from the first frame that is partial or fails its
  length bound or CRC up to end of file is a *torn tail*: the cut bytes are copied to
  ``<segment>.torn`` (or ``<segment>.<n>.torn`` if that exists) and fsync'd, the segment is
  truncated to its last good record and fsync'd, the directory is fsync'd, a warning is
  logged and the tail is reported. A newest segment shorter than its header, or all zero
  bytes (created, but its data never reached the disk), is torn as a whole: saved, removed.
* Anything else is corruption and replay raises ``CorruptLog`` naming the file and frame
  offset: any bad frame or header in an older segment, a bad header in a newest segment of
  full size, and a frame whose CRC verifies but whose content is wrong (seq out of order,
  unknown type, payload that does not unpack) anywhere, since no torn write produces that.

Replay never hands out a record that failed a check. One consequence of the simple tail
rule: a bit flipped by the disk in the middle of the newest segment cuts the records after
it too; they are not lost but kept in the ``.torn`` file, and the warning says so.

Writing
-------
``LogWriter.append`` frames a record into memory and returns its seq and ``BlobRef``;
``flush`` writes every buffered frame with ``pwritev`` (looping on short writes) and, if the
write fails, truncates the file back to the last good record and re-raises, so a failed
batch leaves no partial record and its seqs are given out again. ``sync`` makes the written
records durable (``fdatasync``, plus a directory fsync after a segment was created).
"""

from __future__ import annotations

import enum
import errno
import fcntl
import logging
import mmap
import os
import re
import secrets
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import attrs
import crc32c
import msgpack

from ..errors import CorruptLog, DataDirLocked, StoreError

logger = logging.getLogger("trio_audio.store")

MAGIC: Final = b"TRAUDLOG"
FORMAT_VERSION: Final = 1
SEGMENT_HEADER: Final = struct.Struct("<8sHHIQI4x")
SEGMENT_HEADER_SIZE: Final = SEGMENT_HEADER.size  # 32
_HEADER_CRC_END: Final = 24  # the header CRC covers bytes 0..24
FRAME_HEADER: Final = struct.Struct("<IIBQ")
FRAME_HEADER_SIZE: Final = FRAME_HEADER.size  # 17
_FRAME_PREFIX: Final = struct.Struct("<II")  # length, crc
_FRAME_CHECKED: Final = struct.Struct("<BQ")  # type, seq: the start of the CRC'd bytes
_SALT: Final = struct.Struct("<I")

MAX_RECORD_BYTES: Final = 256 * 1024 * 1024
DEFAULT_SEGMENT_MAX_BYTES: Final = 256 * 1024 * 1024
FIRST_SEQ: Final = 1

LOG_DIR: Final = "log"
LOCK_FILE: Final = "LOCK"
SEGMENT_SUFFIX: Final = ".seg"
TORN_SUFFIX: Final = ".torn"
_SEGMENT_NAME: Final = re.compile(r"^(\d{16})\.seg$")

INLINE_AUDIO_MAX: Final = 4096  # audio up to this size is copied into its frame's buffer
META_PREFIX_BYTES: Final = 64 * 1024  # the first bytes of a CHUNK payload fed to find meta
COPY_CHUNK_BYTES: Final = 1024 * 1024
_IOV_MAX: Final = max(16, min(os.sysconf("SC_IOV_MAX"), 1024))


class RecordType(enum.IntEnum):
    CHUNK = 1
    UPDATE = 2
    TOMBSTONE = 3


@attrs.frozen
class BlobRef:
    """Where a chunk's audio lies: segment file name, absolute byte offset and length."""

    segment: str
    offset: int
    length: int


@attrs.frozen
class Record:
    """One replayed record; ``offset`` is where its frame starts in ``segment``."""

    type: RecordType
    seq: int
    meta: dict[str, Any]
    blob: BlobRef | None
    segment: str
    offset: int


@attrs.frozen
class ReplayReport:
    """What replay found.

    ``records`` and ``segments`` count what was kept, ``bytes`` is the size of the kept
    segments (headers included), ``last_seq`` the seq of the last good record (0 for an
    empty log: the writer goes on at ``last_seq + 1``). ``torn_bytes`` were cut off the
    newest segment and saved in ``torn_file`` (its path; None when nothing was cut or the
    cut was empty), ``torn_reason`` says what was wrong with the first cut frame.
    """

    records: int
    segments: int
    bytes: int
    torn_bytes: int
    torn_file: str | None
    last_seq: int
    torn_reason: str | None = None


def segment_name(base_seq: int) -> str:
    return f"{base_seq:016d}{SEGMENT_SUFFIX}"


def log_dir(data_dir: Path) -> Path:
    return data_dir / LOG_DIR


def list_segments(data_dir: Path) -> list[str]:
    """Segment file names in log order."""
    directory = log_dir(data_dir)
    if not directory.is_dir():
        return []
    return sorted(e.name for e in os.scandir(directory) if _SEGMENT_NAME.match(e.name))


# -- lock ------------------------------------------------------------------------------------


def lock_data_dir(data_dir: Path) -> int:
    """Create the data dir if needed and take its lock; return the fd (close it to unlock)."""
    _make_dirs(data_dir)
    _make_dirs(log_dir(data_dir))
    fd = os.open(data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        owner = _read_pid(fd)
        os.close(fd)
        msg = f"data dir {data_dir} is in use by another trio-audio process (pid {owner})"
        raise DataDirLocked(msg) from None
    except BaseException:
        os.close(fd)
        raise
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _make_dirs(path: Path) -> bool:
    if path.is_dir():
        return False
    path.mkdir(parents=True, exist_ok=True)
    _fsync_dir(path.parent)
    return True


def _read_pid(fd: int) -> str:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return "unknown"
    return text if text.isdigit() else "unknown"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- framing ---------------------------------------------------------------------------------


def pack_segment_header(salt: int, base_seq: int, flags: int = 0) -> bytes:
    head = SEGMENT_HEADER.pack(MAGIC, FORMAT_VERSION, flags, salt, base_seq, 0)
    crc = crc32c.crc32c(head[:_HEADER_CRC_END])
    return SEGMENT_HEADER.pack(MAGIC, FORMAT_VERSION, flags, salt, base_seq, crc)


def parse_segment_header(data: bytes) -> tuple[int, int] | str:
    """(salt, base_seq) of a segment header, or why it is not a valid one."""
    if len(data) < SEGMENT_HEADER_SIZE:
        return f"header is {len(data)} bytes, needs {SEGMENT_HEADER_SIZE}"
    magic, version, flags, salt, base_seq, crc = SEGMENT_HEADER.unpack_from(data)
    if magic != MAGIC:
        return f"bad magic {magic!r}"
    if crc != crc32c.crc32c(data[:_HEADER_CRC_END]):
        return "header crc mismatch"
    if version != FORMAT_VERSION:
        return f"unsupported format version {version}"
    if flags != 0:
        return f"unknown header flags {flags:#06x}"
    if data[_HEADER_CRC_END + 4 : SEGMENT_HEADER_SIZE] != bytes(4):
        return "header padding is not zero"
    if base_seq < FIRST_SEQ:
        return f"base seq {base_seq} is below {FIRST_SEQ}"
    return salt, base_seq


def _bin_header(n: int) -> bytes:
    """The msgpack bin header for *n* bytes, as ``msgpack.packb(bytes)`` writes it."""
    if n < 1 << 8:
        return bytes((0xC4, n))
    if n < 1 << 16:
        return b"\xc5" + n.to_bytes(2, "big")
    return b"\xc6" + n.to_bytes(4, "big")


def _salt_crc(salt: int) -> int:
    value: int = crc32c.crc32c(_SALT.pack(salt))
    return value


def pack_meta(meta: dict[str, Any]) -> bytes:
    """Meta as stored; refuses what replay could not read back."""
    if not isinstance(meta, dict) or not all(isinstance(k, str) for k in meta):
        msg = "record meta must be a dict with str keys"
        raise TypeError(msg)
    packed: bytes = msgpack.packb(meta)
    return packed


def build_frame(
    salt: int, type: RecordType, seq: int, meta: dict[str, Any], audio: bytes | None = None
) -> list[bytes]:
    """One record's frame as buffers to write in sequence (the audio kept as its own buffer
    when it is large). Used by the writer; public so that tests and tools frame records the
    same way."""
    packed = pack_meta(meta)
    checked = _FRAME_CHECKED.pack(type, seq)
    if type == RecordType.CHUNK:
        if audio is None:
            msg = "a CHUNK record needs its audio (b'' for none)"
            raise ValueError(msg)
        body = checked + packed + _bin_header(len(audio))
    else:
        if audio is not None:
            msg = f"a {type.name} record carries no audio"
            raise ValueError(msg)
        body = checked + packed
        audio = b""
    length = len(body) - _FRAME_CHECKED.size + len(audio)
    if length > MAX_RECORD_BYTES:
        msg = f"record payload of {length} bytes exceeds the limit of {MAX_RECORD_BYTES}"
        raise ValueError(msg)
    crc = crc32c.crc32c(body, value=_salt_crc(salt))
    if audio:
        crc = crc32c.crc32c(audio, value=crc)
    prefix = _FRAME_PREFIX.pack(length, crc)
    if len(audio) <= INLINE_AUDIO_MAX:
        return [prefix + body + audio]
    return [prefix + body, audio]


# -- replay ----------------------------------------------------------------------------------


@attrs.define
class _Scan:
    """How far one segment's frames are good, and why the rest is not."""

    next_seq: int
    records: int = 0
    good_end: int = SEGMENT_HEADER_SIZE
    bad_offset: int | None = None
    bad_reason: str | None = None


def replay(data_dir: Path, on_record: Callable[[Record], None]) -> ReplayReport:
    """Check every record of the log in order and hand each good one to *on_record*.

    Cuts a torn tail off the newest segment (see the module docstring) and raises
    ``CorruptLog`` for damage anywhere else.
    """
    directory = log_dir(data_dir)
    names = list_segments(data_dir)
    expected = FIRST_SEQ
    records = segments = total = 0
    torn_bytes = 0
    torn_file: str | None = None
    torn_reason: str | None = None
    for i, name in enumerate(names):
        newest = i == len(names) - 1
        path = directory / name
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            size = os.fstat(fd).st_size
            header = os.pread(fd, SEGMENT_HEADER_SIZE, 0)
            parsed = parse_segment_header(header)
            if isinstance(parsed, str):
                if newest and (size < SEGMENT_HEADER_SIZE or _all_zero(fd, size)):
                    torn = _save_torn(directory, name, fd, 0, size)
                    os.close(fd)
                    fd = -1
                    os.unlink(path)
                    _fsync_dir(directory)
                    torn_bytes, torn_reason = size, f"segment header: {parsed}"
                    torn_file = None if torn is None else str(torn)
                    _warn_torn(path, 0, size, torn_reason, torn_file)
                    break
                raise CorruptLog(str(path), 0, parsed)
            salt, base_seq = parsed
            name_seq = int(name[: -len(SEGMENT_SUFFIX)])
            if name_seq != base_seq:
                msg = f"file name says base seq {name_seq}, header says {base_seq}"
                raise CorruptLog(str(path), 0, msg)
            if base_seq != expected:
                msg = f"segment starts at seq {base_seq}, expected {expected}"
                raise CorruptLog(str(path), 0, msg)
            scan = _Scan(next_seq=base_seq)
            if size > SEGMENT_HEADER_SIZE:
                _scan_segment(fd, size, salt, name, str(path), scan, on_record)
            if scan.bad_offset is not None:
                assert scan.bad_reason is not None
                if not newest:
                    raise CorruptLog(str(path), scan.bad_offset, scan.bad_reason)
                later = _next_valid_frame(fd, size, salt, scan.bad_offset, scan.next_seq + 1)
                if later is not None:  # a good record follows: damage, not a torn write
                    msg = f"{scan.bad_reason}, and a valid record follows at offset {later}"
                    raise CorruptLog(str(path), scan.bad_offset, msg)
                cut = size - scan.good_end
                torn = _save_torn(directory, name, fd, scan.good_end, size)
                _truncate(path, scan.good_end)
                _fsync_dir(directory)
                size = scan.good_end
                torn_bytes, torn_reason = cut, scan.bad_reason
                torn_file = None if torn is None else str(torn)
                _warn_torn(path, scan.bad_offset, cut, torn_reason, torn_file)
        finally:
            if fd >= 0:
                os.close(fd)
        records += scan.records
        segments += 1
        total += size
        expected = scan.next_seq
    return ReplayReport(
        records=records,
        segments=segments,
        bytes=total,
        torn_bytes=torn_bytes,
        torn_file=torn_file,
        last_seq=expected - 1,
        torn_reason=torn_reason,
    )


def _scan_segment(
    fd: int,
    size: int,
    salt: int,
    name: str,
    path: str,
    scan: _Scan,
    on_record: Callable[[Record], None],
) -> None:
    """Walk the frames of one segment, calling *on_record* for each good one.

    Stops at the first frame that is partial or fails its bound or CRC (recorded in *scan*:
    the caller decides torn or corrupt); raises ``CorruptLog`` for a frame whose CRC holds
    but whose content is wrong.
    """
    seed = _salt_crc(salt)
    mm = mmap.mmap(fd, size, prot=mmap.PROT_READ)
    view = memoryview(mm)
    try:
        mm.madvise(mmap.MADV_SEQUENTIAL)
        pos = SEGMENT_HEADER_SIZE
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
            if crc32c.crc32c(view[pos + _FRAME_PREFIX.size : end], value=seed) != crc:
                scan.bad_offset, scan.bad_reason = pos, "crc mismatch"
                return
            if seq != scan.next_seq:
                msg = f"record seq {seq}, expected {scan.next_seq}"
                raise CorruptLog(path, pos, msg)
            if type_ not in _TYPES:
                raise CorruptLog(path, pos, f"unknown record type {type_}")
            rtype = _TYPES[type_]
            decoded = _decode(mm, view, start, end, rtype, name)
            if isinstance(decoded, str):
                raise CorruptLog(path, pos, decoded)
            meta, blob = decoded
            on_record(Record(rtype, seq, meta, blob, name, pos))
            scan.records += 1
            scan.next_seq = seq + 1
            pos = end
            scan.good_end = end
    finally:
        view.release()
        mm.close()


def _next_valid_frame(fd: int, size: int, salt: int, after: int, seq: int) -> int | None:
    """The offset of a frame with *seq* whose CRC holds, past *after*; None if there is none.

    A crash only ever damages the end of the newest segment; a good record after a bad one
    means the bad one was damaged in place. Candidates are found by their seq bytes and
    proven by the salted CRC, so audio that merely looks like a frame never counts.
    """
    seed = _salt_crc(salt)
    pattern = struct.pack("<Q", seq)
    seq_at = _FRAME_PREFIX.size + 1  # length, crc, then type: the seq field's place in a frame
    mm = mmap.mmap(fd, size, prot=mmap.PROT_READ)
    view = memoryview(mm)
    try:
        hit = mm.find(pattern, after + seq_at)
        while hit >= 0:
            pos = hit - seq_at
            length, crc, _, _ = FRAME_HEADER.unpack_from(mm, pos)
            end = pos + FRAME_HEADER_SIZE + length
            if end <= size:
                with view[pos + _FRAME_PREFIX.size : end] as checked:
                    if crc32c.crc32c(checked, value=seed) == crc:
                        return pos
            hit = mm.find(pattern, hit + 1)
        return None
    finally:
        view.release()
        mm.close()


_TYPES: Final = {t.value: t for t in RecordType}
_BIN_HEADERS: Final = {0xC4: 1, 0xC5: 2, 0xC6: 4}  # marker -> size of the length field


def _decode(
    mm: mmap.mmap, view: memoryview, start: int, end: int, rtype: RecordType, name: str
) -> tuple[dict[str, Any], BlobRef | None] | str:
    """The meta and blob of a payload, or why it does not unpack. Keeps no view alive."""
    try:
        if rtype != RecordType.CHUNK:
            meta = msgpack.unpackb(view[start:end], raw=False, strict_map_key=False)
            if not isinstance(meta, dict):
                return "meta is not a map"
            return meta, None
        unpacker = msgpack.Unpacker(
            raw=False, strict_map_key=False, max_buffer_size=MAX_RECORD_BYTES
        )
        fed = min(end - start, META_PREFIX_BYTES)
        unpacker.feed(view[start : start + fed])
        while True:
            try:
                meta = unpacker.unpack()
                break
            except msgpack.OutOfData:
                if start + fed >= end:
                    return "payload ends inside its meta"
                more = min(end - start - fed, fed)
                unpacker.feed(view[start + fed : start + fed + more])
                fed += more
        at = start + unpacker.tell()
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        return f"payload does not unpack: {exc!r}"
    if not isinstance(meta, dict):
        return "meta is not a map"
    if at >= end or mm[at] not in _BIN_HEADERS:
        return "audio is not a msgpack bin"
    width = _BIN_HEADERS[mm[at]]
    if at + 1 + width > end:
        return "audio bin header runs past the frame"
    n = int.from_bytes(mm[at + 1 : at + 1 + width], "big")
    offset = at + 1 + width
    if offset + n != end:
        return f"audio bin of {n} bytes does not end at the frame's end"
    return meta, BlobRef(name, offset, n)


def _all_zero(fd: int, size: int) -> bool:
    pos = 0
    while pos < size:
        data = os.pread(fd, min(COPY_CHUNK_BYTES, size - pos), pos)
        if not data or data.count(0) != len(data):
            return False
        pos += len(data)
    return True


def _save_torn(directory: Path, name: str, src: int, start: int, end: int) -> Path | None:
    """Copy bytes start..end of a segment to a new ``.torn`` file, fsync'd; None if empty."""
    if end <= start:
        return None
    n = 0
    while True:
        candidate = directory / (f"{name}{TORN_SUFFIX}" if n == 0 else f"{name}.{n}{TORN_SUFFIX}")
        try:
            out = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        except FileExistsError:
            n += 1
            continue
        break
    try:
        pos = start
        while pos < end:
            data = os.pread(src, min(COPY_CHUNK_BYTES, end - pos), pos)
            if not data:
                msg = f"{directory / name} shrank while its torn tail was copied"
                raise StoreError(msg)
            _write_all(out, [data], pos - start)
            pos += len(data)
        os.fsync(out)
    finally:
        os.close(out)
    return candidate


def _truncate(path: Path, size: int) -> None:
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    try:
        os.ftruncate(fd, size)
        os.fsync(fd)
    finally:
        os.close(fd)


def _warn_torn(path: Path, offset: int, cut: int, reason: str, torn: str | None) -> None:
    logger.warning(
        "torn tail in %s at offset %d (%s): cut %d bytes, kept in %s; "
        "records after a torn write were never acknowledged as durable",
        path,
        offset,
        reason,
        cut,
        torn,
    )


# -- reading blobs ---------------------------------------------------------------------------


def read_blob(data_dir: Path, ref: BlobRef) -> bytes:
    """The audio bytes *ref* points at."""
    if not _SEGMENT_NAME.match(ref.segment):
        msg = f"not a segment name: {ref.segment!r}"
        raise StoreError(msg)
    path = log_dir(data_dir) / ref.segment
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        parts: list[bytes] = []
        got = 0
        while got < ref.length:
            data = os.pread(fd, ref.length - got, ref.offset + got)
            if not data:
                msg = f"short read of {path}: {got} of {ref.length} bytes at offset {ref.offset}"
                raise StoreError(msg)
            parts.append(data)
            got += len(data)
    finally:
        os.close(fd)
    return parts[0] if len(parts) == 1 else b"".join(parts)


# -- writing ---------------------------------------------------------------------------------


def _write_all(fd: int, buffers: list[bytes], offset: int) -> int:
    """pwritev every buffer at *offset*, looping on short writes; returns bytes written."""
    pending: list[bytes | memoryview] = [b for b in buffers if b]
    written = 0
    i = 0
    while i < len(pending):
        n = os.pwritev(fd, pending[i : i + _IOV_MAX], offset + written)
        if n <= 0:
            raise OSError(errno.EIO, "write made no progress")
        written += n
        while n > 0:
            head = len(pending[i])
            if n >= head:
                n -= head
                i += 1
            else:
                pending[i] = memoryview(pending[i])[n:]
                n = 0
    return written


@attrs.define
class _Pending:
    """Frames buffered for one segment; ``header`` is set when flush must create it."""

    segment: str
    salt: int
    start: int
    header: bytes | None
    buffers: list[bytes] = attrs.field(factory=list)
    nbytes: int = 0

    @property
    def end(self) -> int:
        return self.start + self.nbytes


class LogWriter:
    """Appends records to the newest segment, rolling to a new one past the size limit.

    Open it after replay with ``next_seq=report.last_seq + 1``. Not thread-safe: one caller
    (the store's writer, one thread at a time) uses it.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        next_seq: int,
        segment_max_bytes: int = DEFAULT_SEGMENT_MAX_BYTES,
    ) -> None:
        if next_seq < FIRST_SEQ:
            msg = f"next_seq must be at least {FIRST_SEQ}, got {next_seq}"
            raise ValueError(msg)
        if segment_max_bytes <= SEGMENT_HEADER_SIZE:
            msg = f"segment_max_bytes must exceed {SEGMENT_HEADER_SIZE}"
            raise ValueError(msg)
        self._dir = log_dir(data_dir)
        self._segment_max = segment_max_bytes
        self._fd: int | None = None
        self._segment: str | None = None
        self._salt = 0
        self._end = 0  # bytes of the current segment written (the last good end)
        self._pending: list[_Pending] = []
        self._next_seq = next_seq  # given out, buffered frames included
        self._written_seq = next_seq  # after the last record written to a file
        self._bytes_written = 0
        self._dir_dirty = False
        self._broken: str | None = None
        self._closed = False
        _make_dirs(self._dir)
        names = list_segments(data_dir)
        if names:
            self._open_existing(names[-1], next_seq)

    def _open_existing(self, name: str, next_seq: int) -> None:
        path = self._dir / name
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        try:
            parsed = parse_segment_header(os.pread(fd, SEGMENT_HEADER_SIZE, 0))
            size = os.fstat(fd).st_size
        except BaseException:
            os.close(fd)
            raise
        if isinstance(parsed, str):
            os.close(fd)
            raise CorruptLog(str(path), 0, f"{parsed} (replay the log first)")
        salt, base_seq = parsed
        if next_seq < base_seq:
            os.close(fd)
            msg = f"next_seq {next_seq} is before the segment's base seq {base_seq}"
            raise CorruptLog(str(path), 0, msg)
        self._fd, self._segment, self._salt, self._end = fd, name, salt, size

    @property
    def next_seq(self) -> int:
        """The seq the next appended record gets."""
        return self._next_seq

    @property
    def current_segment(self) -> str | None:
        """The segment file written to (None before the first flush into an empty log)."""
        return self._segment

    @property
    def bytes_written(self) -> int:
        """Bytes this writer has written to segment files (headers included)."""
        return self._bytes_written

    @property
    def pending_records(self) -> int:
        """Records appended but not yet flushed."""
        return self._next_seq - self._written_seq

    def append(
        self, type: RecordType, meta: dict[str, Any], audio: bytes | None = None
    ) -> tuple[int, BlobRef | None]:
        """Frame a record into the batch; its ``BlobRef`` is valid once ``flush`` returned."""
        self._check_usable()
        type = RecordType(type)
        seq = self._next_seq
        tail = self._pending[-1] if self._pending else None
        salt = tail.salt if tail else self._salt
        frame = build_frame(salt, type, seq, meta, audio)
        size = sum(len(b) for b in frame)
        segment, end = (tail.segment, tail.end) if tail else (self._segment, self._end)
        if segment is None or (end > SEGMENT_HEADER_SIZE and end + size > self._segment_max):
            salt = secrets.randbits(32)
            header = pack_segment_header(salt, seq)
            tail = _Pending(segment_name(seq), salt, 0, header, [header], len(header))
            self._pending.append(tail)
            frame = build_frame(salt, type, seq, meta, audio)
        elif tail is None:
            assert self._segment is not None
            tail = _Pending(self._segment, self._salt, self._end, None)
            self._pending.append(tail)
        offset = tail.end
        tail.buffers.extend(frame)
        tail.nbytes += size
        self._next_seq = seq + 1
        if type != RecordType.CHUNK:
            return seq, None
        assert audio is not None
        return seq, BlobRef(tail.segment, offset + size - len(audio), len(audio))

    def flush(self) -> None:
        """Write every buffered frame. On failure the log is left at its last good record,
        the batch is dropped (its seqs are given out again) and the error re-raised."""
        self._check_usable()
        if not self._pending:
            return
        saved_fd, saved_segment, saved_salt, saved_end = (
            self._fd,
            self._segment,
            self._salt,
            self._end,
        )
        created: list[tuple[Path, int]] = []
        synced_old = False
        written = 0
        try:
            for pending in self._pending:
                if pending.header is not None:
                    if self._fd is not None:
                        # The older segment is complete and durable (its name included)
                        # before the next one exists: a crash only damages the newest one.
                        os.fdatasync(self._fd)
                        synced_old = True
                        if self._dir_dirty:
                            _fsync_dir(self._dir)
                    path = self._dir / pending.segment
                    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
                    fd = os.open(path, flags, 0o644)
                    created.append((path, fd))
                    self._dir_dirty = True
                    self._fd, self._segment, self._salt = fd, pending.segment, pending.salt
                    self._end = 0
                assert self._fd is not None
                written += _write_all(self._fd, pending.buffers, pending.start)
                self._end = pending.end
        except BaseException as exc:
            self._pending.clear()
            self._next_seq = self._written_seq
            self._fd, self._segment, self._salt, self._end = (
                saved_fd,
                saved_segment,
                saved_salt,
                saved_end,
            )
            self._roll_back(created, saved_fd, saved_end, synced_old, exc)
            raise
        for _, fd in created[:-1]:
            os.close(fd)
        if created and saved_fd is not None:
            os.close(saved_fd)
        self._pending.clear()
        self._written_seq = self._next_seq
        self._bytes_written += written

    def _roll_back(
        self,
        created: list[tuple[Path, int]],
        fd: int | None,
        end: int,
        sync: bool,
        cause: BaseException,
    ) -> None:
        try:
            for path, new_fd in created:
                os.close(new_fd)
                os.unlink(path)
            if created:
                _fsync_dir(self._dir)
            if fd is not None:
                os.ftruncate(fd, end)
                if sync:
                    os.fdatasync(fd)
        except OSError as exc:
            self._broken = f"a failed write could not be rolled back: {exc}"
            msg = f"log write failed ({cause!r}) and {self._broken}"
            raise StoreError(msg) from exc
        logger.debug("rolled the log back to %s offset %d after %r", self._segment, end, cause)

    def sync(self) -> None:
        """Make every written record durable."""
        self._check_usable()
        if self._fd is not None:
            os.fdatasync(self._fd)
        if self._dir_dirty:
            _fsync_dir(self._dir)
            self._dir_dirty = False

    def close(self) -> None:
        """Close the segment; records appended and not flushed are dropped (with a warning)."""
        if self._closed:
            return
        self._closed = True
        if self._pending:
            logger.warning("log closed with %d unflushed records dropped", self.pending_records)
            self._pending.clear()
            self._next_seq = self._written_seq
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def _check_usable(self) -> None:
        if self._closed:
            msg = "the log writer is closed"
            raise StoreError(msg)
        if self._broken is not None:
            msg = f"the log writer is unusable: {self._broken}"
            raise StoreError(msg)
