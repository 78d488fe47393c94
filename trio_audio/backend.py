"""Opening the store backend ``--store`` names: the one place outside ``trio_audio.cluster``
that imports it.

- No ``--store``: the local log (``store/store.py``); this process transcribes what it
  stores, fed by the fan-out.
- ``--store nats://h1:4222,...``: the JetStream backend, and transcription shared across the
  cluster's nodes (``cluster/work.py``: work partitioned, one lease holder per partition),
  whose live results are relayed between nodes.

Everything else knows a backend only as ``StoreBackend`` (``store/__init__.py``) and shared
work only as ``SharedWork`` below.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import attrs

from .config import Config
from .fanout import ChunkTaker
from .live import LivePort
from .metrics import Metrics
from .store import StoreBackend
from .store.files import FileOps
from .store.store import Store

if TYPE_CHECKING:
    from .asr.transcriber import Transcriber


class SharedWork(Protocol):
    """Transcription shared with other nodes: new chunks come to this node's transcriber as
    work (not from the fan-out), its live results go to every node's watchers, and a session
    is finalized on whichever node holds it."""

    @property
    def live(self) -> LivePort: ...

    @property
    def taker(self) -> ChunkTaker: ...

    async def run(
        self, transcriber: Transcriber | None, *, relay: bool = ..., task_status: Any = ...
    ) -> None: ...

    def stop(self) -> None: ...

    async def finalize(self, user_id: str, session_id: str) -> None: ...

    def lag_s(self, key: tuple[str, str] | None = None) -> float: ...

    def set_vocabulary(self, user_id: str, session_id: str, terms: tuple[str, ...]) -> None: ...


@attrs.frozen
class Backend:
    """The store, and (on a cluster) the transcription work it shares."""

    store: StoreBackend
    work: SharedWork | None = None


def open_backend(
    config: Config,
    metrics: Metrics,
    files: FileOps,
    live: LivePort,
    on_health: Callable[[str | None], None] | None = None,
) -> Backend:
    """The backend ``config.store`` names (not started): the local log over *files*, or the
    JetStream cluster, whose health changes *on_health* hears and whose relayed live results
    go to *live* (this node's watchers)."""
    if not config.store:
        return Backend(Store(config, metrics=metrics, files=files))
    from .cluster.jetstream import JetStreamStore
    from .cluster.work import Cluster

    store = JetStreamStore(config, metrics=metrics, on_health=on_health)
    return Backend(store, Cluster(config, store, live, metrics))
