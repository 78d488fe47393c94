"""The cluster follower's position: what it has applied, the records it is not sent included.

No NATS here: the follower is given the messages its consumer would deliver (the chunks,
updates and tombstones of the stream, never the work references).
"""

from __future__ import annotations

from trio_audio.cluster.bridge import Message
from trio_audio.cluster.follow import LogFollower
from trio_audio.cluster.stream import META, NODE, REFERENCED, Shared, Stream, to_header
from trio_audio.config import Config
from trio_audio.metrics import Metrics
from trio_audio.store.index import Index
from trio_audio.store.reads import MetaCache


def chunk(seq: int, stream_seq: int, *, referenced: bool) -> Message:
    """Chunk *seq* of session u/s as the follower gets it, at *stream_seq*."""
    meta = {"chunk_id": f"c{seq}", "user_id": "u", "session_id": "s", "seq": seq,
            "audio": {"duration_ms": 10.0}, "transcript": {"status": "disabled"}}  # fmt: skip
    headers = {META: to_header(meta), NODE: "another-node"}
    if referenced:
        headers[REFERENCED] = "1"
    return Message(f"AUDIO.u.s.chunk.{seq}", stream_seq, headers, 3)


async def test_a_chunk_covers_its_reference_only_when_it_says_one_follows() -> None:
    index = Index()
    shared = Shared(Config(), Metrics(), Stream("AUDIO", "this-node"), index)
    follower = LogFollower(shared, MetaCache(1 << 20), reads=None)  # type: ignore[arg-type]
    # A chunk and its reference (not delivered): the position covers both.
    await follower._apply(chunk(0, 1, referenced=True))
    assert (follower.applied, follower.delivered) == (2, 1)
    # A chunk from before references: nothing follows it, it covers only itself, and the
    # record after it is applied when it comes (not taken for a reference).
    await follower._apply(chunk(1, 3, referenced=False))
    assert (follower.applied, follower.delivered) == (3, 3)
    await follower._apply(chunk(2, 4, referenced=True))
    assert (follower.applied, follower.delivered) == (5, 4)
    # A record delivered again (a consumer that restarted) changes nothing.
    await follower._apply(chunk(1, 3, referenced=False))
    assert (follower.applied, follower.delivered) == (5, 4)
    assert sorted(c for _, c in index.chunks_after("u", "s", None)) == ["c0", "c1", "c2"]
