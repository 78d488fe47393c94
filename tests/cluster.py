"""A 3-node JetStream cluster of real ``nats-server`` processes on loopback, for the tests.

One cluster serves the whole test session (it takes a few seconds to elect its leaders);
each service gets its own stream (``cluster_store``), so tests never see each other's data.
Tests that kill and restart servers take a cluster of their own (``own_cluster``).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from trio_audio.store.natscluster import LocalCluster

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
