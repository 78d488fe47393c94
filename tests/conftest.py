"""Fixtures: a real service on port 0 with its own data dir, and a real HTTP client.

Rules (as trio-websocket's tests have them): localhost only, port 0, ``fail_after`` on
anything that could hang.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
import trio

from trio_audio.config import Config
from trio_audio.service import Running, serve
from trio_audio.store.files import REAL_FILES, FileOps

from .cluster import cluster_store, nats_cluster, own_cluster, service_nodes  # noqa: F401
from .processes import Process


@attrs.define
class Server:
    """A running service and the handle to stop it."""

    running: Running
    shutdown: trio.Event
    done: trio.Event
    config: Config

    @property
    def url(self) -> str:
        return self.running.http_url

    def client(self, **kwargs: Any) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, timeout=30, **kwargs)

    async def stop(self) -> None:
        self.shutdown.set()
        with trio.fail_after(30):
            await self.done.wait()


StartServer = Callable[..., Any]


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def store_overrides(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Config that puts the service on a store backend: none (the local log), or, with
    ``TRIO_AUDIO_TEST_CLUSTER=1`` (``nox -s tests_cluster``), a fresh stream on a 3-node
    JetStream cluster shared by the session (``tests/cluster.py``)."""
    if not os.environ.get("TRIO_AUDIO_TEST_CLUSTER"):
        return {}
    cluster = request.getfixturevalue("nats_cluster")
    return cluster_store(cluster)


@pytest.fixture
async def start_server(
    nursery: trio.Nursery, data_dir: Path, store_overrides: dict[str, Any]
) -> AsyncIterator[StartServer]:
    """``await start_server(**config)`` runs a service in this test's nursery."""
    servers: list[Server] = []

    async def start(*, files: FileOps = REAL_FILES, **overrides: Any) -> Server:
        if files is not REAL_FILES and store_overrides:
            # A fault injected under the local log's files has no counterpart on the cluster,
            # whose own faults (servers killed, the cluster unreachable) test_cluster.py covers.
            pytest.skip("injects faults under the local log's files")
        values: dict[str, Any] = {
            "port": 0,
            "ws_port": 0,
            "data_dir": data_dir,
            "drain_timeout_s": 10.0,
            # No speech engine unless a test asks for one (tests/test_transcribe.py does):
            # a worker process per server would slow every other test down.
            "asr_engine": "none",
            **store_overrides,
        }
        values.update(overrides)
        config = Config(**values)
        shutdown, done = trio.Event(), trio.Event()

        async def run(task_status: trio.TaskStatus[Running]) -> None:
            try:
                await serve(config, shutdown=shutdown, files=files, task_status=task_status)
            finally:
                done.set()

        with trio.fail_after(30):
            running = await nursery.start(run)
        server = Server(running, shutdown, done, config)
        servers.append(server)
        return server

    yield start
    for server in servers:
        if not server.done.is_set():
            await server.stop()


@pytest.fixture
async def server(start_server: StartServer) -> Server:
    server: Server = await start_server()
    return server


@pytest.fixture
async def client(server: Server) -> AsyncIterator[httpx.AsyncClient]:
    async with server.client() as client:
        yield client


@pytest.fixture
def spawn(data_dir: Path) -> Iterator[type[Process]]:
    started: list[Process] = []

    class Spawned(Process):
        def __init__(self, *args: str, directory: Path = data_dir) -> None:
            super().__init__(directory, *args)
            started.append(self)

    yield Spawned
    for process in started:
        if process.proc.poll() is None:
            process.proc.kill()
            process.proc.wait()


def upload_params(**extra: Any) -> dict[str, Any]:
    return {"user_id": "alice", "session_id": "s1", **extra}
