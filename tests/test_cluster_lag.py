"""A replica that lags: reads through it must answer, never 404 for a chunk that exists.

One ``nats-server`` of three is stopped (SIGSTOP) while another node uploads (the other two
keep quorum), then continued (SIGCONT), and a node connected to that server alone at once
reads the metadata and audio of what was uploaded, with the ``Trio-Audio-Position`` of the
last upload (so it has indexed them). Its direct gets are answered by the continued server's replica
before it has caught up: "no message" for records that exist. Real ``nats-server``
processes (``tests/cluster.py``)."""

from __future__ import annotations

import hashlib
import re
import signal
from pathlib import Path

import httpx
import trio

from trio_audio.cluster.bridge import Unavailable
from trio_audio.cluster.connect import open_nats
from trio_audio.cluster.dev import LocalCluster, Node
from trio_audio.cluster.finalize import FINALIZE_WAIT_S

from .cluster import cluster_store
from .speech import SENTENCE, pieces, speak, to_wav
from .test_cluster import (
    NodeMaker,
    audio,
    eventually,
    grammar_args,
    post,
    session_listing,
    wait_for,
)

LAGGED = "a replica lagged on record"
TOOK = re.compile(r"took transcription partition")
POSITION = "Trio-Audio-Position"


async def lead_elsewhere(cluster: LocalCluster, stream: str, server: str) -> None:
    """Until *server* does not lead *stream*: its replica is a follower, one that can lag."""
    async with open_nats(cluster.urls, name="test") as nats:
        with trio.fail_after(30):
            while True:
                try:  # (a cluster just formed, on a busy machine, may not answer at once)
                    if (await nats.stream_state(stream)).leader != server:
                        return
                    await nats.request(f"$JS.API.STREAM.LEADER.STEPDOWN.{stream}", b"", 5)
                except Unavailable:
                    pass
                await trio.sleep(0.5)


async def first_write(client: httpx.AsyncClient, session_id: str) -> None:
    """A chunk stored in *session_id*. A first write on a cluster just formed can be answered
    503 with Retry-After; a client retries it, and so does this setup step (for 20 s)."""
    first = await eventually(lambda: post(client, audio(0), session_id=session_id), 20, 503)
    assert first.status_code == 201, first.text


async def test_reads_through_a_lagging_replica_answer_with_the_audio(
    own_cluster: LocalCluster, service_nodes: NodeMaker
) -> None:
    store = cluster_store(own_cluster)
    slow, *others = own_cluster.nodes  # the writer is connected to the others only
    assert slow.process is not None
    writer = service_nodes({**store, "store": ",".join(n.url for n in others)})
    await writer.wait_ready()
    async with httpx.AsyncClient(base_url=writer.url, timeout=30) as client:
        await first_write(client, "lag")
        await lead_elsewhere(own_cluster, store["store_stream"], slow.name)
        lagged = checked = 0
        with trio.fail_after(200):
            # A reader whose follower is served from the slow server itself (its consumer
            # placed there) never learns of a record before that replica has it: another
            # reader is started then.
            readers = 0
            while readers < 6:
                readers += 1
                reader = service_nodes({**store, "store": slow.url}, "--store-timeout-s", "5")
                await reader.wait_ready()
                async with httpx.AsyncClient(base_url=reader.url, timeout=60) as far:
                    for attempt in range(8):
                        written = await write_while_stopped(client, slow, 30, 100 * attempt)
                        checked += await read_at_once(far, written)
                        if LAGGED in reader.log():
                            break
                if LAGGED in reader.log():
                    lagged = reader.log().count(LAGGED)
                    break
                reader.kill()
        # The replica did lag on some of these reads (else this test proved nothing).
        assert lagged, f"no read met a lagging replica in {checked} reads ({readers} readers)"


async def write_while_stopped(
    client: httpx.AsyncClient, server: Node, count: int, first: int
) -> tuple[list[tuple[str, bytes]], dict[str, str]]:
    """Upload up to *count* chunks while *server* is stopped; (their ids and bytes, the last
    one's position header). A 503 ends it early: the stopped server led the meta group (the
    others elect another meanwhile)."""
    assert server.process is not None
    written: list[tuple[str, bytes]] = []
    position: dict[str, str] = {}
    server.process.send_signal(signal.SIGSTOP)
    try:
        for n in range(first, first + count):
            data = audio(n)
            stored = await post(client, data, session_id="lag")
            if stored.status_code == 503:
                break
            assert stored.status_code == 201, stored.text
            written.append((stored.json()["chunk_id"], data))
            position = {POSITION: stored.headers[POSITION]}
    finally:
        server.process.send_signal(signal.SIGCONT)
    return written, position


async def read_at_once(
    far: httpx.AsyncClient, written: tuple[list[tuple[str, bytes]], dict[str, str]]
) -> int:
    """Read every chunk of *written* at once through *far*, its metadata and its audio, each
    with the position header; each must answer with its checksum and exact bytes (a 503 is
    asked again, a 404 fails). How many."""
    chunks, position = written

    async def get(path: str) -> httpx.Response:
        while True:  # 503: the slow server's link was frozen a moment ago; again
            got = await far.get(path, headers=position)
            if got.status_code != 503:
                return got
            await trio.sleep(0.02)

    async def read(chunk_id: str, data: bytes) -> None:
        got, meta = await get(f"/chunks/{chunk_id}/audio"), await get(f"/chunks/{chunk_id}")
        assert meta.status_code == 200, (chunk_id, meta.text)
        assert meta.json()["checksum"] == hashlib.sha256(data).hexdigest()
        assert got.status_code == 200, (chunk_id, got.text)
        assert got.content == data

    async with trio.open_nursery() as nursery:
        for chunk_id, data in reversed(chunks):
            nursery.start_soon(read, chunk_id, data)
    return len(chunks)


async def test_transcripts_of_chunks_a_lagging_replica_lacks_do_not_fail(
    own_cluster: LocalCluster, service_nodes: NodeMaker, tmp_path: Path
) -> None:
    store = cluster_store(own_cluster)
    stream = store["store_stream"]
    slow, *others = own_cluster.nodes  # the node is connected to the others only
    assert slow.process is not None
    elsewhere = ",".join(n.url for n in others)
    node = service_nodes({**store, "store": elsewhere}, "--asr-engine", "none",
                         "--asr-transcribe", "on")  # fmt: skip
    await node.wait_ready()
    speech = list(pieces(speak(SENTENCE, lead_s=0.5, tail_s=0.1), 0.5))
    # ``POST .../end`` waits up to a minute for the session's holder (FINALIZE_WAIT_S).
    async with httpx.AsyncClient(base_url=node.url, timeout=90) as client:
        await first_write(client, "first")
        await lead_elsewhere(own_cluster, stream, slow.name)
        # The one transcriber is connected to the slow server alone: its audio reads are
        # direct gets its replica answers. Its reads come later than a reader's (the work
        # is sourced into the work stream first), so they meet the replica still behind in
        # some runs only (with the leader fallback removed, one of two runs ended a
        # transcript "failed"); the read test above meets the lag in every run.
        worker = service_nodes({**store, "store": slow.url}, *grammar_args(tmp_path),
                               worker=True)  # fmt: skip
        await worker.wait_ready()
        await wait_for(lambda: len(TOOK.findall(worker.log())) >= 8, 30)
        with trio.fail_after(200):
            for attempt in range(4):
                session = f"talk{attempt}"
                slow.process.send_signal(signal.SIGSTOP)
                try:
                    for piece in speech:
                        stored = await post(client, to_wav(piece), session_id=session)
                        assert stored.status_code == 201, stored.text
                finally:
                    slow.process.send_signal(signal.SIGCONT)
                asked = trio.current_time()
                ended = await client.post(f"/sessions/alice/{session}/end")
                assert ended.status_code == 200, ended.text
                # The holder ends the session once its last chunk has reached it (its work
                # lags this node's): ended before that, the rest waited for the session to
                # go idle, and the end for all of FINALIZE_WAIT_S.
                assert trio.current_time() - asked < FINALIZE_WAIT_S / 2
                listing = await session_listing(client, session, 60)
                transcripts = [c["transcript"] for c in listing["chunks"]]
                assert all(t["status"] == "done" for t in transcripts), transcripts
                assert ended.json()["transcript"]["text"] == SENTENCE
