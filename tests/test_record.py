"""The record format, pure: headers, frames and checkpoints as bytes, no files."""

from __future__ import annotations

import mmap
from typing import Any

import crc32c
import msgpack
import pytest

from trio_audio.store.record import (
    CHECKPOINT_MARK,
    CHECKPOINT_PAYLOAD_SIZE,
    FRAME_HEADER,
    FRAME_HEADER_SIZE,
    INLINE_AUDIO_MAX,
    MAGIC,
    MANIFEST_SIZE,
    SEGMENT_HEADER_SIZE,
    SNAPSHOT_MAGIC,
    BlobRef,
    Manifest,
    RecordType,
    build_checkpoint,
    build_frame,
    decode_payload,
    pack_manifest,
    pack_meta,
    pack_segment_header,
    parse_manifest,
    parse_segment_header,
    salt_crc,
)


def decode(frame: bytes, rtype: RecordType) -> tuple[dict[str, Any], BlobRef | None] | str:
    """decode_payload over *frame* as replay calls it (an mmap of the bytes)."""
    mm = mmap.mmap(-1, len(frame))
    mm.write(frame)
    view = memoryview(mm)
    try:
        return decode_payload(mm, view, FRAME_HEADER_SIZE, len(frame), rtype, "x.seg")
    finally:
        view.release()
        mm.close()


def test_segment_header_round_trip_and_layout() -> None:
    header = pack_segment_header(0xDEADBEEF, 42)
    assert len(header) == SEGMENT_HEADER_SIZE == 32
    assert header[:8] == MAGIC and header[28:] == bytes(4)
    assert int.from_bytes(header[24:28], "little") == crc32c.crc32c(header[:24])
    assert parse_segment_header(header) == (0xDEADBEEF, 42)
    snapshot = pack_segment_header(7, 9, magic=SNAPSHOT_MAGIC)
    assert parse_segment_header(snapshot, SNAPSHOT_MAGIC) == (7, 9)
    assert parse_segment_header(snapshot) == f"bad magic {SNAPSHOT_MAGIC!r}"


def test_segment_header_refusals() -> None:
    good = pack_segment_header(1, 5)
    assert parse_segment_header(good[:31]) == "header is 31 bytes, needs 32"
    flipped = good[:13] + bytes([good[13] ^ 1]) + good[14:]
    assert parse_segment_header(flipped) == "header crc mismatch"
    assert parse_segment_header(pack_segment_header(1, 5, flags=2)) == (
        "unknown header flags 0x0002"
    )
    assert parse_segment_header(pack_segment_header(1, 0)) == "base seq 0 is below 1"
    assert parse_segment_header(good[:28] + b"\x00\x00\x00\x01") == "header padding is not zero"


@pytest.mark.parametrize("size", [0, 1, 255, 256, INLINE_AUDIO_MAX, INLINE_AUDIO_MAX + 1, 70_000])
def test_chunk_frame_round_trip(size: int) -> None:
    audio = bytes(range(256)) * (size // 256) + bytes(size % 256)
    meta = {"chunk_id": "c1", "nested": {"a": [1, 2.5, "hé"]}}
    buffers = build_frame(0x1234, RecordType.CHUNK, 9, meta, audio)
    assert len(buffers) == (1 if size <= INLINE_AUDIO_MAX else 2)
    frame = b"".join(buffers)
    length, crc, type_, seq = FRAME_HEADER.unpack_from(frame)
    assert (length, type_, seq) == (len(frame) - FRAME_HEADER_SIZE, RecordType.CHUNK, 9)
    # The CRC is one crc32c over frame[8:] seeded with the salt's CRC.
    assert crc == crc32c.crc32c(frame[8:], value=salt_crc(0x1234))
    assert frame[FRAME_HEADER_SIZE:] == msgpack.packb(meta) + msgpack.packb(audio)
    decoded = decode(frame, RecordType.CHUNK)
    assert decoded == (meta, BlobRef("x.seg", len(frame) - size, size))


def test_update_frame_round_trip_and_refusals() -> None:
    frame = b"".join(build_frame(1, RecordType.UPDATE, 3, {"chunk_id": "c", "set": {}}))
    assert decode(frame, RecordType.UPDATE) == ({"chunk_id": "c", "set": {}}, None)
    assert decode(frame, RecordType.CHUNK) == "audio is not a msgpack bin"
    with pytest.raises(ValueError, match="needs its audio"):
        build_frame(1, RecordType.CHUNK, 1, {})
    with pytest.raises(ValueError, match="carries no audio"):
        build_frame(1, RecordType.TOMBSTONE, 1, {}, b"x")
    with pytest.raises(ValueError, match="build_checkpoint"):
        build_frame(1, RecordType.CHECKPOINT, 1, {})
    with pytest.raises(TypeError, match="str keys"):
        pack_meta({1: "x"})  # type: ignore[dict-item]


def test_payload_that_is_not_a_map_does_not_decode() -> None:
    body = bytes([RecordType.UPDATE]) + (1).to_bytes(8, "little") + msgpack.packb([1, 2])
    frame = FRAME_HEADER.pack(len(body) - 9, 0, RecordType.UPDATE, 1)[:8] + body
    assert decode(frame, RecordType.UPDATE) == "meta is not a map"


def test_checkpoint_frame() -> None:
    frame = build_checkpoint(0xABC, 1234)
    length, crc, type_, seq = FRAME_HEADER.unpack_from(frame)
    assert (length, type_, seq) == (CHECKPOINT_PAYLOAD_SIZE, RecordType.CHECKPOINT, 1234)
    assert frame[FRAME_HEADER_SIZE:] == CHECKPOINT_MARK + (1234).to_bytes(8, "big")
    assert msgpack.unpackb(frame[FRAME_HEADER_SIZE:]) == {"durable": 1234}
    assert crc == crc32c.crc32c(frame[8:], value=salt_crc(0xABC))


def test_manifest_round_trip_and_refusals() -> None:
    data = pack_manifest(Manifest(segment=17, offset=4096, durable=40))
    assert len(data) == MANIFEST_SIZE == 48 and data[:8] == b"TRAUDMAN"
    assert int.from_bytes(data[40:44], "little") == crc32c.crc32c(data[:40])
    assert parse_manifest(data) == Manifest(17, 4096, 40)
    assert parse_manifest(pack_manifest(Manifest(0, 0, 9))) == Manifest(0, 0, 9)
    assert parse_manifest(data[:47]) == "manifest is 47 bytes, needs 48"
    assert parse_manifest(data[:20] + bytes([data[20] ^ 1]) + data[21:]) == (
        "manifest crc mismatch"
    )
    assert parse_manifest(pack_manifest(Manifest(3, 0, 2))) == (
        "manifest names segment 3 with offset 0"
    )
    assert parse_manifest(pack_manifest(Manifest(3, 20, 2))) == (
        "manifest names segment 3 with offset 20"
    )
