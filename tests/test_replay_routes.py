"""Replay for the index (``routes=True``) decodes only the fields the index needs from a CHUNK
record, and keeps every check and verdict of a full replay."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import crc32c
import pytest

from trio_audio.bench.keydir import meta as service_meta
from trio_audio.errors import CorruptLog
from trio_audio.store.index import Index
from trio_audio.store.reads import Loader
from trio_audio.store.record import Record, RecordType, build_frame
from trio_audio.store.replay import replay
from trio_audio.store.scan import ROUTE

from .logs import Item, replay_all, salt_of, seg_path, write_records


def _items() -> list[Item]:
    rng = random.Random(7)
    out: list[Item] = []
    for n in range(40):
        meta = service_meta(n, f"user{n % 3}", f"session{n % 5}", n // 5, rng)
        if n % 4 == 1:
            meta["transcript"] = {"status": "done", "text": f"word {n}", "words": [{"w": n}]}
        if n % 7 == 2:
            meta["transcript"] = None
        if n % 9 == 3:
            del meta["transcript"]
        size = 70_000 if n == 11 else rng.randrange(400)  # one payload past the fast path
        out.append((RecordType.CHUNK, meta, rng.randbytes(size)))
    group = [("g0", i, 3) for i in range(3)]
    for part in group:
        meta = service_meta(100 + part[1], "user9", "grouped", part[1], rng)
        meta["group"] = list(part)
        out.append((RecordType.CHUNK, meta, b"pcm"))
    out.append((RecordType.CHUNK, {"chunk_id": "odd", "n": 1, "seq": 1.5}, b"x"))  # not routable
    update = {"chunk_id": out[0][1]["chunk_id"], "set": {"transcript": {"status": "failed"}}}
    out.append((RecordType.UPDATE, update, None))
    out.append((RecordType.TOMBSTONE, {"chunk_ids": [out[5][1]["chunk_id"]]}, None))
    return out


def _projection(meta: dict[str, Any]) -> dict[str, Any]:
    """What a routes replay keeps of a CHUNK record's metadata."""
    out = {k: meta[k] for k in ROUTE[:4]}
    out["audio"] = {"duration_ms": meta["audio"]["duration_ms"]}
    if isinstance(meta.get("transcript"), dict):
        transcript = meta["transcript"]
        out["transcript"] = {"status": transcript.get("status"), "text": transcript.get("text")}
    if meta.get("group") is not None:
        out["group"] = meta["group"]
    return out


def test_routes_replay_matches_a_full_replay(tmp_path: Path) -> None:
    write_records(tmp_path, _items(), segment_max_bytes=20_000, batch=4)
    full_report, full = replay_all(tmp_path)
    routed: list[Record] = []
    report = replay(tmp_path, routed.append, routes=True)
    assert report == full_report
    assert len(routed) == len(full) == len(_items())
    for whole, route in zip(full, routed, strict=True):
        assert (route.type, route.seq, route.blob, route.segment, route.offset, route.end) == (
            whole.type, whole.seq, whole.blob, whole.segment, whole.offset, whole.end,
        )  # fmt: skip
        routable = whole.type == RecordType.CHUNK and isinstance(whole.meta.get("seq"), int)
        if routable and whole.blob is not None and whole.blob.length < 65_536:
            assert route.meta == _projection(whole.meta)
        else:  # UPDATE, TOMBSTONE, a long payload, a meta of another shape: decoded whole
            assert route.meta == whole.meta
    # The index built from either is the same, and so is the one a routes replay builds
    # straight from the routing fields (``Loader.add_route``), as the store's does.
    indexes = []
    for records in (full, routed):
        loader = Loader(Index("pending"))
        for record in records:
            if record.meta.get("chunk_id") != "odd":  # no user: not a chunk the index takes
                loader.add(record)
        indexes.append(loader.index)
    direct = Loader(Index("pending"))

    def add(record: Record) -> None:
        if record.meta.get("chunk_id") != "odd":
            direct.add(record)

    replay(tmp_path, add, routes=True, on_route=direct.add_route)
    assert direct.records == len(full) - 1
    for one, two in ((indexes[0], indexes[1]), (indexes[0], direct.index)):
        _assert_same(one, two)


def _assert_same(one: Index, two: Index) -> None:
    assert sorted(one.chunk_ids()) == sorted(two.chunk_ids())
    for chunk_id in one.chunk_ids():
        assert one.offset_ms(chunk_id) == two.offset_ms(chunk_id)
        assert one.status(chunk_id) == two.status(chunk_id)
        assert one.locations([one.row(chunk_id)]) == two.locations([two.row(chunk_id)])
    for user, sessions in one.users.items():
        for session in sessions:
            assert one.summary(user, session) == two.summary(user, session)


def _append_raw_chunk(data_dir: Path, payload: bytes, seq: int) -> None:
    """A CHUNK frame with *payload* as is, with the right salt, seq and CRC."""
    path = seg_path(data_dir, 0)
    salt = salt_of(path)
    frame = b"".join(build_frame(salt, RecordType.UPDATE, seq, {"x": 1}))
    body = bytes([RecordType.CHUNK]) + frame[9:17] + payload
    crc = crc32c.crc32c(body, value=crc32c.crc32c(salt.to_bytes(4, "little")))
    with path.open("ab") as f:
        f.write(len(payload).to_bytes(4, "little") + crc.to_bytes(4, "little") + body)


@pytest.mark.parametrize(
    ("tail", "reason"),
    [
        (b"", "audio is not a msgpack bin"),
        (b"\xc4\x02ab\x00", "does not end at the frame's end"),
        (b"\xc4\x05ab", "audio bin header runs past|does not end at the frame's end"),
        (b"\xa2ab", "audio is not a msgpack bin"),
    ],
)
def test_a_bad_chunk_payload_is_corrupt_with_routes_too(
    tmp_path: Path, tail: bytes, reason: str
) -> None:
    rng = random.Random(1)
    write_records(tmp_path, [(RecordType.CHUNK, service_meta(0, "u", "s", 0, rng), b"a")])
    import msgpack

    _append_raw_chunk(tmp_path, msgpack.packb(service_meta(1, "u", "s", 1, rng)) + tail, 2)
    verdicts = []
    for routes in (False, True):
        with pytest.raises(CorruptLog, match=reason) as info:
            replay(tmp_path, lambda _: None, routes=routes, dry_run=True)
        verdicts.append((info.value.offset, str(info.value)))
    assert verdicts[0] == verdicts[1]


def test_audio_that_looks_like_the_last_records_bin_is_not_taken_for_it(tmp_path: Path) -> None:
    # Replay first tries the split the previous record's audio length gives; audio that ends
    # in such a bin must not fool it (what precedes would not decode as exactly one map).
    rng = random.Random(3)
    fake = b"\xc4\x05abcde"  # a whole bin of 5 bytes, as the 7 bytes of the real audio
    items: list[Item] = [
        (RecordType.CHUNK, service_meta(n, "u", "s", n, rng), b"12345") for n in range(4)
    ]
    items.append((RecordType.CHUNK, service_meta(4, "u", "s", 4, rng), fake))
    items.append((RecordType.CHUNK, service_meta(5, "u", "s", 5, rng), b"12345"))
    write_records(tmp_path, items)
    _, full = replay_all(tmp_path)
    sizes: list[tuple[int, int]] = []

    def on_route(route: Any, segment: str, offset: int, meta_length: int, audio: int) -> None:
        sizes.append((route.seq, audio))

    replay(tmp_path, lambda r: None, routes=True, on_route=on_route)
    assert sizes == [(n, 7 if n == 4 else 5) for n in range(6)]
    assert [r.blob.length for r in full if r.blob] == [5, 5, 5, 5, 7, 5]
