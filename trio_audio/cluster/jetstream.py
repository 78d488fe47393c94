"""The cluster store: the log is a replicated JetStream stream that every node follows.

::

    pipeline (Jobs) ──┐                                   JetStream stream (R=3, fsynced)
    transcriber ──────┼──> writes ──> committer ──publish──>  AUDIO.<user>.<session>.…
    web (deletes) ────┘                  ▲                          │
                                         │ answered once            │ ordered, headers-only
                                         │ its node has it          ▼ consumer (every node)
                                         └──────────────────── follower ──> index (memory)
                                                                    └──> events ──> fan-out

``JetStreamStore`` is the ``StoreBackend`` over its parts, each a module of its own:

- ``stream.py``: the subjects, the headers a record carries, this node's connection;
- ``follow.py``: the follower, which replays the stream and follows it into the index,
  sending the events it makes;
- ``commit.py``: the committer, which takes the writes batch by batch, plans and
  publishes them (``publish.py``) and answers them once the follower has them: the writes'
  guarantees are told there;
- ``reads.py``: chunk metadata and audio read from the stream by sequence, and
  read-your-writes;
- ``observe.py``: the health ``/readyz`` reports and the gauges of ``/metrics``.

A session's records are ordered by the stream; ``AUDIO.<user>.>`` filters a user's. The
metadata of every record is a JSON header (``Trio-Audio``), so the follower replays and
follows with ``headers_only`` and never pulls audio; ``read_audio`` fetches one message's
body by its stream sequence with a direct get (any replica answers).

Health: once running, the node asks JetStream every second whether it answers and how the
stream is (``observe.py``); ``on_health`` hears why not, for ``/readyz``.

Error handling: when no server answers a write within ``store_timeout_s`` of the committer
taking it (or the client is disconnected) the write fails with 503 ``unavailable`` and
Retry-After: never a hang, never an answer for a write that is not stored. Reads of the
index keep working; audio reads need the cluster. The client reconnects by itself and the
follower resumes where it stopped.
"""

from __future__ import annotations

import contextlib
import logging
import re
import secrets
from collections.abc import Callable
from typing import Final

import trio

from ..config import Config, redact
from ..errors import NotFound, StoreError
from ..metrics import Metrics
from ..store.events import CommitChannels, Committed, Write
from ..store.index import Index
from ..store.reads import IndexReads, MetaCache
from ..store.types import StoreStats
from .bridge import NatsError, Unavailable, retrying
from .commit import Committer
from .connect import Link, Nats, Security, open_nats
from .follow import LogFollower
from .observe import Watch
from .reads import StreamReads
from .stream import Shared, Stream

logger = logging.getLogger("trio_audio.cluster.jetstream")

STREAM_CREATE_S: Final = 20.0  # how long a refused stream creation is retried at start
STREAM_NAME: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")  # also the subjects' first token


def servers(store: str) -> list[str]:
    """The server URLs of a ``--store`` value (``nats://h1:4222,nats://h2:4222``)."""
    urls = [u.strip() for u in store.split(",") if u.strip()]
    for url in urls:
        if not url.startswith(("nats://", "tls://")):
            msg = f"store must be a list of nats:// URLs, got {redact(url)!r}"
            raise ValueError(msg)
    return urls


class JetStreamStore(CommitChannels, IndexReads):
    """A ``StoreBackend`` on a JetStream stream (see the module docstring)."""

    def __init__(
        self,
        config: Config,
        *,
        metrics: Metrics | None = None,
        on_health: Callable[[str | None], None] | None = None,
    ) -> None:
        self._config = config
        self._metrics = metrics if metrics is not None else Metrics()
        self._servers = servers(config.store)
        if not STREAM_NAME.fullmatch(config.store_stream):
            msg = f"store_stream must match {STREAM_NAME.pattern}, got {config.store_stream!r}"
            raise ValueError(msg)
        self._stream = stream = Stream(config.store_stream, secrets.token_hex(6))
        self._index = index = Index(config.transcript_status(), cluster=True)
        self._cache = MetaCache(int(config.meta_cache_mb * 1024 * 1024))
        metrics = self._metrics
        shared = Shared(config, metrics, stream, index)
        self._follower = follower = LogFollower(shared, self._cache, self)
        self._reads = StreamReads(shared, follower)
        self._reader = self._reads.metadata
        metrics.observe_cache(self._cache)
        self._link = Link()
        self._watch = Watch(
            stream.name, config.store_timeout_s, lambda: follower.applied, on_health
        )
        self._watch.register(metrics)
        self._committer = Committer(shared, self, follower, self._watch)
        self._starting: str | None = "connecting to the NATS cluster"  # None: started
        self._send, self._receive = trio.open_memory_channel[Write](config.stage_queue)
        self._events: trio.MemorySendChannel[Committed] | None = None
        # Nothing is queued for the transcriber at start-up: on a cluster pending chunks come
        # as work, partition by partition (cluster/work.py).
        self._pending: list[str] = []

    # -- lifecycle -------------------------------------------------------------------------

    async def run(
        self, *, task_status: trio.TaskStatus[JetStreamStore] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Connect, wait for the meta leader, create the stream, replay it, report ready;
        then follow it and commit until the writes end."""
        config, name = self._config, self._stream.name
        try:
            security = Security(config.store_tls_ca, config.store_tls_cert,
                                config.store_tls_key, config.store_creds)  # fmt: skip
            async with open_nats(
                self._servers, name=f"trio-audio-{self.node}", request_s=config.store_timeout_s,
                security=security, link=self._link,
            ) as nats:  # fmt: skip
                self._stream.nats = nats
                self._starting = "waiting for the JetStream meta leader"
                logger.info("connected to NATS; waiting for the JetStream meta leader")
                state = None
                refused_since = None
                while state is None:
                    await nats.wait_meta_leader()
                    try:
                        state = await nats.ensure_stream(
                            name,
                            [f"{name}.>"],
                            config.store_replicas,
                            config.store_dedupe_s,
                            max_bytes=config.store_max_bytes,
                            max_age_s=config.store_max_age_s,
                        )
                    except Unavailable as exc:
                        logger.info("the stream is not available yet (%s); retrying", exc)
                        await trio.sleep(0.5)
                    except NatsError as exc:
                        # A cluster still forming may lack the peers for a while: retry, then
                        # give up with the reason.
                        now = trio.current_time()
                        refused_since = refused_since if refused_since is not None else now
                        if now - refused_since < STREAM_CREATE_S:
                            logger.info("the stream cannot be created yet (%s); retrying", exc)
                            await trio.sleep(0.5)
                            continue
                        msg = (
                            f"cannot create the stream {name} with "
                            f"{config.store_replicas} replicas: {exc} (a cluster of fewer "
                            "servers needs a lower --store-replicas)"
                        )
                        raise StoreError(msg) from None
                self._starting = f"replaying the stream {name} ({state.messages} records)"
                # Replay skips the work references (half the records: nothing to index);
                # following then takes everything from the first record replay left.
                kinds = [f"{name}.*.*.{kind}" for kind in ("chunk.*", "update.*")]
                indexed = [*kinds, f"{name}.*.*.tombstone"]
                replaying = await retrying(lambda: nats.follow(name, indexed, 1))
                await self._follower.replay(replaying, state.messages)
                await replaying.close()
                follower = await retrying(
                    lambda: nats.follow(name, [f"{name}.>"], self._follower.applied + 1)
                )
                async with contextlib.AsyncExitStack() as stack:
                    if self._events is not None:
                        await stack.enter_async_context(self._events)
                    await stack.enter_async_context(self._receive)
                    nursery = await stack.enter_async_context(trio.open_nursery())
                    nursery.start_soon(self._follower.follow, follower, self._events)
                    self._starting = None  # replayed: it serves (the watch says when not)
                    nursery.start_soon(self._watch.run, nats)
                    task_status.started(self)
                    await self._committer.commit_all(self._next_batch, self._backlog)
                    nursery.cancel_scope.cancel()
        finally:
            self._send.close()
            self._stream.nats = None

    @property
    def node(self) -> str:
        """This process's id on the cluster (in the headers of what it publishes)."""
        return self._stream.node

    @property
    def nats(self) -> Nats:
        """The connection (while ``run`` runs); ``StoreUnavailable`` otherwise."""
        return self._stream.connection()

    starts_slowly = True  # a cluster to reach and a meta leader to wait for

    @property
    def health(self) -> str | None:
        """Why this node cannot serve now (None: it can): while starting, the step it is at
        (and why the connection fails, if it does); once running, the watch's problem."""
        if self._starting is not None:
            problem = self._link.problem if self._stream.nats is None else None
            return f"{self._starting}: {problem}" if problem else self._starting
        return self._watch.problem

    @property
    def position(self) -> int:
        """The last stream sequence this node has applied and announced: a read elsewhere
        that waits for it (``wait_followed``) sees every write this node answered."""
        return self._follower.announced

    async def wait_followed(self, seq: int) -> bool:
        """Wait until this node has applied stream sequence *seq*; False after twice
        ``store_timeout_s``."""
        return await self._follower.wait_applied(seq)

    async def applied_more(self) -> None:
        """Return once the follower has applied more of the stream."""
        await self._follower.progress.wait()

    async def announced_all(self) -> None:
        """Return once the events of what the follower has applied are sent (it applies a
        message to the index before it sends its events)."""
        await self._follower.wait_applied(self._follower.applied)

    def pending_key(self, chunk_id: str) -> tuple[str, str, int] | None:
        """``(user_id, session_id, seq)`` of the chunk while it is stored and ``pending``
        transcription (None: done, failed or deleted); unpacks nothing."""
        if self._index.status(chunk_id) != "pending":
            return None
        return self._index.key(chunk_id)

    def pending_now(self) -> list[tuple[str, str, str]]:
        """``(user_id, session_id, chunk_id)`` of every chunk ``pending`` transcription now,
        in user, session and seq order."""
        return self._index.pending_chunks()

    # -- the writers' side -----------------------------------------------------------------

    async def purge_user(self, user_id: str) -> list[str]:
        """Delete every chunk of a user on every node (a tombstone per session, then the
        messages purged from the stream); the ids deleted."""
        deleted: list[str] = []
        for session_id in self.session_ids(user_id):
            with contextlib.suppress(NotFound):
                deleted += await self.delete_session(user_id, session_id)
        return deleted

    # -- reads -----------------------------------------------------------------------------

    def stats(self) -> StoreStats:
        return StoreStats(
            chunks=len(self._index),
            audio_bytes=self._index.audio_bytes,
            log_bytes=self._follower.bytes,
            dead_bytes=0,
            compactions=0,
            replayed_records=self._follower.replayed,
            snapshot=None,
            backend="jetstream",
        )

    async def read_audio(self, chunk_id: str) -> tuple[bytes, str]:
        """The exact bytes uploaded for *chunk_id* (see ``StreamReads.audio``)."""
        return await self._reads.audio(chunk_id)
