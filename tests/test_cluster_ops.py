"""Operating a cluster: limits that refuse rather than drop, reads that a lagging node or
replica does not turn into "deleted", secrets kept out of logs, TLS and credentials, and what
``/readyz`` and ``/metrics`` say. Real ``nats-server`` processes (``tests/cluster.py``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import trio

from trio_audio.cluster.bridge import open_nats
from trio_audio.cluster.dev import LocalCluster, Options
from trio_audio.cluster.work import Names

from .cluster import cluster_store
from .conftest import StartServer
from .test_cluster import audio, eventually, post, two_nodes

Stored = list[tuple[str, bytes]]


async def fill(client: httpx.AsyncClient, session_id: str, most: int) -> tuple[Stored, Any]:
    """Upload distinct chunks until one is refused; (the acknowledged ids and bytes, the
    refusal)."""
    stored: Stored = []
    for n in range(most):
        data = audio(n)
        response = await post(client, data, session_id=session_id)
        if response.status_code != 201:
            return stored, response
        stored.append((response.json()["chunk_id"], data))
    raise AssertionError(f"{most} uploads and none refused")


async def test_a_full_stream_refuses_with_507_and_keeps_every_acknowledged_chunk(
    start_server: StartServer, nats_cluster: LocalCluster
) -> None:
    store = cluster_store(nats_cluster)
    server = await start_server(**store, store_max_bytes=60_000)
    async with server.client() as client:
        stored, refused = await fill(client, "full", 200)
        assert refused.status_code == 507, refused.text
        assert refused.json()["code"] == "insufficient_storage"
        assert refused.json()["retryable"] is True
        assert len(stored) > 5
        # Nothing was dropped to make room: every acknowledged chunk reads back whole.
        for chunk_id, data in stored:
            response = await client.get(f"/chunks/{chunk_id}/audio")
            assert response.status_code == 200 and response.content == data
        ready = await client.get("/readyz")
        assert ready.status_code == 503
        assert "cannot take more" in ready.json()["store_problem"]
        metrics = (await client.get("/metrics")).text
        assert 'trio_audio_failed_total{code="insufficient_storage"}' in metrics
        assert f'trio_audio_cluster_stream{{stream="{store["store_stream"]}",what="bytes"}}' in (
            metrics
        )
    async with open_nats(nats_cluster.urls, name="test") as nats:
        state = await nats.stream_state(store["store_stream"])
        assert state.first_seq == 1  # the oldest records are all still there
        assert state.bytes <= 60_000


async def test_a_server_out_of_storage_answers_507(
    start_server: StartServer, tmp_path: Path
) -> None:
    with LocalCluster(tmp_path / "nats", nodes=1, options=Options(max_file_store=120_000)) as c:
        server = await start_server(**cluster_store(c))
        async with server.client() as client:
            stored, refused = await fill(client, "disk", 200)
            assert refused.status_code == 507, refused.text
            assert stored
            chunk_id, data = stored[0]
            assert (await client.get(f"/chunks/{chunk_id}/audio")).content == data
            ready = await client.get("/readyz")
            assert ready.status_code == 503 and "cannot take more" in ready.json()["store_problem"]
            await server.stop()


async def test_the_work_stream_holds_references_and_copies_no_history(
    start_server: StartServer, nats_cluster: LocalCluster
) -> None:
    store = cluster_store(nats_cluster)
    stream = store["store_stream"]
    names = Names(stream)
    server = await start_server(**store)
    async with server.client() as client, open_nats(nats_cluster.urls, name="test") as nats:
        for n in range(5):  # history, from before any worker
            assert (await post(client, audio(n), session_id="old")).status_code == 201
        # What the first worker on the cluster sets up: the servers copy none of it.
        await nats.ensure_work_stream(names.work, stream, *names.transform(8), 3)
        assert (await nats.stream_state(names.work)).messages == 0
        sizes = 0
        for n in range(5, 8):
            data = audio(n)
            sizes += len(data)
            assert (await post(client, data, session_id="new")).status_code == 201
        with trio.fail_after(10):
            for _ in iter(int, 1):
                work = await nats.stream_state(names.work)
                if work.messages >= 3:
                    break
                await trio.sleep(0.05)
        assert work.messages == 3
        assert work.bytes < sizes / 4  # references: metadata, no audio


async def test_a_read_with_the_position_of_a_write_waits_for_the_follower(
    start_server: StartServer, nats_cluster: LocalCluster
) -> None:
    _, a, b = await two_nodes(start_server, nats_cluster)
    async with a.client() as ca, b.client() as cb:
        for n in range(30):
            response = await post(ca, audio(n), session_id="raw")
            assert response.status_code == 201
            position = response.headers["Trio-Audio-Position"]
            chunk_id = response.json()["chunk_id"]
            # With the position, the other node answers it at once: never a 404.
            read = await cb.get(f"/chunks/{chunk_id}", headers={"Trio-Audio-Position": position})
            assert read.status_code == 200, read.text
        await eventually(lambda: cb.get(f"/chunks/{chunk_id}"), 5)
