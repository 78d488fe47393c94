"""The service on a JetStream cluster: several nodes, one log, and faults with real processes.

Every test here runs real ``nats-server`` processes (``tests/cluster.py``); run them with
``nox -s tests_cluster``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import httpx
import trio

from trio_audio.store.natscluster import LocalCluster

from .audio_samples import wav
from .cluster import cluster_store
from .conftest import StartServer, upload_params


async def eventually(
    request: Callable[[], Awaitable[httpx.Response]], seconds: float, missing: int = 404
) -> httpx.Response:
    """The first response to *request* that is not *missing*, retried for *seconds*."""
    with trio.fail_after(seconds):
        for _ in iter(int, 1):
            response = await request()
            if response.status_code != missing:
                return response
            await trio.sleep(0.01)
    raise AssertionError("unreachable")


async def test_upload_to_one_node_read_from_another(
    start_server: StartServer, nats_cluster: LocalCluster
) -> None:
    store = cluster_store(nats_cluster)
    a = await start_server(**store)
    b = await start_server(**store, data_dir=a.config.data_dir.parent / "b")
    data = wav(440.0, seconds=0.5, rate=16000)
    async with a.client() as ca, b.client() as cb:
        created = await ca.post("/upload", params=upload_params(seq="0"), content=data,
                                headers={"Content-Type": "audio/wav"})  # fmt: skip
        assert created.status_code == 201, created.text
        chunk = created.json()
        # Read-your-writes on the node that acknowledged: at once.
        assert (await ca.get(f"/chunks/{chunk['chunk_id']}")).json() == chunk
        got = await eventually(lambda: cb.get(f"/chunks/{chunk['chunk_id']}"), 5)
        assert got.json() == chunk
        audio = await cb.get(f"/chunks/{chunk['chunk_id']}/audio")
        assert audio.content == data
