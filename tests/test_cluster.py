"""The service on a JetStream cluster: several nodes, one log, and faults with real processes.

Every test here runs real ``nats-server`` processes (``tests/cluster.py``); ``nox -s
tests_cluster`` runs them, and the end-to-end HTTP and WebSocket suites on the cluster.
Waits are for readiness or for an answer, under ``fail_after``; never a fixed sleep.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import trio
from trio_websocket import WebSocketConnection

from trio_audio.client import Options, Streamer
from trio_audio.cluster.bridge import MessageNotFound
from trio_audio.cluster.connect import Nats, open_nats
from trio_audio.cluster.dev import LocalCluster
from trio_audio.cluster.partitions import Names, partition
from trio_audio.cluster.stream import token

from .audio_samples import pcm_s16le, wav
from .cluster import ServiceNode, cluster_store, node_id
from .conftest import Server, StartServer, upload_params
from .speech import OTHER_SENTENCE, SENTENCE, grammar_file, pieces, speak, to_wav
from .test_ws import connect, receive_type, start

NodeMaker = Callable[..., ServiceNode]


async def eventually(
    request: Callable[[], Awaitable[httpx.Response]], seconds: float, missing: int = 404
) -> httpx.Response:
    """The first response to *request* whose status is not *missing*, tried for *seconds*."""
    with trio.fail_after(seconds):
        for _ in iter(int, 1):
            try:
                response = await request()
            except httpx.TransportError:
                await trio.sleep(0.05)
                continue
            if response.status_code != missing:
                return response
            await trio.sleep(0.02)
    raise AssertionError("unreachable")


async def wait_for(ready: Callable[[], bool], seconds: float) -> None:
    """Return once *ready()* holds (checked every 10 ms); fail after *seconds*."""
    with trio.fail_after(seconds):
        for _ in iter(int, 1):
            if ready():
                return
            await trio.sleep(0.01)


def audio(n: int) -> bytes:
    """A distinct small WAV per n."""
    return wav(200.0 + 7 * n, seconds=0.1, rate=16000)


async def post(client: httpx.AsyncClient, data: bytes, **params: Any) -> httpx.Response:
    return await client.post(
        "/upload", params=upload_params(**params), content=data,
        headers={"Content-Type": "audio/wav"},
    )  # fmt: skip


async def upload_speech(client: httpx.AsyncClient, pieces_: list[Any]) -> list[dict[str, Any]]:
    """Upload *pieces_* in order as session ``talk``; each stored chunk's JSON."""
    chunks = []
    for piece in pieces_:
        response = await client.post(
            "/upload", params=upload_params(session_id="talk"), content=to_wav(piece),
            headers={"Content-Type": "audio/wav"},
        )  # fmt: skip
        assert response.status_code == 201, response.text
        chunks.append(response.json())
    return chunks


async def two_nodes(
    start_server: StartServer, cluster: LocalCluster, **overrides: Any
) -> tuple[dict[str, Any], Server, Server]:
    """Two service nodes on *cluster*, on a stream of their own, each with its data dir."""
    store = cluster_store(cluster)
    a = await start_server(**store, **overrides)
    b = await start_server(**store, **overrides, data_dir=a.config.data_dir.parent / "b")
    return store, a, b


async def lease_holder(nats: Nats, names: Names, key: str) -> str:
    """The worker holding lease *key*, once one does (within 30 s)."""
    with trio.fail_after(30):
        for _ in iter(int, 1):
            held = await nats.kv_get(names.leases, key)
            if held is not None:
                return str(held[0].decode())
            await trio.sleep(0.05)
    raise AssertionError("unreachable")


async def test_upload_to_one_node_read_from_another(
    start_server: StartServer, nats_cluster: LocalCluster
) -> None:
    _, a, b = await two_nodes(start_server, nats_cluster)
    data = wav(440.0, seconds=0.5, rate=16000)
    async with a.client() as ca, b.client() as cb:
        created = await post(ca, data, seq="0")
        assert created.status_code == 201, created.text
        chunk = created.json()
        # Read-your-writes on the node that acknowledged: at once.
        assert (await ca.get(f"/chunks/{chunk['chunk_id']}")).json() == chunk
        # On another node: once its follower has it (milliseconds).
        got = await eventually(lambda: cb.get(f"/chunks/{chunk['chunk_id']}"), 5)
        assert got.json() == chunk
        assert (await cb.get(f"/chunks/{chunk['chunk_id']}/audio")).content == data
        # The same (session, seq) sent to both nodes at once is stored once.
        twice = audio(1)
        answers: list[httpx.Response] = []

        async def send(client: httpx.AsyncClient) -> None:
            answers.append(await post(client, twice, seq="1"))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send, ca)
            nursery.start_soon(send, cb)
        assert sorted(r.status_code for r in answers) == [200, 201], [r.text for r in answers]
        assert answers[0].json()["chunk_id"] == answers[1].json()["chunk_id"]
        # Other bytes for a stored seq: 409 on any node.
        assert (await post(cb, audio(2), seq="1")).status_code == 409
        sessions = (await cb.get("/sessions/alice")).json()
        assert sessions == (await ca.get("/sessions/alice")).json()


async def test_a_multipart_upload_is_stored_whole_or_not_at_all_across_nodes(
    start_server: StartServer, nats_cluster: LocalCluster
) -> None:
    store, a, b = await two_nodes(start_server, nats_cluster)
    stream = store["store_stream"]
    subject = f"{stream}.{token('alice')}.{token('mp')}.chunk"

    def files(*ns: int) -> list[tuple[str, tuple[str, bytes, str]]]:
        return [("file", (f"{n}.wav", audio(n), "audio/wav")) for n in ns]

    async with a.client() as ca, b.client() as cb, open_nats(nats_cluster.urls, name="t") as nats:
        # A node that died halfway through sending a multipart upload: the servers drop its
        # uncommitted batch, so the seqs it was taking are free (not held for ever).
        headers = {"Nats-Batch-Id": "died-halfway", "Nats-Batch-Sequence": "1",
                   "Nats-Expected-Last-Subject-Sequence": "0"}  # fmt: skip
        await nats.publish_core(f"{subject}.0", audio(7), headers)
        response = await cb.post("/upload", data=upload_params(session_id="mp"), files=files(0, 1))
        assert response.status_code == 201, response.text
        assert [c["seq"] for c in response.json()["chunks"]] == [0, 1]
        # Seq 3 taken meanwhile with other bytes: a batch of 2, 3, 4 is refused whole.
        assert (await post(ca, audio(99), session_id="mp", seq="3")).status_code == 201
        response = await cb.post(
            "/upload", data={**upload_params(session_id="mp"), "seq": "2"}, files=files(2, 3, 4)
        )
        assert response.status_code == 409, response.text
        for client in (ca, cb):
            listing = await eventually(lambda c=client: c.get("/sessions/alice"), 5)
            chunks = listing.json()["sessions"][0]["chunks"]
            assert [c["seq"] for c in chunks] == [0, 1, 3]
        state = await nats.stream_state(stream)
        # Nothing of either batch but what was committed: each chunk and its work reference.
        assert state.messages == 6


async def test_a_watcher_on_one_node_sees_uploads_to_another(
    start_server: StartServer, nats_cluster: LocalCluster
) -> None:
    _, a, b = await two_nodes(start_server, nats_cluster)
    async with connect(a.running.ws_url) as watcher, b.client() as cb:
        await start(watcher, "shared")
        for n in range(3):
            sent = trio.current_time()
            response = await post(cb, audio(n), session_id="shared")
            assert response.status_code == 201
            with trio.fail_after(1):  # within a second of B's answer
                seen = await receive_type(watcher, "metadata")
            assert seen["chunk_id"] == response.json()["chunk_id"]
            assert trio.current_time() - sent < 5


async def test_a_sessions_transcripts_reach_the_log_and_every_watcher_in_order(
    start_server: StartServer, nats_cluster: LocalCluster
) -> None:
    """The transcripts of an utterance's chunks are stored together (``update_many``: one
    batch of writes, in flight at once); they land in the stream in the chunks' order, so
    the watchers on every node get the session's words in order."""
    store, a, b = await two_nodes(start_server, nats_cluster, asr_transcribe="on")
    async with a.client() as ca, connect(b.running.ws_url) as watcher:
        await start(watcher, "talk")
        ids = []
        for n in range(24):
            response = await post(ca, audio(n), session_id="talk", seq=str(n))
            assert response.status_code == 201, response.text
            assert response.json()["transcript"]["status"] == "pending"  # no engine here
            ids.append(response.json()["chunk_id"])
        texts = [f"word{n}" if n % 5 else f"café {n}" for n in range(len(ids))]  # headers: ASCII
        transcripts = [{"status": "done", "text": t, "words": []} for t in texts]
        answers = await a.running.store.update_many(
            [(chunk_id, {"transcript": t}) for chunk_id, t in zip(ids, transcripts, strict=True)]
        )
        assert [answer["transcript"]["text"] for answer in answers] == texts  # type: ignore[index]
        got = []
        with trio.fail_after(10):
            while len(got) < len(ids):
                message = await receive_type(watcher, "transcript", skip=("metadata",))
                got.append((message["chunk_id"], message["text"]))
    assert got == list(zip(ids, texts, strict=True))
    subjects = await stream_subjects(nats_cluster.urls, store["store_stream"])
    assert [s.rsplit(".", 1)[1] for s in subjects if ".update." in s] == ids


async def test_deletes_reach_every_node_and_leave_the_stream(
    start_server: StartServer, nats_cluster: LocalCluster
) -> None:
    store, a, b = await two_nodes(start_server, nats_cluster)
    async with a.client() as ca, b.client() as cb:
        async with connect(a.running.ws_url) as watcher:  # (its own 30 s limit)
            await start(watcher, "s1")  # a watcher of the session, on the other node
            ids = []
            for n in range(4):
                ids.append((await post(ca, audio(n), session_id="s1")).json()["chunk_id"])
            other = (await post(ca, audio(9), session_id="s2")).json()["chunk_id"]
            await eventually(lambda: cb.get(f"/chunks/{other}"), 5)
            await eventually(lambda: cb.get(f"/chunks/{ids[-1]}"), 5)
            assert (await cb.delete(f"/chunks/{ids[0]}")).status_code in (200, 204)
            # Gone at once on the node that answered, and soon on the other.
            assert (await cb.get(f"/chunks/{ids[0]}")).status_code == 404
            gone = await eventually(lambda: ca.get(f"/chunks/{ids[0]}"), 5, missing=200)
            assert gone.status_code == 404
            with trio.fail_after(10):  # deleted on node b: node a's watcher is told
                told = await receive_type(watcher, "deleted", skip=("metadata",))
            assert told["chunk_ids"] == [ids[0]] and told["seqs"] == [0]
            deleted = await cb.delete("/sessions/alice", params={"session_id": "s1"})
            assert deleted.status_code in (200, 204)
            gone = await eventually(lambda: ca.get(f"/chunks/{ids[1]}"), 5, missing=200)
            assert gone.status_code == 404
            with trio.fail_after(10):
                told = await receive_type(watcher, "deleted", skip=("metadata",))
            assert sorted(told["chunk_ids"]) == sorted(ids[1:])
            assert sorted(told["seqs"]) == [1, 2, 3]
        # A node started now replays the stream: the deleted chunks are not in it.
        c = await start_server(**store, data_dir=a.config.data_dir.parent / "c")
        async with c.client() as cc:
            assert (await cc.get(f"/chunks/{other}")).status_code == 200
            for chunk_id in ids:
                assert (await cc.get(f"/chunks/{chunk_id}")).status_code == 404
        replayed = c.running.store.stats().replayed_records
        assert replayed is not None and replayed > 0  # it rebuilt its index from the stream
        # The purge of a user removes every session on every node.
        purge_user = c.running.store.purge_user  # type: ignore[attr-defined]
        assert await purge_user("alice") == [other]
        gone = await eventually(lambda: ca.get(f"/chunks/{other}"), 5, missing=200)
        assert gone.status_code == 404
    # The audio is gone from the stream too: only the three tombstones are left in it.
    async with open_nats(nats_cluster.urls, name="test") as nats:
        with trio.fail_after(10):
            for _ in iter(int, 1):
                state = await nats.stream_state(store["store_stream"])
                if state.messages == 3:
                    break
                await trio.sleep(0.05)


async def upload_until(
    urls: list[str], stop: trio.Event, acked: dict[str, bytes], counter: list[int], lane: int
) -> None:
    """Upload distinct chunks round-robin over *urls* until *stop*; record each acked one.

    503s and broken connections are retried with the same seq (idempotent)."""
    async with httpx.AsyncClient(timeout=30) as client:
        seq = 0
        while not stop.is_set():
            data = audio(1000 * lane + seq)
            url = urls[(seq + lane) % len(urls)]
            try:
                response = await client.post(
                    f"{url}/upload", content=data, headers={"Content-Type": "audio/wav"},
                    params=upload_params(session_id=f"lane{lane}", seq=str(seq)),
                )  # fmt: skip
            except httpx.TransportError:
                await trio.sleep(0.1)
                continue
            if response.status_code == 503:
                assert response.headers.get("Retry-After"), response.text
                await trio.sleep(0.1)
                continue
            assert response.status_code in (200, 201), response.text
            acked[response.json()["chunk_id"]] = data
            counter[0] += 1
            seq += 1


async def test_killing_the_stream_leader_during_uploads_loses_no_acknowledged_chunk(
    own_cluster: LocalCluster, service_nodes: NodeMaker
) -> None:
    store = cluster_store(own_cluster)
    nodes = [service_nodes(store), service_nodes(store)]
    for node in nodes:
        await node.wait_ready()
    urls = [node.url for node in nodes]
    acked: dict[str, bytes] = {}
    counter = [0]
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        for lane in range(4):
            nursery.start_soon(upload_until, urls, stop, acked, counter, lane)
        await wait_for(lambda: counter[0] >= 40, 60)
        async with open_nats(own_cluster.urls, name="test") as nats:
            leader = (await nats.stream_state(store["store_stream"])).leader
        names = [node.name for node in own_cluster.nodes]
        assert leader in names
        own_cluster.kill(names.index(leader))
        before = counter[0]
        await wait_for(lambda: counter[0] >= before + 80, 90)  # on with 2 of 3 servers
        stop.set()
    async with httpx.AsyncClient(timeout=30) as client:
        for url in urls:
            for chunk_id, data in acked.items():
                path = f"{url}/chunks/{chunk_id}/audio"
                got = await eventually(lambda path=path: client.get(path), 30)  # type: ignore[misc]
                assert got.status_code == 200, got.text
                assert hashlib.sha256(got.content).digest() == hashlib.sha256(data).digest()


async def test_killing_a_service_node_mid_stream_resumes_on_another(
    nats_cluster: LocalCluster, service_nodes: NodeMaker
) -> None:
    store = cluster_store(nats_cluster)
    a, b = service_nodes(store), service_nodes(store)
    await a.wait_ready()
    await b.wait_ready()
    frames = [pcm_s16le(300.0 + 5 * n, seconds=0.05, rate=16000) for n in range(60)]
    options = Options(url=a.ws_url, user_id="alice", session_id="live", chunk_ms=50,
                      realtime=True, json=True, retries=20)  # fmt: skip

    class Out:  # the client's printed messages
        def write(self, text: str) -> None:
            for line in text.split("\n"):
                if not line.strip():
                    continue
                message = json.loads(line)
                if message.get("type") == "ack":
                    acks.append(message["seq"])

        def flush(self) -> None:
            pass

    acks: list[int] = []
    streamer = Streamer(options, 16000, 1, iter(frames), Out())  # type: ignore[arg-type]
    summary: dict[str, Any] = {}

    async def run() -> None:
        summary.update(await streamer.run())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run)
        await wait_for(lambda: len(acks) >= 15, 30)
        options.url = b.ws_url  # what a load balancer does once A stops answering
        a.kill()
    assert summary["chunk_count"] == len(frames)
    async with httpx.AsyncClient(base_url=b.url, timeout=30) as client:
        page = (await client.get("/sessions/alice", params={"limit": 1000})).json()
        chunks = [c for s in page["sessions"] for c in s["chunks"]]
        assert [c["seq"] for c in chunks] == list(range(len(frames)))
        for chunk in chunks:
            got = await client.get(f"/chunks/{chunk['chunk_id']}/audio")
            assert got.status_code == 200
            body = got.content
            assert frames[chunk["seq"]] in body  # the PCM, in whatever container it came


async def test_cluster_down_uploads_get_503_reads_work_and_it_recovers(
    own_cluster: LocalCluster, service_nodes: NodeMaker
) -> None:
    store = cluster_store(own_cluster)
    node = service_nodes(store, "--store-timeout-s", "2")
    other = service_nodes(store, "--store-timeout-s", "2")
    await node.wait_ready()
    await other.wait_ready()
    async with httpx.AsyncClient(base_url=node.url, timeout=30) as client:
        # A stream just made may take longer than the 2 s store timeout to take its first
        # write (its leader still settling): a 503 then, and the write is tried again.
        first = await eventually(lambda: post(client, audio(0), seq="0"), 30, missing=503)
        assert first.status_code == 201, first.text
        stored = first.json()
        for i in range(3):
            own_cluster.kill(i)
        with trio.fail_after(15):  # an answer, never a hang
            refused = await post(client, audio(1), seq="1")
        assert refused.status_code == 503, refused.text
        assert refused.json()["code"] == "unavailable"
        assert int(refused.headers["Retry-After"]) >= 1
        # Reads of the index keep working.
        assert (await client.get(f"/chunks/{stored['chunk_id']}")).json() == stored
        assert (await client.get("/sessions/alice")).status_code == 200
        for i in range(3):
            own_cluster.launch(i)
        recovered = await eventually(lambda: post(client, audio(1), seq="1"), 90, missing=503)
        assert recovered.status_code in (200, 201), recovered.text
        chunk_id = recovered.json()["chunk_id"]
    async with httpx.AsyncClient(base_url=other.url, timeout=30) as client:
        seen = await eventually(lambda: client.get(f"/chunks/{chunk_id}"), 30)
        assert seen.status_code == 200


async def test_restarting_every_node_rebuilds_state_from_the_stream(
    own_cluster: LocalCluster, service_nodes: NodeMaker
) -> None:
    store = cluster_store(own_cluster)
    a, b = service_nodes(store), service_nodes(store)
    await a.wait_ready()
    await b.wait_ready()
    acked: dict[str, dict[str, Any]] = {}
    async with httpx.AsyncClient(timeout=30) as client:
        for n in range(12):
            url = (a.url, b.url)[n % 2]
            response = await client.post(
                f"{url}/upload", content=audio(n), headers={"Content-Type": "audio/wav"},
                params=upload_params(session_id=f"s{n % 3}"),
            )  # fmt: skip
            assert response.status_code == 201
            acked[response.json()["chunk_id"]] = response.json()
        for chunk_id in acked:  # A has B's last chunks too (it follows B's writes)
            path = f"{a.url}/chunks/{chunk_id}"
            await eventually(lambda path=path: client.get(path), 10)  # type: ignore[misc]
        listing = (await client.get(f"{a.url}/sessions/alice")).json()
    a.kill()
    b.kill()
    for i in range(3):
        own_cluster.kill(i)
    for i in range(3):
        own_cluster.launch(i)
    c = service_nodes(store)
    await c.wait_ready(90)
    async with httpx.AsyncClient(base_url=c.url, timeout=30) as client:
        assert (await client.get("/sessions/alice")).json() == listing
        for n, (chunk_id, chunk) in enumerate(acked.items()):
            assert (await client.get(f"/chunks/{chunk_id}")).json() == chunk
            assert (await client.get(f"/chunks/{chunk_id}/audio")).content == audio(n)


async def final_text(ws: WebSocketConnection, chunks: int, seconds: float) -> str:
    """The words of the final transcripts a watcher gets for *chunks* chunks (one each, once
    stored), other messages skipped."""
    texts: list[str] = []
    with trio.fail_after(seconds):
        while len(texts) < chunks:
            message = json.loads(await ws.get_message())
            if message["type"] == "transcript" and message["is_final"]:
                texts.append(message["text"])
    return " ".join(t for t in texts if t)


async def session_listing(client: httpx.AsyncClient, session_id: str, seconds: float) -> Any:
    """The session's listing once no chunk of it is ``pending`` any more."""
    with trio.fail_after(seconds):
        for _ in iter(int, 1):
            page = (await client.get("/sessions/alice", params={"session_id": session_id})).json()
            sessions = page["sessions"]
            if sessions and all(
                c["transcript"]["status"] != "pending" for c in sessions[0]["chunks"]
            ):
                return sessions[0]
            await trio.sleep(0.05)
    raise AssertionError("unreachable")


async def stream_subjects(urls: list[str], stream: str) -> list[str]:
    """The subjects of the messages the stream holds, in its order."""
    subjects = []
    async with open_nats(urls, name="test") as nats:
        state = await nats.stream_state(stream)
        for seq in range(state.first_seq, state.last_seq + 1):
            with contextlib.suppress(MessageNotFound):
                subjects.append((await nats.get(stream, seq)).subject)
    return subjects


async def count_subjects(urls: list[str], stream: str) -> dict[str, int]:
    """How many messages of each kind (chunk, update, tombstone) the stream holds."""
    counts: dict[str, int] = {}
    for subject in await stream_subjects(urls, stream):
        kind = subject.split(".")[3]
        counts[kind] = counts.get(kind, 0) + 1
    return counts


def grammar_args(tmp_path: Path) -> list[str]:
    return ["--asr-engine", "pocketsphinx", "--asr-grammar", str(grammar_file(tmp_path)),
            "--asr-workers", "1", "--asr-lease-s", "2"]  # fmt: skip


async def test_sessions_go_to_the_partition_the_servers_compute(
    nats_cluster: LocalCluster, service_nodes: NodeMaker
) -> None:
    store = cluster_store(nats_cluster)
    stream = store["store_stream"]
    names = Names(stream)
    sessions = [("alice", "talk"), ("bob", "s.1"), ("u-2", "x_y"), ("a.b.c", "d"),
                *((f"user{n}", f"session{n * 7}") for n in range(12))]  # fmt: skip
    got: dict[tuple[str, str], int] = {}
    async with open_nats(nats_cluster.urls, name="test") as nats:
        await nats.wait_meta_leader(60)  # the session's cluster may be starting still
        await nats.ensure_stream(stream, [f"{stream}.>"], 3, 120)
        src, dest = names.transform(8)
        await nats.ensure_work_stream(names.work, stream, src, dest, 3)
        for user_id, session_id in sessions:
            subject = f"{stream}.{token(user_id)}.{token(session_id)}.work.0"
            await nats.publish(subject, b"", {}, 5)
        puller = await nats.pull(names.work, "check", f"{names.work}.>", 30, 1000)
        with trio.fail_after(20):
            while len(got) < len(sessions):
                for work in await puller.take(100, 1):
                    _, p, user, session, _ = work.subject.split(".")
                    got[(user, session)] = int(p)
    want = {(token(u), token(s)): partition(u, s, 8) for u, s in sessions}
    assert got == want
    # A worker asking another partition count refuses to start, and says why.
    worker = service_nodes(store, "--asr-engine", "pocketsphinx", "--asr-partitions", "4",
                           worker=True)  # fmt: skip
    assert worker.proc is not None
    with trio.fail_after(60):
        code = await trio.to_thread.run_sync(worker.proc.wait)
    assert code == 3
    assert "every node needs the same --asr-partitions" in worker.log_path.read_text()


async def test_two_nodes_transcribing_write_each_transcript_once(
    start_server: StartServer, nats_cluster: LocalCluster, tmp_path: Path
) -> None:
    speech = {"asr_engine": "pocketsphinx", "asr_grammar": str(grammar_file(tmp_path)),
              "asr_workers": 1}  # fmt: skip
    store, a, b = await two_nodes(start_server, nats_cluster, **speech)
    audio = speak(SENTENCE, lead_s=0.5)
    pieces_ = list(pieces(audio, 0.5))
    async with (
        a.client() as ca, b.client() as cb,
        connect(a.running.ws_url) as wa, connect(b.running.ws_url) as wb,
    ):  # fmt: skip
        for watcher in (wa, wb):
            await start(watcher, "talk")
        await upload_speech(ca, pieces_)
        # One node decodes the session; the watchers on both see its words once stored.
        for watcher in (wa, wb):
            assert await final_text(watcher, len(pieces_), 60) == SENTENCE
        listings = [await session_listing(client, "talk", 60) for client in (ca, cb)]
    assert listings[0] == listings[1]
    assert listings[0]["transcript"] == {**listings[0]["transcript"], "status": "done",
                                         "text": SENTENCE}  # fmt: skip
    # One chunk record and one transcript per chunk in the log, though two nodes can decode.
    counts = await count_subjects(nats_cluster.urls, store["store_stream"])
    assert counts == {"chunk": len(pieces_), "update": len(pieces_), "work": len(pieces_)}
    # ... because one node held the session's partition: the other's engine stored nothing.
    done = [s.running.transcriber.counts["done"] for s in (a, b) if s.running.transcriber]
    assert sorted(done) == [0, len(pieces_)]


async def test_killing_the_worker_of_a_session_hands_it_over(
    nats_cluster: LocalCluster, service_nodes: NodeMaker, tmp_path: Path
) -> None:
    store = cluster_store(nats_cluster)
    a = service_nodes(store, *grammar_args(tmp_path))
    b = service_nodes(store, *grammar_args(tmp_path))
    await a.wait_ready()
    await b.wait_ready()
    first = list(pieces(speak(SENTENCE, lead_s=0.5), 0.5))
    second = list(pieces(speak(OTHER_SENTENCE, lead_s=0.5), 0.5))
    names = Names(store["store_stream"])
    key = f"p.{partition('alice', 'talk', 8)}"
    async with (
        httpx.AsyncClient(timeout=30) as client,
        open_nats(nats_cluster.urls, name="t") as nats,
    ):

        async def upload(node: ServiceNode, n: int, piece: Any) -> None:
            response = await client.post(
                f"{node.url}/upload", content=to_wav(piece),
                params=upload_params(session_id="talk", seq=str(n)),
                headers={"Content-Type": "audio/wav"},
            )  # fmt: skip
            assert response.status_code == 201, response.text

        for n, piece in enumerate(first):
            await upload(a, n, piece)
        # Mid-stream: once the owner has stored some of the session's transcripts, it dies.
        with trio.fail_after(60):
            for _ in iter(int, 1):
                page = await client.get(f"{a.url}/sessions/alice")
                chunks = page.json()["sessions"][0]["chunks"]
                done_before = {
                    c["chunk_id"]: c for c in chunks if c["transcript"]["status"] == "done"
                }
                if done_before:
                    break
                await trio.sleep(0.05)
        # The holder has the session's chunks that are not done yet.
        owner_id = await lease_holder(nats, names, key)
        owner, other = (a, b) if owner_id in node_id(a) else (b, a)
        assert owner_id in node_id(owner)
        owner.kill()
        for n, piece in enumerate(second, start=len(first)):
            await upload(other, n, piece)
        # The survivor takes the session over (the dead lease expires in 2 s) and every
        # chunk ends done.
        async with httpx.AsyncClient(base_url=other.url, timeout=30) as survivor:
            listing = await session_listing(survivor, "talk", 60)
        assert await lease_holder(nats, names, key) in node_id(other)
    statuses = [c["transcript"]["status"] for c in listing["chunks"]]
    assert statuses == ["done"] * len(first + second)
    for chunk in listing["chunks"]:  # what the dead worker stored stays as it stored it
        if chunk["chunk_id"] in done_before:
            assert chunk == done_before[chunk["chunk_id"]]
    assert OTHER_SENTENCE in listing["transcript"]["text"]
    # None transcribed twice into the log.
    counts = await count_subjects(nats_cluster.urls, store["store_stream"])
    assert counts == {
        "chunk": len(first + second),
        "update": len(first + second),
        "work": len(first + second),
    }


def node_metrics(node: ServiceNode) -> str:
    return httpx.get(f"{node.url}/metrics", timeout=10).text


async def test_an_asr_worker_alone_transcribes_for_nodes_without_an_engine(
    nats_cluster: LocalCluster, service_nodes: NodeMaker, tmp_path: Path
) -> None:
    store = cluster_store(nats_cluster)
    node = service_nodes(store, "--asr-engine", "none", "--asr-transcribe", "on")
    worker = service_nodes(store, *grammar_args(tmp_path), worker=True)
    await node.wait_ready()
    await worker.wait_ready()
    names = Names(store["store_stream"])
    # No silence after the words: the utterance stays open until the session is ended.
    pieces_ = list(pieces(speak(SENTENCE, lead_s=0.5, tail_s=0.1), 0.5))
    async with (
        httpx.AsyncClient(base_url=node.url, timeout=30) as client,
        connect(node.ws_url) as watcher,
        open_nats(nats_cluster.urls, name="test") as nats,
    ):
        # The worker holds the session's partition.
        await lease_holder(nats, names, f"p.{partition('alice', 'talk', 8)}")
        await start(watcher, "talk")
        for chunk in await upload_speech(client, pieces_):
            assert chunk["transcript"]["status"] == "pending"
        # Ending the session on the node finalizes it on the worker, and answers once the
        # node has the words.
        ended = await client.post("/sessions/alice/talk/end")
        assert ended.status_code == 200, ended.text
        assert ended.json()["transcript"]["status"] == "done"
        assert ended.json()["transcript"]["text"] == SENTENCE
        # The worker's words reached the watcher on the node too (from the node's log).
        assert await final_text(watcher, len(pieces_), 10) == SENTENCE
        listing = await session_listing(client, "talk", 10)
        summary = ended.json()["transcript"]  # the listing's, plus its words
        assert listing["transcript"] == {k: v for k, v in summary.items() if k != "words"}
        assert " ".join(w["word"] for w in summary["words"]) == SENTENCE
        counts = await count_subjects(nats_cluster.urls, store["store_stream"])
        assert counts == {"chunk": len(pieces_), "update": len(pieces_), "work": len(pieces_)}
        # The worker answers the probes on its --port: ready, and how the cluster is.
        probes = re.findall(r"probes \(.*\) on (http://\S+)", worker.log())[-1]
        async with httpx.AsyncClient(base_url=probes, timeout=10) as worker_http:
            assert (await worker_http.get("/healthz")).status_code == 200
            assert (await worker_http.get("/readyz")).json()["status"] == "ready"
            metrics = (await worker_http.get("/metrics")).text
        for family in ("trio_audio_cluster_follower_lag_records", "trio_audio_cluster_stream",
                       "trio_audio_cluster_connection_events", 'stage="publish"'):  # fmt: skip
            assert family in metrics, family
        await wait_for(lambda: "trio_audio_cluster_work_pending{" in node_metrics(node), 10)
        # Stopped with SIGTERM, it exits cleanly and gives its partitions back at once.
        assert await nats.kv_get(names.leases, "p.0") is not None
        await trio.to_thread.run_sync(worker.stop)
        assert worker.proc is not None and worker.proc.returncode == 0
        for p in range(8):
            assert await nats.kv_get(names.leases, f"p.{p}") is None
        # Its own close of the connection is no disconnect to warn about.
        assert "closed the NATS connection" in worker.log()
        assert "WARNING" not in worker.log(), worker.log()[-2000:]


async def test_chunks_caught_by_a_cluster_outage_are_transcribed_once_it_is_back(
    own_cluster: LocalCluster, service_nodes: NodeMaker, tmp_path: Path
) -> None:
    store = cluster_store(own_cluster)
    node = service_nodes(store, "--asr-engine", "none", "--asr-transcribe", "on",
                         "--store-timeout-s", "2")  # fmt: skip
    worker = service_nodes(store, *grammar_args(tmp_path), "--store-timeout-s", "2",
                           "--asr-idle-timeout-s", "2", worker=True)  # fmt: skip
    await node.wait_ready()
    await worker.wait_ready()
    names = Names(store["store_stream"])
    # No silence after the words: the utterance stays open until the 2 s idle timeout, so
    # its chunks are still pending when the cluster goes down.
    pieces_ = list(pieces(speak(SENTENCE, lead_s=0.5, tail_s=0.0), 0.5))
    async with httpx.AsyncClient(base_url=node.url, timeout=30) as client:
        async with open_nats(own_cluster.urls, name="test") as nats:
            # The worker holds the session's partition.
            await lease_holder(nats, names, f"p.{partition('alice', 'talk', 8)}")
        last = (await upload_speech(client, pieces_))[-1]
        stored = (await client.get(f"/chunks/{last['chunk_id']}")).json()
        assert stored["transcript"]["status"] == "pending"
        for i in range(3):  # while the worker decodes: its transcripts cannot be stored
            own_cluster.kill(i)
        with trio.fail_after(30):  # the node sees the outage
            for _ in iter(int, 1):
                if (await client.get("/readyz")).status_code == 503:
                    break
                await trio.sleep(0.1)
        for i in range(3):
            own_cluster.launch(i)
        listing = await session_listing(client, "talk", 120)
    # Every chunk done, none twice. (Its words may be fewer: the chunks decoded again start
    # a new utterance where the stored ones end, which can be mid-word.)
    assert [c["transcript"]["status"] for c in listing["chunks"]] == ["done"] * len(pieces_)
    counts = await count_subjects(own_cluster.urls, store["store_stream"])
    assert counts == {"chunk": len(pieces_), "update": len(pieces_), "work": len(pieces_)}


async def test_readyz_says_503_while_the_cluster_has_no_meta_leader(
    own_cluster: LocalCluster, service_nodes: NodeMaker
) -> None:
    store = cluster_store(own_cluster)
    node = service_nodes(store, "--store-timeout-s", "1")
    await node.wait_ready()
    async with httpx.AsyncClient(base_url=node.url, timeout=30) as client:

        async def readyz(status: int, problem: str = "") -> dict[str, Any]:
            with trio.fail_after(60):
                for _ in iter(int, 1):
                    response = await client.get("/readyz")
                    body = dict(response.json())
                    if response.status_code == status and (body["store_problem"] or "").startswith(
                        problem
                    ):
                        return body
                    await trio.sleep(0.1)
            raise AssertionError("unreachable")

        assert (await readyz(200))["store_problem"] is None
        own_cluster.kill(0)
        own_cluster.kill(1)  # one server of three: no quorum, no meta leader
        # Connected (to the server left), but JetStream has no meta leader to answer.
        body = await readyz(503, "JetStream does not answer (no meta leader?)")
        assert body["status"] == "not_ready"
        assert (await client.get("/healthz")).status_code == 200  # alive, just not ready
        own_cluster.launch(0)
        own_cluster.launch(1)
        body = await readyz(200)
        assert body["status"] == "ready" and body["store_problem"] is None


async def test_a_node_started_before_the_cluster_waits_for_it(
    tmp_path: Path, service_nodes: NodeMaker
) -> None:
    cluster = LocalCluster(tmp_path / "late", nodes=3)
    try:
        node = service_nodes(cluster_store(cluster))
        with trio.fail_after(60):  # it says it waits, and does not serve yet
            for _ in iter(int, 1):
                if "waiting until one answers" in node.log_path.read_text(errors="replace"):
                    break
                await trio.sleep(0.05)
        await trio.sleep(1)  # a second of no cluster: still waiting, not serving
        log = node.log_path.read_text(errors="replace")
        assert "serving HTTP" not in log
        # Its HTTP port answers the probes meanwhile, and refuses the rest with 503.
        waiting = re.findall(r"answering probes on (http://\S+) while", log)
        assert waiting, log
        async with httpx.AsyncClient(base_url=waiting[0], timeout=30) as client:
            response = await client.get("/readyz")
            assert response.status_code == 503
            problem = response.json()["store_problem"]  # and why: nothing listens
            assert problem.startswith("connecting to the NATS cluster: no NATS server is reach")
            assert (await client.get("/healthz")).status_code == 200
            refused = await post(client, audio(0))
            assert refused.status_code == 503 and refused.json()["code"] == "unavailable"
            assert int(refused.headers["Retry-After"]) >= 1
            # One server of three: it connects, but no meta leader can be elected yet.
            cluster.launch(0)
            with trio.fail_after(60):
                for _ in iter(int, 1):
                    problem = (await client.get("/readyz")).json()["store_problem"]
                    if problem == "waiting for the JetStream meta leader":
                        break
                    await trio.sleep(0.1)
        cluster.launch(1)
        cluster.launch(2)
        await node.wait_ready(90)
        assert node.url == waiting[0]  # the same port, now the service's
        async with httpx.AsyncClient(base_url=node.url, timeout=30) as client:
            ready = (await client.get("/readyz")).json()
            assert ready["status"] == "ready" and ready["store_problem"] is None
            assert (await post(client, audio(0))).status_code == 201
    finally:
        cluster.stop()


async def test_more_replicas_than_servers_is_a_clear_start_up_error(tmp_path: Path) -> None:
    with LocalCluster(tmp_path / "one", nodes=1) as cluster:
        store = cluster_store(cluster)
        node = ServiceNode(tmp_path / "node", {**store, "store_replicas": 3})
        node.start()
        assert node.proc is not None
        with trio.fail_after(60):
            code = await trio.to_thread.run_sync(node.proc.wait)
        assert code == 3
        assert "cannot create the stream" in node.log_path.read_text()
        assert "--store-replicas" in node.log_path.read_text()
