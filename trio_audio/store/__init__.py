"""Durable storage, behind one interface (``StoreBackend``) that the rest of the service uses.

The embedded default is the local store (``store.py``): an in-memory index (``index.py``)
over an append-only msgpack log on disk, written by one committer task; the other is the
JetStream cluster (``trio_audio.cluster``). ``trio_audio/backend.py`` opens the one
``--store`` names; nothing else knows which one runs. Whatever the
backend, the contract is the same:

- ``run(task_status=...)`` owns the backend's whole life (lock, replay, the committer and its
  helpers); it reports ready with ``task_status.started`` and returns once ``close`` was
  called, every sender from ``open_writes`` is closed, and what they sent is written.
- Writes: a pipeline ``Job``, an ``Update`` or a ``Delete`` (``events.py``) sent through
  ``open_writes()`` (the pipeline) or ``submit`` (everyone else) and answered on the write's
  ``reply`` once durable; ``update``/``delete_chunk``/``delete_session`` wrap ``submit``.
- Reads: ``has``, ``offset_ms``, ``transcript_status``, ``chunk_ids``, ``session_ids``,
  ``owner``, ``summary``, ``chunks_after``, ``pending_transcripts``, ``stats`` answer from
  the in-memory index; ``get``, ``metas``, ``page`` and ``read_audio`` read the log (chunk
  metadata through a cache, see ``reads.py``), so they are async. Copies, never the
  backend's objects.
- ``health``: why the backend cannot serve now (None: it can), for ``/readyz``.
- ``events()``: one channel of ``Committed`` events (chunk stored, updated, deleted) in commit
  order, for the service's fan-out to the live watchers and the transcriber. The store never
  calls up into web or transcription code.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import trio

    from ..errors import ServiceError
    from .events import Committed, Write
    from .index import SessionSummary
    from .types import StoreStats


class StoreBackend(Protocol):
    """What the service needs of a store backend (see the module docstring)."""

    # Whether starting may take long (a cluster to reach, a stream to follow): the service
    # then answers its probes meanwhile ("starting", and why).
    starts_slowly: bool

    async def run(self, *, task_status: trio.TaskStatus[Any] = ...) -> None: ...

    @property
    def health(self) -> str | None: ...

    @property
    def position(self) -> int | None:
        """How far this process has followed a shared log (None: the log is this process's
        own, so every read sees every write it answered)."""

    async def wait_followed(self, position: int) -> bool:
        """Wait until this process has followed a shared log to *position* (another node's
        ``position`` after a write); False when it gave up waiting."""

    def events(self) -> trio.MemoryReceiveChannel[Committed]: ...

    def open_writes(self) -> trio.MemorySendChannel[Write]: ...

    def close(self) -> None: ...

    async def submit(self, write: Write) -> Any: ...

    async def update(self, chunk_id: str, fields: dict[str, Any]) -> dict[str, Any]: ...

    async def update_many(
        self, updates: list[tuple[str, dict[str, Any]]]
    ) -> list[dict[str, Any] | ServiceError]: ...

    async def delete_chunk(self, chunk_id: str) -> None: ...

    async def delete_session(self, user_id: str, session_id: str) -> list[str]: ...

    async def get(self, chunk_id: str) -> dict[str, Any]: ...

    async def metas(self, chunk_ids: list[str]) -> list[dict[str, Any]]: ...

    def has(self, chunk_id: str) -> bool: ...

    def offset_ms(self, chunk_id: str) -> float | None: ...

    def transcript_status(self, chunk_id: str) -> str | None: ...

    def chunk_ids(self) -> list[str]: ...

    def session_ids(self, user_id: str) -> list[str]: ...

    def owner(self, chunk_id: str) -> str | None: ...

    def summary(self, user_id: str, session_id: str) -> SessionSummary | None: ...

    def chunks_after(
        self, user_id: str, session_id: str, seq: int | None
    ) -> list[tuple[int, str]]: ...

    async def page(
        self, user_id: str, only: str | None, limit: int, after: tuple[str, int] | None
    ) -> tuple[list[tuple[SessionSummary, list[dict[str, Any]]]], tuple[str, int] | None]: ...

    async def read_audio(self, chunk_id: str) -> tuple[bytes, str]: ...

    def pending_transcripts(self) -> list[str]: ...

    def stats(self) -> StoreStats: ...
