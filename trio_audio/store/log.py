"""The append-only record log: segment files of CRC-checked frames, replayed at startup.

Synchronous, file-level code with no trio in it: the store's writer task calls it through
``trio.to_thread.run_sync`` and replay runs in a thread before the service reports ready.

On-disk format (all integers little-endian)
-------------------------------------------
``<data_dir>/LOCK`` is the flock'd lock file (it holds the owner's pid). ``<data_dir>/log/``
holds the segments, named ``%016d.seg`` after the seq of their first record, so sorting by
name is log order, and at most one snapshot ``%016d.snap`` (see ``compact.py``) named after
the seq the log goes on from. Other names there (``*.torn`` files, for one) are ignored;
``*.tmp`` files are an unfinished compaction's and are removed at replay.

Segment header, 32 bytes (a snapshot has the same header with magic ``TRAUDSNP``)::

    0   8s  magic            b"TRAUDLOG"
    8   u16 format version   1
    10  u16 flags            0 (a reader refuses unknown flags)
    12  u32 salt             random per segment (``secrets``)
    16  u64 base_seq         seq of the first record of this segment (also its file name);
                             for a snapshot, the seq the log after it starts at
    24  u32 header crc       crc32c of bytes 0..24
    28  4x  padding          zero

Then frames, back to back until end of file, each a 17-byte header and a payload::

    0   u32 length           payload bytes, at most MAX_RECORD_BYTES
    4   u32 crc              crc32c(salt as u32 LE ‖ type ‖ seq ‖ payload)
    8   u8  type             RecordType: 1 CHUNK, 2 UPDATE, 3 TOMBSTONE, 4 CHECKPOINT
    9   u64 seq              global record number: 1, 2, 3 ... across all segments
    17  payload              CHUNK: packb(meta) ‖ packb(audio) (a msgpack bin);
                             UPDATE, TOMBSTONE: packb(meta). meta is a map of plain types.
                             CHECKPOINT: {"durable": D} with D as a msgpack uint64 (18 bytes)

Bytes 8.. of a frame header are exactly the CRC's input after the salt, so a frame is
checked with one crc32c call over ``frame[8:]`` seeded with the salt's CRC. The audio's bin
header is computed at append time, so the absolute file offset of the audio bytes is known
(``BlobRef``) and memory keeps that instead of the audio. Because the salt is random per
segment, audio that happens to contain a well-formed frame (even one cut from another
segment of this log) never verifies as a record of this segment.

A CHECKPOINT frame takes no seq of its own: its seq field is D, and it says "every record up
to seq D had been fsync'd when this frame was written". The writer puts one at the start of
the first batch after an fsync that covered records no checkpoint names yet, and one more
at a clean close (``LogWriter.checkpoint``), so a checkpoint is the log's own, checked
record of what was durable.

What can be damaged, and the replay rule
----------------------------------------
The model (SQLite's crash model): a crash of the process loses nothing that was written; a
power cut may keep, drop or garble, in any combination and order, every write made since
the last *completed* fsync of that file, and nothing before it. The writer keeps to these
orders, so the damage a power cut can do is always at the end of the newest segment:

* a segment is complete and ``fdatasync``'d (and the directory fsync'd) before the next one
  is created, and a new segment's header is written and ``fdatasync``'d before any record
  goes into it;
* a failed write is truncated back to the last good record and that truncation is
  ``fdatasync``'d before anything else is written;
* a compaction snapshot is fsync'd before it is renamed into place (``compact.py``).

Replay reads the snapshot (if any) and every segment in order (``mmap``, no copy of the
audio) and checks every record: header fields, length bound and that the frame lies within
the file, CRC, seq continuity (the first segment starts at seq 1, or where the snapshot says
the log goes on, each next one at the previous last seq + 1, each record at the previous
+ 1), known type, and that the payload unpacks to a map (plus, for a CHUNK, one bin that
ends exactly at the frame's end). Then:

* **Older segments and the snapshot** were fsync'd in full: any bad frame or header there is
  corruption, and replay raises ``CorruptLog`` naming the file and frame offset.
* **The newest segment**: let X be the first frame that is partial or fails its length bound
  or CRC, and s the seq it should have. If a valid CHECKPOINT frame *after* X says records up
  to D >= s were fsync'd, the bad frame was durable before it was damaged: that is
  corruption, ``CorruptLog``. Otherwise the record at X may have been in flight at a crash,
  so everything from X to the end of file is a *torn tail*: the cut bytes are copied to
  ``<segment>.torn`` (or ``<segment>.<n>.torn``) and fsync'd, the segment is truncated to
  its last good record and fsync'd, the directory is fsync'd, a warning is logged and the
  tail is reported. Valid frames after X without such a checkpoint (a power cut kept a later
  write and garbled an earlier one) go to the ``.torn`` file with the rest: they were never
  durable, so they were never acknowledged in ``always`` mode.
* A newest segment no longer than its header, or all zero bytes (created, but its header's
  fsync never completed) is torn as a whole: saved, removed. A bad header on a longer newest
  segment is corruption (records are only written after the header's fsync).
* A frame whose CRC verifies but whose content is wrong (seq out of order, unknown type, a
  checkpoint naming a seq not yet written, payload that does not unpack) is corruption
  anywhere, since no torn write produces that.

What that guarantees: with fsync ``always`` every acknowledged record was fsync'd, so a torn
tail never holds one. With ``interval``, replay loses only records written after the last
completed fsync. A bit flipped by the disk in a record that a later checkpoint proves durable
is always reported as corruption. The one window where a flip cannot be told from a torn
write is the last batch before a crash, until the restart writes its checkpoint (the store
does at start-up): a flip there is handled as a torn tail, and its bytes are kept in the
``.torn`` file and named in the warning, not lost.

Writing
-------
``LogWriter.append`` frames a record into memory and returns its seq and ``BlobRef``;
``flush`` writes every buffered frame with ``pwritev`` (looping on short writes) and, if the
write fails, truncates the file back to the last good record and re-raises, so a failed
batch leaves no partial record and its seqs are given out again. ``sync`` makes the written
records durable (``fdatasync``, plus a directory fsync after a segment was created);
``checkpoint`` syncs and proves it. Every call that changes a file goes through a
``FileOps`` object (the real ``os`` calls by default): the seam that the power-loss and
disk-fault tests put their doubles under.
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
SNAPSHOT_MAGIC: Final = b"TRAUDSNP"
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
SNAPSHOT_SUFFIX: Final = ".snap"
TMP_SUFFIX: Final = ".tmp"
_SEGMENT_NAME: Final = re.compile(r"^(\d{16})\.seg$")
_SNAPSHOT_NAME: Final = re.compile(r"^(\d{16})\.snap$")

# A CHECKPOINT payload: msgpack {"durable": D} with D always a uint64, so it has one size
# and a marker that replay can search for.
CHECKPOINT_MARK: Final = b"\x81\xa7durable\xcf"
CHECKPOINT_PAYLOAD_SIZE: Final = len(CHECKPOINT_MARK) + 8

INLINE_AUDIO_MAX: Final = 4096  # audio up to this size is copied into its frame's buffer
META_PREFIX_BYTES: Final = 64 * 1024  # the first bytes of a CHUNK payload fed to find meta
COPY_CHUNK_BYTES: Final = 1024 * 1024
_IOV_MAX: Final = max(16, min(os.sysconf("SC_IOV_MAX"), 1024))


class RecordType(enum.IntEnum):
    CHUNK = 1
    UPDATE = 2
    TOMBSTONE = 3
    CHECKPOINT = 4


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

    ``records`` counts the data records kept (checkpoints are counted in ``checkpoints``,
    snapshot records in ``records`` too), ``segments`` the segment files, ``bytes`` the size
    of the kept files (headers and snapshot included), ``last_seq`` the seq of the last good
    record (0 for an empty log: the writer goes on at ``last_seq + 1``). ``torn_bytes`` were
    cut off the newest segment and saved in ``torn_file`` (its path; None when nothing was
    cut or the cut was empty), ``torn_reason`` says what was wrong with the first cut frame.
    ``durable_seq`` is the highest seq the log itself proves was fsync'd (sealed segments, the
    snapshot, checkpoints): hand it to ``LogWriter(proven_seq=...)``. ``snapshot`` names the
    snapshot replayed first, ``removed`` what replay deleted as left over from a compaction.
    """

    records: int
    segments: int
    bytes: int
    torn_bytes: int
    torn_file: str | None
    last_seq: int
    torn_reason: str | None = None
    durable_seq: int = 0
    checkpoints: int = 0
    snapshot: str | None = None
    removed: tuple[str, ...] = ()


class FileOps:
    """The calls that change files, as the log writer and compaction make them.

    The default is the real ``os`` calls. Tests subclass it to sit under the log: a
    power-loss model that keeps, drops or garbles what was not fsync'd, and injected disk
    faults (ENOSPC, short writes, EIO from fsync).
    """

    def open(self, path: Path, flags: int, mode: int = 0o644) -> int:
        return os.open(path, flags, mode)

    def pwritev(self, fd: int, buffers: list[bytes | memoryview], offset: int) -> int:
        return os.pwritev(fd, buffers, offset)

    def fdatasync(self, fd: int) -> None:
        os.fdatasync(fd)

    def ftruncate(self, fd: int, size: int) -> None:
        os.ftruncate(fd, size)

    def close(self, fd: int) -> None:
        os.close(fd)

    def unlink(self, path: Path) -> None:
        os.unlink(path)

    def rename(self, src: Path, dst: Path) -> None:
        os.rename(src, dst)

    def fsync_dir(self, path: Path) -> None:
        _fsync_dir(path)


REAL_FILES: Final = FileOps()


def segment_name(base_seq: int) -> str:
    return f"{base_seq:016d}{SEGMENT_SUFFIX}"


def snapshot_name(start_seq: int) -> str:
    return f"{start_seq:016d}{SNAPSHOT_SUFFIX}"


def list_snapshots(data_dir: Path) -> list[str]:
    """Snapshot file names, oldest first (the last one is the one replay uses)."""
    return _names(data_dir, _SNAPSHOT_NAME)


def log_dir(data_dir: Path) -> Path:
    return data_dir / LOG_DIR


def list_segments(data_dir: Path) -> list[str]:
    """Segment file names in log order."""
    return _names(data_dir, _SEGMENT_NAME)


def _names(data_dir: Path, pattern: re.Pattern[str]) -> list[str]:
    directory = log_dir(data_dir)
    if not directory.is_dir():
        return []
    return sorted(e.name for e in os.scandir(directory) if pattern.match(e.name))


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


def pack_segment_header(salt: int, base_seq: int, flags: int = 0, magic: bytes = MAGIC) -> bytes:
    head = SEGMENT_HEADER.pack(magic, FORMAT_VERSION, flags, salt, base_seq, 0)
    crc = crc32c.crc32c(head[:_HEADER_CRC_END])
    return SEGMENT_HEADER.pack(magic, FORMAT_VERSION, flags, salt, base_seq, crc)


def parse_segment_header(data: bytes, expect: bytes = MAGIC) -> tuple[int, int] | str:
    """(salt, base_seq) of a segment (or, with ``expect=SNAPSHOT_MAGIC``, snapshot) header,
    or why it is not a valid one."""
    if len(data) < SEGMENT_HEADER_SIZE:
        return f"header is {len(data)} bytes, needs {SEGMENT_HEADER_SIZE}"
    magic, version, flags, salt, base_seq, crc = SEGMENT_HEADER.unpack_from(data)
    if magic != expect:
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


def build_checkpoint(salt: int, durable: int) -> bytes:
    """A CHECKPOINT frame: "every record up to seq *durable* was fsync'd"."""
    body = _FRAME_CHECKED.pack(RecordType.CHECKPOINT, durable)
    body += CHECKPOINT_MARK + durable.to_bytes(8, "big")
    crc = crc32c.crc32c(body, value=_salt_crc(salt))
    return _FRAME_PREFIX.pack(CHECKPOINT_PAYLOAD_SIZE, crc) + body


def build_frame(
    salt: int, type: RecordType, seq: int, meta: dict[str, Any], audio: bytes | None = None
) -> list[bytes]:
    """One record's frame as buffers to write in sequence (the audio kept as its own buffer
    when it is large). Used by the writer; public so that tests and tools frame records the
    same way."""
    if type == RecordType.CHECKPOINT:
        msg = "checkpoints are framed by build_checkpoint"
        raise ValueError(msg)
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


def replay(data_dir: Path, on_record: Callable[[Record], None]) -> ReplayReport:
    """Check every record of the log in order and hand each good one to *on_record*.

    Reads the newest snapshot first, if there is one, then the segments. Cuts a torn tail
    off the newest segment and raises ``CorruptLog`` for damage anywhere else (see the
    module docstring); removes what a compaction left behind.
    """
    directory = log_dir(data_dir)
    expected = FIRST_SEQ
    records = segments = total = checkpoints = 0
    durable = 0
    snapshot: str | None = None
    snapshots = list_snapshots(data_dir)
    if snapshots:
        snapshot = snapshots[-1]
        scan = read_snapshot(data_dir, snapshot, on_record)
        assert scan.end_seq is not None
        expected = scan.end_seq
        durable = expected - 1
        records += scan.records
        total += scan.good_end
    removed = _remove_leftovers(directory, snapshots, expected)
    names = list_segments(data_dir)
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
                if newest and (size <= SEGMENT_HEADER_SIZE or _all_zero(fd, size)):
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
            scan = _scan_segment(fd, size, salt, base_seq, expected, path, on_record)
            checkpoints += scan.checkpoints
            if scan.bad_offset is not None:
                assert scan.bad_reason is not None
                if not newest:
                    raise CorruptLog(str(path), scan.bad_offset, scan.bad_reason)
                proof = find_checkpoint(fd, size, salt, scan.bad_offset, scan.next_seq)
                if proof is not None:  # the damaged record had been fsync'd: not a torn write
                    msg = (
                        f"{scan.bad_reason} in a record that was fsync'd "
                        f"(the checkpoint at offset {proof[0]} says seqs up to {proof[1]} were)"
                    )
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
        # Older segments were fsync'd in full before the next one was created.
        durable = max(durable, scan.durable, scan.next_seq - 1 if not newest else 0)
        expected = scan.next_seq
    return ReplayReport(
        records=records,
        segments=segments,
        bytes=total,
        torn_bytes=torn_bytes,
        torn_file=torn_file,
        last_seq=expected - 1,
        torn_reason=torn_reason,
        durable_seq=durable,
        checkpoints=checkpoints,
        snapshot=snapshot,
        removed=tuple(removed),
    )


def read_snapshot(data_dir: Path, name: str, on_record: Callable[[Record], None]) -> _Scan:
    """Check a whole snapshot and hand its records to *on_record*; any defect is
    ``CorruptLog`` (a snapshot was fsync'd before it was renamed into place)."""
    path = log_dir(data_dir) / name
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        parsed = parse_segment_header(os.pread(fd, SEGMENT_HEADER_SIZE, 0), SNAPSHOT_MAGIC)
        if isinstance(parsed, str):
            raise CorruptLog(str(path), 0, parsed)
        salt, start = parsed
        if int(name[: -len(SNAPSHOT_SUFFIX)]) != start:
            msg = f"file name says the log starts at {name[:16]}, header says {start}"
            raise CorruptLog(str(path), 0, msg)
        scan = _Scan(next_seq=FIRST_SEQ, end_seq=start)
        if size > SEGMENT_HEADER_SIZE:
            _scan_file(fd, size, salt, name, str(path), scan, on_record)
        if scan.bad_offset is not None:
            assert scan.bad_reason is not None
            raise CorruptLog(str(path), scan.bad_offset, scan.bad_reason)
        if not scan.ended:
            raise CorruptLog(str(path), scan.good_end, "the snapshot has no end marker")
        return scan
    finally:
        os.close(fd)


def read_segment(
    data_dir: Path, name: str, expected: int, on_record: Callable[[Record], None]
) -> int:
    """Check a whole sealed segment that must start at seq *expected* and hand its records to
    *on_record*; any defect is ``CorruptLog``. Returns the seq after its last record."""
    path = log_dir(data_dir) / name
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        parsed = parse_segment_header(os.pread(fd, SEGMENT_HEADER_SIZE, 0))
        if isinstance(parsed, str):
            raise CorruptLog(str(path), 0, parsed)
        salt, base_seq = parsed
        scan = _scan_segment(fd, size, salt, base_seq, expected, path, on_record)
        if scan.bad_offset is not None:
            assert scan.bad_reason is not None
            raise CorruptLog(str(path), scan.bad_offset, scan.bad_reason)
        return scan.next_seq
    finally:
        os.close(fd)


def _scan_segment(
    fd: int,
    size: int,
    salt: int,
    base_seq: int,
    expected: int,
    path: Path,
    on_record: Callable[[Record], None],
) -> _Scan:
    """The frames of a segment whose header held, which must start at seq *expected*."""
    if base_seq != expected:
        msg = f"segment starts at seq {base_seq}, expected {expected}"
        raise CorruptLog(str(path), 0, msg)
    scan = _Scan(next_seq=base_seq)
    if size > SEGMENT_HEADER_SIZE:
        _scan_file(fd, size, salt, path.name, str(path), scan, on_record)
    return scan


def _remove_leftovers(directory: Path, snapshots: list[str], start: int) -> list[str]:
    """Delete what a compaction that crashed left: ``*.tmp`` files, older snapshots and the
    segments the newest snapshot covers (based before *start*)."""
    if not directory.is_dir():
        return []
    names = sorted(os.listdir(directory))
    doomed = [n for n in names if n.endswith(TMP_SUFFIX)] + snapshots[:-1]
    doomed += [n for n in names if _SEGMENT_NAME.match(n) and int(n[:16]) < start]
    if doomed:
        _fsync_dir(directory)  # the snapshot's rename is durable before what it replaced goes
        for name in doomed:
            os.unlink(directory / name)
        _fsync_dir(directory)
        logger.info("removed %s left over from a compaction", ", ".join(doomed))
    return doomed


def _scan_file(
    fd: int,
    size: int,
    salt: int,
    name: str,
    path: str,
    scan: _Scan,
    on_record: Callable[[Record], None],
    start_at: int = SEGMENT_HEADER_SIZE,
) -> None:
    """Walk the frames of one segment or snapshot from *start_at*, calling *on_record* for
    each good record.

    Stops at the first frame that is partial or fails its bound or CRC (recorded in *scan*:
    the caller decides torn or corrupt); raises ``CorruptLog`` for a frame whose CRC holds
    but whose content is wrong.
    """
    seed = _salt_crc(salt)
    mm = mmap.mmap(fd, size, prot=mmap.PROT_READ)
    view = memoryview(mm)
    snapshot = scan.end_seq is not None
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
            if crc32c.crc32c(view[pos + _FRAME_PREFIX.size : end], value=seed) != crc:
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


def _check_checkpoint(
    mm: mmap.mmap, start: int, end: int, seq: int, scan: _Scan, path: str, pos: int
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
    seed = _salt_crc(salt)
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
                    and crc32c.crc32c(mm[pos + _FRAME_PREFIX.size : end], value=seed) == crc
                ):
                    return pos, durable
            hit = mm.find(CHECKPOINT_MARK, hit + 1)
        return None
    finally:
        mm.close()


_TYPES: Final = {t.value: t for t in RecordType if t != RecordType.CHECKPOINT}
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
            _write_all(REAL_FILES, out, [data], pos - start)
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
    if not (_SEGMENT_NAME.match(ref.segment) or _SNAPSHOT_NAME.match(ref.segment)):
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


def _write_all(files: FileOps, fd: int, buffers: list[bytes], offset: int) -> int:
    """pwritev every buffer at *offset*, looping on short writes; returns bytes written."""
    pending: list[bytes | memoryview] = [b for b in buffers if b]
    written = 0
    i = 0
    while i < len(pending):
        n = files.pwritev(fd, pending[i : i + _IOV_MAX], offset + written)
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

    Open it after replay with ``next_seq=report.last_seq + 1`` and
    ``proven_seq=report.durable_seq``. Not thread-safe: one caller (the store's writer, one
    thread at a time) uses it. *files* is the file layer (the real one by default).
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        next_seq: int,
        segment_max_bytes: int = DEFAULT_SEGMENT_MAX_BYTES,
        proven_seq: int = 0,
        files: FileOps = REAL_FILES,
    ) -> None:
        if next_seq < FIRST_SEQ:
            msg = f"next_seq must be at least {FIRST_SEQ}, got {next_seq}"
            raise ValueError(msg)
        if segment_max_bytes <= SEGMENT_HEADER_SIZE:
            msg = f"segment_max_bytes must exceed {SEGMENT_HEADER_SIZE}"
            raise ValueError(msg)
        self._files = files
        self._dir = log_dir(data_dir)
        self._segment_max = segment_max_bytes
        self._fd: int | None = None
        self._segment: str | None = None
        self._salt = 0
        self._end = 0  # bytes of the current segment written (the last good end)
        self._pending: list[_Pending] = []
        self._next_seq = next_seq  # given out, buffered frames included
        self._written_seq = next_seq  # after the last record written to a file
        self._durable = 0  # the last seq a completed fsync covered
        self._proven = proven_seq  # the last seq a checkpoint written says was fsync'd
        self._proven_before = proven_seq  # ... before the pending batch
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
        fd = self._files.open(path, os.O_RDWR | os.O_CLOEXEC)
        try:
            parsed = parse_segment_header(os.pread(fd, SEGMENT_HEADER_SIZE, 0))
            size = os.fstat(fd).st_size
        except BaseException:
            self._files.close(fd)
            raise
        if isinstance(parsed, str):
            self._files.close(fd)
            raise CorruptLog(str(path), 0, f"{parsed} (replay the log first)")
        salt, base_seq = parsed
        if next_seq < base_seq:
            self._files.close(fd)
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

    @property
    def durable_seq(self) -> int:
        """The last seq a completed fsync of this writer covered."""
        return self._durable

    def append(
        self, type: RecordType, meta: dict[str, Any], audio: bytes | None = None
    ) -> tuple[int, BlobRef | None]:
        """Frame a record into the batch; its ``BlobRef`` is valid once ``flush`` returned."""
        self._check_usable()
        type = RecordType(type)
        if type == RecordType.CHECKPOINT:
            msg = "checkpoints are written by the writer itself"
            raise ValueError(msg)
        if not self._pending:
            self._proven_before = self._proven
            if self._checkpoint_due():
                self._append_checkpoint()
        seq = self._next_seq
        tail = self._pending[-1] if self._pending else None
        salt = tail.salt if tail else self._salt
        frame = build_frame(salt, type, seq, meta, audio)
        size = sum(len(b) for b in frame)
        segment, end = (tail.segment, tail.end) if tail else (self._segment, self._end)
        if segment is None or (end > SEGMENT_HEADER_SIZE and end + size > self._segment_max):
            salt = secrets.randbits(32)
            header = pack_segment_header(salt, seq)
            tail = _Pending(segment_name(seq), salt, SEGMENT_HEADER_SIZE, header)
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

    def _checkpoint_due(self) -> bool:
        return self._segment is not None and self._durable > self._proven

    def _append_checkpoint(self) -> None:
        assert self._segment is not None
        frame = build_checkpoint(self._salt, self._durable)
        tail = _Pending(self._segment, self._salt, self._end, None, [frame], len(frame))
        self._pending.append(tail)
        self._proven = self._durable

    def flush(self) -> None:
        """Write every buffered frame. On failure the log is left at its last good record,
        the batch is dropped (its seqs are given out again) and the error re-raised."""
        self._check_usable()
        if not self._pending:
            return
        files = self._files
        saved_fd, saved_segment, saved_salt, saved_end = (
            self._fd,
            self._segment,
            self._salt,
            self._end,
        )
        created: list[tuple[Path, int]] = []
        written = 0
        try:
            for pending in self._pending:
                if pending.header is not None:
                    if self._fd is not None:
                        # The older segment is complete and durable (its name included)
                        # before the next one exists: a crash only damages the newest one.
                        files.fdatasync(self._fd)
                        if self._dir_dirty:
                            files.fsync_dir(self._dir)
                            self._dir_dirty = False
                    path = self._dir / pending.segment
                    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
                    fd = files.open(path, flags, 0o644)
                    created.append((path, fd))
                    self._fd, self._segment, self._salt = fd, pending.segment, pending.salt
                    self._end = 0
                    # The header is durable before any record is written after it: a bad
                    # header on a segment longer than it is then corruption, not a crash.
                    written += _write_all(files, fd, [pending.header], 0)
                    files.fdatasync(fd)
                    files.fsync_dir(self._dir)
                    self._end = SEGMENT_HEADER_SIZE
                assert self._fd is not None
                written += _write_all(files, self._fd, pending.buffers, pending.start)
                self._end = pending.end
        except BaseException as exc:
            self._pending.clear()
            self._next_seq = self._written_seq
            self._proven = self._proven_before
            self._fd, self._segment, self._salt, self._end = (
                saved_fd,
                saved_segment,
                saved_salt,
                saved_end,
            )
            self._roll_back(created, saved_fd, saved_end, exc)
            raise
        for _, fd in created[:-1]:
            files.close(fd)
        if created and saved_fd is not None:
            files.close(saved_fd)
        self._pending.clear()
        self._written_seq = self._next_seq
        self._bytes_written += written

    def _roll_back(
        self,
        created: list[tuple[Path, int]],
        fd: int | None,
        end: int,
        cause: BaseException,
    ) -> None:
        files = self._files
        try:
            for path, new_fd in created:
                files.close(new_fd)
                files.unlink(path)
            if created:
                files.fsync_dir(self._dir)
            if fd is not None:
                # Durable at once: a power cut must not bring back the half-written batch
                # under the records that will be written over it.
                files.ftruncate(fd, end)
                files.fdatasync(fd)
        except OSError as exc:
            self._broken = f"a failed write could not be rolled back: {exc}"
            msg = f"log write failed ({cause!r}) and {self._broken}"
            raise StoreError(msg) from exc
        logger.debug("rolled the log back to %s offset %d after %r", self._segment, end, cause)

    def sync(self) -> None:
        """Make every written record durable."""
        self._check_usable()
        written = self._written_seq - 1
        if self._fd is not None:
            self._files.fdatasync(self._fd)
        if self._dir_dirty:
            self._files.fsync_dir(self._dir)
            self._dir_dirty = False
        self._durable = written

    def checkpoint(self) -> None:
        """Flush, fsync, and record in the log that every record written is durable (a
        CHECKPOINT frame, fsync'd too), so that replay reports later damage to them as
        corruption. The store calls it at start-up and at a clean close."""
        self.flush()
        self.sync()
        if self._checkpoint_due():
            self._proven_before = self._proven
            self._append_checkpoint()
            self.flush()
            self.sync()

    def seal(self) -> int:
        """Make the current segment durable and close it; the next record starts a new
        segment. Returns that record's seq: every record before it is in sealed segments.
        Compaction's cut point."""
        self.flush()
        if self._fd is not None:
            fd, self._fd = self._fd, None
            self._files.fdatasync(fd)
            self._files.close(fd)
        if self._dir_dirty:
            self._files.fsync_dir(self._dir)
            self._dir_dirty = False
        self._segment, self._end = None, 0
        self._durable = self._proven = self._written_seq - 1
        return self._next_seq

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
            self._files.close(fd)

    def _check_usable(self) -> None:
        if self._closed:
            msg = "the log writer is closed"
            raise StoreError(msg)
        if self._broken is not None:
            msg = f"the log writer is unusable: {self._broken}"
            raise StoreError(msg)
