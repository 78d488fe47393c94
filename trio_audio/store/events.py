"""What goes into the store (writes) and what comes out of it (``Committed`` events).

Writes travel on the committer's one bounded channel: a pipeline ``Job`` (its parts become
CHUNK records), an ``Update`` (replace top-level fields of a chunk: transcripts) or a
``Delete`` (a TOMBSTONE). Each carries a one-shot ``Reply`` the committer answers once the
batch it went in is durable (or has failed).

After each durable batch the committer sends one event per change, in commit order, into the
store's event channel; the service's fan-out hands them to the live watchers and the
transcriber. A distributed backend produces the same events from its replicated log.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

import attrs
import trio

from ..errors import Overloaded, ServiceError
from ..models import Job, Reply

if TYPE_CHECKING:
    from ..config import Config
    from .index import Entry


@attrs.define(eq=False)
class Update:
    """Durably replace top-level *fields* of chunk *chunk_id*; answered with its chunk JSON."""

    chunk_id: str
    fields: dict[str, Any]
    reply: Reply = attrs.field(factory=Reply)


@attrs.define(eq=False)
class Delete:
    """Durably delete *chunk_ids* (or, with *session*, every chunk of that session).

    Answered with the ids that were deleted; ``NotFound`` when none of them was stored."""

    chunk_ids: list[str] = attrs.field(factory=list)
    session: tuple[str, str] | None = None  # (user_id, session_id)
    reply: Reply = attrs.field(factory=Reply)


Write = Job | Update | Delete


@attrs.frozen
class ChunkStored:
    """A new chunk is durable. *source* names the connection that sent it (its own socket
    skips the echo); *speech_pcm* is its 16 kHz mono PCM when the pipeline kept it."""

    chunk: dict[str, Any]
    source: str | None = None
    speech_pcm: bytes | None = None


@attrs.frozen
class ChunkUpdated:
    """Fields of a stored chunk changed (its chunk JSON as it is now)."""

    chunk: dict[str, Any]


@attrs.frozen
class ChunksDeleted:
    """Chunks of one session were deleted (*seqs*: theirs, in the same order)."""

    user_id: str
    session_id: str
    chunk_ids: list[str]
    seqs: list[int] = attrs.field(factory=list)


Committed = ChunkStored | ChunkUpdated | ChunksDeleted


def deleted_events(removed: list[tuple[str, Entry]]) -> list[Committed]:
    """One ``ChunksDeleted`` per session, from what ``Index.apply_tombstone`` removed."""
    by_session: dict[tuple[str, str], ChunksDeleted] = {}
    for chunk_id, entry in removed:
        key = (entry.user_id, entry.session_id)
        event = by_session.setdefault(key, ChunksDeleted(*key, []))
        event.chunk_ids.append(chunk_id)
        event.seqs.append(entry.seq)
    return list(by_session.values())


class CommitChannels:
    """The writers' side every backend shares: one bounded channel of writes into its
    committer, and one channel of ``Committed`` events out. Mixed into ``Store`` and
    ``JetStreamStore``, which set ``_config``, ``_send`` and ``_events`` (None until a
    consumer asks for them)."""

    _config: Config
    _send: trio.MemorySendChannel[Write]
    _receive: trio.MemoryReceiveChannel[Write]
    _events: trio.MemorySendChannel[Committed] | None

    async def _next_batch(self) -> list[Write] | None:
        """The committer's next group of writes: the first to arrive, then whatever follows
        within ``commit_wait_ms``, up to ``commit_batch_max``; None once every sender is
        closed and the channel is empty."""
        config, receive = self._config, self._receive
        try:
            batch = [await receive.receive()]
        except trio.EndOfChannel:
            return None
        wait = config.commit_wait_ms / 1000
        with trio.move_on_after(wait), contextlib.suppress(trio.EndOfChannel, trio.WouldBlock):
            while len(batch) < config.commit_batch_max:
                try:  # what is waiting already is taken without a trip through the scheduler
                    batch.append(receive.receive_nowait())
                except trio.WouldBlock:
                    if wait <= 0:
                        raise
                    batch.append(await receive.receive())
        return batch

    def _backlog(self) -> int:
        """Writes waiting for the committer now."""
        return self._receive.statistics().current_buffer_used

    def events(self) -> trio.MemoryReceiveChannel[Committed]:
        """The channel of ``Committed`` events, for the one consumer; call before ``run``.

        Without a consumer no events are sent. The consumer must keep reading: the committer
        waits for room (the channel holds ``event_queue`` events)."""
        if self._events is not None:
            msg = "the store's events have a consumer already"
            raise RuntimeError(msg)
        send, receive = trio.open_memory_channel[Committed](self._config.event_queue)
        self._events = send
        return receive

    def open_writes(self) -> trio.MemorySendChannel[Write]:
        """A sender into the committer's channel; its owner closes it when done."""
        return self._send.clone()

    def close(self) -> None:
        """No more writes from the store's own methods; ``run`` ends once the other senders
        (``open_writes``) are closed too and the committer has written what they sent."""
        self._send.close()

    async def submit(self, write: Write) -> Any:
        """Queue *write* for the committer and wait for its durable result.

        Raises ``Overloaded`` (retryable) when the store is closing, and whatever the
        committer answered the write with (``NotFound``, ``SeqConflict``, ...)."""
        await self._queue(write)
        return await write.reply.wait()

    async def _queue(self, write: Write) -> None:
        """Hand *write* to the committer (waiting for room); when the store is closing its
        reply fails with ``Overloaded`` (retryable) instead."""
        try:
            await self._send.send(write)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            write.reply.fail(Overloaded("the store is closing; retry later"))

    async def update(self, chunk_id: str, fields: dict[str, Any]) -> dict[str, Any]:
        """Durably replace top-level fields of a stored chunk; its new chunk JSON.
        ``NotFound`` for an unknown chunk."""
        chunk: dict[str, Any] = await self.submit(Update(chunk_id, fields))
        return chunk

    async def update_many(
        self, updates: list[tuple[str, dict[str, Any]]]
    ) -> list[dict[str, Any] | ServiceError]:
        """``update`` of each ``(chunk_id, fields)``, queued in order before any is waited
        for, so they share group commits and commit in that order (their ``ChunkUpdated``
        events too); per update, its new chunk JSON or the error it was answered with."""
        writes = [Update(chunk_id, fields) for chunk_id, fields in updates]
        for write in writes:
            await self._queue(write)
        out: list[dict[str, Any] | ServiceError] = []
        for write in writes:
            try:
                out.append(await write.reply.wait())
            except ServiceError as exc:
                out.append(exc)
        return out

    async def delete_chunk(self, chunk_id: str) -> None:
        """Durably delete one chunk; ``NotFound`` if it is not stored."""
        await self.submit(Delete([chunk_id]))

    async def delete_session(self, user_id: str, session_id: str) -> list[str]:
        """Durably delete every chunk of a session; the ids deleted. ``NotFound`` if the
        session has no chunks."""
        deleted: list[str] = await self.submit(Delete(session=(user_id, session_id)))
        return deleted
