"""A replica that lags: reads through it must answer, never 404 for a chunk that exists.

One ``nats-server`` of three is stopped (SIGSTOP) while another node uploads (the other two
keep quorum), then continued (SIGCONT), and a node connected to that server alone at once
reads the audio of what was uploaded, with the ``Trio-Audio-Position`` of the last upload
(so it has indexed them). Its direct gets are answered by the continued server's replica
before it has caught up: "no message" for records that exist. Real ``nats-server``
processes (``tests/cluster.py``)."""

from __future__ import annotations

import signal

import httpx
import trio

from trio_audio.cluster.connect import open_nats
from trio_audio.cluster.dev import LocalCluster

from .cluster import cluster_store
from .test_cluster import NodeMaker, audio, post

LAGGED = "a replica lagged on record"
POSITION = "Trio-Audio-Position"


async def test_reads_through_a_lagging_replica_answer_with_the_audio(
    own_cluster: LocalCluster, service_nodes: NodeMaker
) -> None:
    store = cluster_store(own_cluster)
    slow, *others = own_cluster.nodes  # the writer is connected to the others only
    assert slow.process is not None
    writer = service_nodes({**store, "store": ",".join(n.url for n in others)})
    await writer.wait_ready()
    async with httpx.AsyncClient(base_url=writer.url, timeout=30) as client:
        assert (await post(client, audio(0), session_id="lag")).status_code == 201
        async with open_nats(own_cluster.urls, name="test") as nats:
            with trio.fail_after(30):  # the slow server is a follower: its replica lags
                while (await nats.stream_state(store["store_stream"])).leader == slow.name:
                    stepdown = f"$JS.API.STREAM.LEADER.STEPDOWN.{store['store_stream']}"
                    await nats.request(stepdown, b"", 5)
                    await trio.sleep(0.5)
        reader = service_nodes({**store, "store": slow.url}, "--store-timeout-s", "5")
        await reader.wait_ready()
        checked = 0
        with trio.fail_after(150):
            async with httpx.AsyncClient(base_url=reader.url, timeout=60) as far:
                for attempt in range(6):
                    written: list[tuple[str, bytes]] = []
                    position: dict[str, str] = {}
                    slow.process.send_signal(signal.SIGSTOP)
                    try:
                        for n in range(30):
                            data = audio(100 * attempt + n)
                            stored = await post(client, data, session_id="lag")
                            if stored.status_code == 503:
                                # The slow server led the meta group (or the stream): the
                                # others elect a new leader meanwhile; this round ends.
                                break
                            assert stored.status_code == 201, stored.text
                            written.append((stored.json()["chunk_id"], data))
                            position = {"Trio-Audio-Position": stored.headers[POSITION]}
                    finally:
                        slow.process.send_signal(signal.SIGCONT)

                    async def read(chunk_id: str, data: bytes, position: dict[str, str]) -> None:
                        nonlocal checked
                        while True:  # 503 (the slow server's link was frozen): again
                            got = await far.get(f"/chunks/{chunk_id}/audio", headers=position)
                            if got.status_code != 503:
                                break
                            await trio.sleep(0.02)
                        assert got.status_code == 200, (chunk_id, got.text)
                        assert got.content == data
                        checked += 1

                    async with trio.open_nursery() as nursery:
                        for chunk_id, data in reversed(written):
                            nursery.start_soon(read, chunk_id, data, position)
                    if LAGGED in reader.log():
                        break
        # The replica did lag on some of these reads (else this test proved nothing).
        assert LAGGED in reader.log(), f"no read met a lagging replica in {checked} reads"
