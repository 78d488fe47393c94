"""Operating a cluster: limits that refuse rather than drop, reads that a lagging node or
replica does not turn into "deleted", secrets kept out of logs, TLS and credentials, and what
``/readyz`` and ``/metrics`` say. Real ``nats-server`` processes (``tests/cluster.py``)."""

from __future__ import annotations

import re
import signal
from pathlib import Path
from typing import Any

import httpx
import trio
import trustme

from trio_audio.cluster.connect import open_nats
from trio_audio.cluster.dev import LocalCluster, Options
from trio_audio.cluster.partitions import Names
from trio_audio.cluster.stream import META, NODE, from_header, to_header

from .cluster import ServiceNode, cluster_store
from .conftest import StartServer
from .nats_creds import operator_setup
from .test_cluster import NodeMaker, audio, eventually, grammar_args, post, two_nodes

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
        # A node started without the flag keeps the limit the stream has.
        other = await start_server(**store, data_dir=server.config.data_dir.parent / "b")
        async with other.client() as other_client:
            assert (await post(other_client, audio(999), session_id="full")).status_code == 507
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
    store, a, b = await two_nodes(start_server, nats_cluster)
    async with (
        a.client() as ca,
        b.client() as cb,
        open_nats(nats_cluster.urls, name="test") as nats,
    ):
        for n in range(30):
            response = await post(ca, audio(n), session_id="raw")
            assert response.status_code == 201
            position = response.headers["Trio-Audio-Position"]
            chunk_id = response.json()["chunk_id"]
            # With the position, the other node answers it at once: never a 404.
            read = await cb.get(f"/chunks/{chunk_id}", headers={"Trio-Audio-Position": position})
            assert read.status_code == 200, read.text
        # The stream's last record is the chunk's work reference: the position covers it (a
        # wait for the stream's last sequence would hang if not).
        last = (await nats.stream_state(store["store_stream"])).last_seq
        assert int(position) == last
        read = await cb.get(f"/chunks/{chunk_id}", headers={"Trio-Audio-Position": str(last)})
        assert read.status_code == 200, read.text
        # A delete's answer carries it too: the other node no longer serves the chunk.
        deleted = await ca.delete(f"/chunks/{chunk_id}")
        assert deleted.status_code in (200, 204)
        position = deleted.headers["Trio-Audio-Position"]
        read = await cb.get(f"/chunks/{chunk_id}", headers={"Trio-Audio-Position": position})
        assert read.status_code == 404
        # Without the header a cluster node's 404 says it may be worth a retry.
        unknown = await cb.get("/chunks/not-followed-yet")
        assert unknown.status_code == 404 and unknown.json()["retryable"] is True
        assert "Trio-Audio-Position" in unknown.json()["detail"]


async def test_a_node_replaying_up_to_a_chunk_without_a_reference_applies_what_follows(
    start_server: StartServer, nats_cluster: LocalCluster
) -> None:
    store = cluster_store(nats_cluster)
    stream = store["store_stream"]
    a = await start_server(**store)
    async with a.client() as ca, open_nats(nats_cluster.urls, name="test") as nats:
        assert (await post(ca, audio(0), session_id="old", seq="0")).status_code == 201
        # A chunk as a version before work references wrote it: no reference after it. It
        # is the stream's last record (replay, which skips references, ends on it).
        record = await nats.get(stream, 1)
        meta = {**from_header(record.headers[META]), "chunk_id": "written-by-an-older-node"}
        meta["seq"] = 1
        subject = record.subject.rsplit(".", 1)[0] + ".1"
        headers = {META: to_header(meta), NODE: "an-older-node"}
        seq, _ = await nats.publish(subject, audio(1), headers, 5.0)
        assert seq == (await nats.stream_state(stream)).last_seq
    # A node started now replays up to that chunk; what comes after it is applied too.
    b = await start_server(**store, data_dir=a.config.data_dir.parent / "b")
    async with b.client() as cb:
        created = await post(cb, audio(2), session_id="old", seq="2")
        assert created.status_code == 201, created.text
        assert (await cb.get(f"/chunks/{created.json()['chunk_id']}")).status_code == 200
        listing = (await cb.get("/sessions/alice", params={"session_id": "old"})).json()
        assert [c["seq"] for c in listing["sessions"][0]["chunks"]] == [0, 1, 2]


def tls_options(directory: Path, **login: str) -> tuple[Options, dict[str, str]]:
    """Server options for TLS with client certificates (mutual TLS) and *login*; and the
    files a client needs (``ca``, ``cert``, ``key``)."""
    ca = trustme.CA()
    server, client = ca.issue_cert("127.0.0.1", "localhost"), ca.issue_cert("trio-audio")
    directory.mkdir(parents=True, exist_ok=True)
    files = {name: str(directory / f"{name}.pem") for name in
             ("ca", "server", "server_key", "cert", "key")}  # fmt: skip
    ca.cert_pem.write_to_path(files["ca"])
    server.cert_chain_pems[0].write_to_path(files["server"])
    server.private_key_pem.write_to_path(files["server_key"])
    client.cert_chain_pems[0].write_to_path(files["cert"])
    client.private_key_pem.write_to_path(files["key"])
    options = Options(tls_cert=files["server"], tls_key=files["server_key"], tls_ca=files["ca"],
                      verify=True, **login)  # fmt: skip
    return options, files


async def readyz_while_waiting(node: ServiceNode, want: str) -> str:
    """The ``store_problem`` of a node still waiting for its store, once it has *want*."""
    with trio.fail_after(30):
        for _ in iter(int, 1):
            found = re.findall(r"answering probes on (http://\S+) while", node.log())
            if found:
                async with httpx.AsyncClient(base_url=found[0], timeout=10) as client:
                    response = await client.get("/readyz")
                    assert response.status_code == 503
                    problem = str(response.json()["store_problem"])
                    if want in problem:
                        return problem
            await trio.sleep(0.1)
    raise AssertionError("unreachable")


async def test_tls_client_certificates_and_a_password_and_none_of_it_logged(
    tmp_path: Path, service_nodes: NodeMaker
) -> None:
    secret = "s3cret-Pw-9"
    options, files = tls_options(tmp_path / "pki", user="svc", password=secret)
    with LocalCluster(tmp_path / "nats", nodes=1, options=options) as cluster:
        port = cluster.nodes[0].port
        tls = ["--store-tls-ca", files["ca"], "--store-tls-cert", files["cert"],
               "--store-tls-key", files["key"]]  # fmt: skip
        store = {**cluster_store(cluster), "store": f"tls://svc:{secret}@127.0.0.1:{port}"}
        node = service_nodes(store, *tls)
        await node.wait_ready(60)
        async with httpx.AsyncClient(base_url=node.url, timeout=30) as client:
            assert (await post(client, audio(1))).status_code == 201
        # A wrong password: said at once, in the log and in /readyz, and SIGTERM is prompt.
        wrong = {**store, "store": f"tls://svc:Wr0ng-{secret}@127.0.0.1:{port}"}
        refused = service_nodes(wrong, *tls)
        problem = await readyz_while_waiting(refused, "refused this client's credentials")
        assert problem.startswith("connecting to the NATS cluster")
        assert "ERROR" in refused.log() and "Authorization Violation" in refused.log()
        # No client certificate: the server's TLS refuses it, and that is what is said.
        no_cert = service_nodes(store, "--store-tls-ca", files["ca"])
        await readyz_while_waiting(no_cert, "NATS")
        started = trio.current_time()
        await trio.to_thread.run_sync(refused.stop)
        assert trio.current_time() - started < 5
        assert refused.proc is not None and refused.proc.returncode == 0
        await trio.to_thread.run_sync(no_cert.stop)
        for made in (node, refused, no_cert):
            assert secret not in made.log()


async def test_a_nats_credentials_file_logs_in(tmp_path: Path, service_nodes: NodeMaker) -> None:
    settings, creds = operator_setup(tmp_path / "auth")
    with LocalCluster(tmp_path / "nats", nodes=1, options=Options(extra=settings)) as cluster:
        store = cluster_store(cluster)
        node = service_nodes(store, "--store-creds", str(creds))
        await node.wait_ready(60)
        async with httpx.AsyncClient(base_url=node.url, timeout=30) as client:
            assert (await post(client, audio(1))).status_code == 201
        # Without it the servers refuse the node, and it says so; an asr-worker too, on its
        # probe port, and SIGTERM stops it at once, cleanly.
        refused = service_nodes(store)
        await readyz_while_waiting(refused, "refused this client's credentials")
        worker = service_nodes(store, *grammar_args(tmp_path), worker=True)
        with trio.fail_after(30):
            for _ in iter(int, 1):
                probes = re.findall(r"probes \(.*\) on (http://\S+)", worker.log())
                if probes:
                    break
                await trio.sleep(0.1)
        async with httpx.AsyncClient(base_url=probes[0], timeout=10) as client:
            with trio.fail_after(30):
                for _ in iter(int, 1):
                    ready = await client.get("/readyz")
                    assert ready.status_code == 503
                    if "refused this client" in str(ready.json()["store_problem"]):
                        break
                    await trio.sleep(0.1)
        started = trio.current_time()
        await trio.to_thread.run_sync(worker.stop)
        assert trio.current_time() - started < 5
        assert worker.proc is not None and worker.proc.returncode == 0


def test_the_dev_cluster_keeps_its_ports_across_runs(tmp_path: Path) -> None:
    first = LocalCluster(tmp_path / "dev", nodes=3)
    again = LocalCluster(tmp_path / "dev", nodes=3)
    assert again.store == first.store  # nodes given the printed --store reconnect
    assert LocalCluster(tmp_path / "other", nodes=3).store != first.store


async def test_frozen_servers_make_uploads_wait_no_longer_than_the_store_timeout(
    own_cluster: LocalCluster, service_nodes: NodeMaker
) -> None:
    store = cluster_store(own_cluster)
    node = service_nodes(store, "--store-timeout-s", "2")
    await node.wait_ready()
    async with httpx.AsyncClient(base_url=node.url, timeout=30) as client:
        assert (await post(client, audio(0), session_id="f0")).status_code == 201
        servers = [n.process for n in own_cluster.nodes if n.process is not None]
        for process in servers:  # alive, connected, answering nothing (SIGSTOP)
            process.send_signal(signal.SIGSTOP)
        try:
            took: list[float] = []

            async def upload(n: int) -> None:
                started = trio.current_time()
                response = await post(client, audio(n), session_id=f"f{n}")
                took.append(trio.current_time() - started)
                assert response.status_code == 503, response.text

            async with trio.open_nursery() as nursery:  # some wait behind others' batches
                for n in range(1, 9):
                    nursery.start_soon(upload, n)
                    await trio.sleep(0.2)
            assert max(took) < 2 + 0.75, took  # the documented wait, plus the pipeline's
        finally:
            for process in servers:
                process.send_signal(signal.SIGCONT)
        recovered = await eventually(lambda: post(client, audio(20), session_id="f20"), 60, 503)
        assert recovered.status_code == 201


async def test_only_a_tombstone_makes_a_chunk_deleted(
    start_server: StartServer, nats_cluster: LocalCluster
) -> None:
    store = cluster_store(nats_cluster)
    server = await start_server(**store)
    async with server.client() as client, open_nats(nats_cluster.urls, name="test") as nats:
        kept = (await post(client, audio(1), session_id="t")).json()["chunk_id"]
        lost = (await post(client, audio(2), session_id="t")).json()["chunk_id"]
        gone = (await post(client, audio(3), session_id="t")).json()["chunk_id"]
        # A message that leaves the stream without a tombstone (age, an operator): the
        # chunk is not said to be deleted.
        state = await nats.stream_state(store["store_stream"])
        for seq in range(state.first_seq, state.last_seq + 1):
            message = await nats.get(store["store_stream"], seq)
            if message.subject.endswith(".chunk.1"):
                await nats.delete(store["store_stream"], seq)
        missing = await client.get(f"/chunks/{lost}/audio")
        assert missing.status_code == 404
        assert "no longer in the stream" in missing.json()["detail"]
        assert (await client.delete(f"/chunks/{gone}")).status_code in (200, 204)
        deleted = await client.get(f"/chunks/{gone}/audio")
        assert deleted.status_code == 404
        assert (await client.get(f"/chunks/{kept}/audio")).content == audio(1)
