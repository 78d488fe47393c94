"""A 3-node JetStream cluster of real ``nats-server`` processes on loopback, for the tests.

One cluster serves the whole test session (it takes a few seconds to elect its leaders);
each service gets its own stream (``cluster_store``), so tests never see each other's data.
Tests that kill and restart servers take a cluster of their own (``own_cluster``).
"""

from __future__ import annotations

import itertools
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from trio_audio.cluster.dev import LocalCluster

_streams = itertools.count(1)


@pytest.fixture(scope="session")
def nats_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    cluster = LocalCluster(tmp_path_factory.mktemp("nats"), nodes=3)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


def cluster_store(cluster: LocalCluster, stream: str | None = None) -> dict[str, Any]:
    """Config overrides for a service on *cluster*, on its own stream unless one is named."""
    return {
        "store": cluster.store,
        "store_stream": stream or f"T{next(_streams)}",
        "store_replicas": min(3, len(cluster.nodes)),
    }


@pytest.fixture
def own_cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    """A cluster for one test alone (it may kill and restart its servers)."""
    cluster = LocalCluster(tmp_path / "nats", nodes=3)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


SERVING_HTTP = re.compile(r"serving HTTP on (http://\S+),")
SERVING_WS = re.compile(r"serving WebSocket on (ws://\S+)")


class ServiceNode:
    """``trio-audio serve --store nats://...`` as a child process, its log in a file (read
    for its URLs; a pipe nobody drains would stop the process once full)."""

    def __init__(self, directory: Path, store: dict[str, Any], *args: str) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.log_path = directory / "service.log"
        self.args = [
            sys.executable, "-m", "trio_audio", *self.command(directory),
            "--store", store["store"], "--store-stream", store["store_stream"],
            "--store-replicas", str(store["store_replicas"]), *args,
        ]  # fmt: skip
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.ws_url = ""

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT)

    def command(self, directory: Path) -> list[str]:
        return ["serve", "--port", "0", "--ws-port", "0", "--data-dir", str(directory / "data"),
                "--asr-engine", "none"]  # fmt: skip

    def ready(self, log: str) -> bool:
        """Whether *log* says the process is ready: both URLs (a node logs them once it has
        replayed the stream), as many times as it started."""
        http, ws = SERVING_HTTP.findall(log), SERVING_WS.findall(log)
        if http and ws and len(http) == len(ws) == self.starts():
            self.url, self.ws_url = http[-1], ws[-1]
            return True
        return False

    async def wait_ready(self, seconds: float = 60) -> None:
        """Until the process's log says it is ready."""
        assert self.proc is not None
        with trio.fail_after(seconds):
            for _ in iter(int, 1):
                text = self.log_path.read_text(errors="replace")
                if self.ready(text):
                    return
                if self.proc.poll() is not None:
                    raise AssertionError(f"{self.args[3]} exited:\n{text[-4000:]}")
                await trio.sleep(0.05)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def starts(self) -> int:
        return self.log_path.read_text(errors="replace").count("connected to NATS")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class WorkerNode(ServiceNode):
    """``trio-audio asr-worker --store nats://...`` as a child process (no listeners)."""

    def command(self, directory: Path) -> list[str]:
        return ["asr-worker", "--port", "0"]

    def ready(self, log: str) -> bool:
        return "taking transcription work" in log  # it has replayed the stream


NODE_ID = re.compile(r"node (\w+) took transcription partition (\d+)")


def node_id(node: ServiceNode) -> set[str]:
    """The cluster ids *node* has taken partitions under (one per start)."""
    return {m[0] for m in NODE_ID.findall(node.log_path.read_text(errors="replace"))}


@pytest.fixture
def service_nodes(tmp_path: Path) -> Iterator[Callable[..., ServiceNode]]:
    """``service_nodes(store, *args)`` makes a started ``ServiceNode``; all stopped after."""
    made: list[ServiceNode] = []

    def make(store: dict[str, Any], *args: str, worker: bool = False) -> ServiceNode:
        kind = WorkerNode if worker else ServiceNode
        node = kind(tmp_path / f"node{len(made) + 1}", store, *args)
        node.start()
        made.append(node)
        return node

    yield make
    for node in made:
        node.kill()
