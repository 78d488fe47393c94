"""The log's on-disk format: segment headers, record frames, checkpoints. Pure: bytes in,
bytes out (no files, no trio); ``files`` names and writes the files, ``replay`` reads them back
with these rules, ``writer`` appends.

Format (all integers little-endian)
-----------------------------------
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
checked with one crc32c call over ``frame[8:]`` seeded with the salt's CRC (``salt_crc``).
The audio's bin header is computed at append time, so the absolute file offset of the audio
bytes is known (``BlobRef``) and memory keeps that instead of the audio. Because the salt is
random per segment, audio that happens to contain a well-formed frame (even one cut from
another segment of this log) never verifies as a record of this segment.

A CHECKPOINT frame takes no seq of its own: its seq field is D, and it says "every record up
to seq D had been fsync'd when this frame was written". The writer puts one at the start of
the first batch after an fsync that covered records no checkpoint names yet, and one more
at a clean close (``LogWriter.checkpoint``), so a checkpoint is the log's own, checked
record of what was durable.

The manifest, ``log/MANIFEST``, 48 bytes, says how far the log is known to be durable, so
that replay can tell a cut or a lost file from a torn write even where the checkpoints that
would prove it were cut too::

    0   8s  magic            b"TRAUDMAN"
    8   u16 format version   1
    10  u16 flags            0
    12  4x  padding          zero
    16  u64 segment          base seq of the newest segment (0: there was none)
    24  u64 offset           bytes of that segment that were fsync'd (0 with no segment)
    32  u64 durable          every record up to this seq was fsync'd
    40  u32 crc              crc32c of bytes 0..40
    44  4x  padding          zero
"""

from __future__ import annotations

import enum
import mmap
import struct
from typing import Any, Final

import attrs
import crc32c
import msgpack

MAGIC: Final = b"TRAUDLOG"
SNAPSHOT_MAGIC: Final = b"TRAUDSNP"
FORMAT_VERSION: Final = 1
SEGMENT_HEADER: Final = struct.Struct("<8sHHIQI4x")
SEGMENT_HEADER_SIZE: Final = SEGMENT_HEADER.size  # 32
_HEADER_CRC_END: Final = 24  # the header CRC covers bytes 0..24
FRAME_HEADER: Final = struct.Struct("<IIBQ")
FRAME_HEADER_SIZE: Final = FRAME_HEADER.size  # 17
FRAME_PREFIX: Final = struct.Struct("<II")  # length, crc
_FRAME_CHECKED: Final = struct.Struct("<BQ")  # type, seq: the start of the CRC'd bytes
_SALT: Final = struct.Struct("<I")

MANIFEST_MAGIC: Final = b"TRAUDMAN"
MANIFEST: Final = struct.Struct("<8sHH4xQQQI4x")
MANIFEST_SIZE: Final = MANIFEST.size  # 48
_MANIFEST_CRC_END: Final = 40

MAX_RECORD_BYTES: Final = 256 * 1024 * 1024
FIRST_SEQ: Final = 1

# A CHECKPOINT payload: msgpack {"durable": D} with D always a uint64, so it has one size
# and a marker that replay can search for.
CHECKPOINT_MARK: Final = b"\x81\xa7durable\xcf"
CHECKPOINT_PAYLOAD_SIZE: Final = len(CHECKPOINT_MARK) + 8

INLINE_AUDIO_MAX: Final = 4096  # audio up to this size is copied into its frame's buffer
META_PREFIX_BYTES: Final = 64 * 1024  # the first bytes of a CHUNK payload fed to find meta


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
    end: int = 0  # where its frame ends (its payload is ``offset + FRAME_HEADER_SIZE..end``)


def pack_segment_header(salt: int, base_seq: int, flags: int = 0, magic: bytes = MAGIC) -> bytes:
    head = SEGMENT_HEADER.pack(magic, FORMAT_VERSION, flags, salt, base_seq, 0)
    crc = crc32c.crc32c(head[:_HEADER_CRC_END])
    return SEGMENT_HEADER.pack(magic, FORMAT_VERSION, flags, salt, base_seq, crc)


@attrs.frozen
class Manifest:
    """What the manifest says: the newest segment (its base seq, 0 for none), how many of its
    bytes were fsync'd, and the last seq an fsync covered."""

    segment: int
    offset: int
    durable: int


def pack_manifest(manifest: Manifest) -> bytes:
    fields = (MANIFEST_MAGIC, FORMAT_VERSION, 0, manifest.segment, manifest.offset)
    head = MANIFEST.pack(*fields, manifest.durable, 0)
    return MANIFEST.pack(*fields, manifest.durable, crc32c.crc32c(head[:_MANIFEST_CRC_END]))


def parse_manifest(data: bytes) -> Manifest | str:
    """The manifest in *data*, or why it is not a valid one."""
    if len(data) != MANIFEST_SIZE:
        return f"manifest is {len(data)} bytes, needs {MANIFEST_SIZE}"
    magic, version, flags, segment, offset, durable, crc = MANIFEST.unpack(data)
    covered = data[:_MANIFEST_CRC_END]
    wrong = _check_fields("manifest", covered, magic, MANIFEST_MAGIC, crc, version, flags)
    if wrong is not None:
        return wrong
    if data[12:16] != bytes(4) or data[_MANIFEST_CRC_END + 4 :] != bytes(4):
        return "manifest padding is not zero"
    if (segment == 0) != (offset == 0) or 0 < offset < SEGMENT_HEADER_SIZE:
        return f"manifest names segment {segment} with offset {offset}"
    return Manifest(segment, offset, durable)


def _check_fields(
    what: str, covered: bytes, magic: bytes, expect: bytes, crc: int, version: int, flags: int
) -> str | None:
    """Why a segment header or manifest with these fields is not valid; None if it is.
    *covered* is the bytes its CRC covers."""
    if magic != expect:
        return f"bad magic {magic!r}"
    if crc != crc32c.crc32c(covered):
        return f"{what} crc mismatch"
    if version != FORMAT_VERSION:
        return f"unsupported format version {version}"
    if flags != 0:
        return f"unknown {what} flags {flags:#06x}"
    return None


def parse_segment_header(data: bytes, expect: bytes = MAGIC) -> tuple[int, int] | str:
    """(salt, base_seq) of a segment (or, with ``expect=SNAPSHOT_MAGIC``, snapshot) header,
    or why it is not a valid one."""
    if len(data) < SEGMENT_HEADER_SIZE:
        return f"header is {len(data)} bytes, needs {SEGMENT_HEADER_SIZE}"
    magic, version, flags, salt, base_seq, crc = SEGMENT_HEADER.unpack_from(data)
    covered = data[:_HEADER_CRC_END]
    wrong = _check_fields("header", covered, magic, expect, crc, version, flags)
    if wrong is not None:
        return wrong
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


def salt_crc(salt: int) -> int:
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
    crc = crc32c.crc32c(body, value=salt_crc(salt))
    return FRAME_PREFIX.pack(CHECKPOINT_PAYLOAD_SIZE, crc) + body


def build_frame(
    salt: int,
    type: RecordType,
    seq: int,
    meta: dict[str, Any] | bytes,
    audio: bytes | None = None,
) -> list[bytes]:
    """One record's frame as buffers to write in sequence (the audio kept as its own buffer
    when it is large); *meta* a map, or its msgpack bytes as the caller made them (a chunk's
    ``ChunkRecord``: packed once). Used by the writer; public so that tests and tools frame
    records the same way."""
    if type == RecordType.CHECKPOINT:
        msg = "checkpoints are framed by build_checkpoint"
        raise ValueError(msg)
    packed = meta if isinstance(meta, bytes) else pack_meta(meta)
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
    crc = crc32c.crc32c(body, value=salt_crc(salt))
    if audio:
        crc = crc32c.crc32c(audio, value=crc)
    prefix = FRAME_PREFIX.pack(length, crc)
    if len(audio) <= INLINE_AUDIO_MAX:
        return [prefix + body + audio]
    return [prefix + body, audio]


DATA_TYPES: Final = {t.value: t for t in RecordType if t != RecordType.CHECKPOINT}
_BIN_HEADERS: Final = {0xC4: 1, 0xC5: 2, 0xC6: 4}  # marker -> size of the length field


def decode_payload(
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
