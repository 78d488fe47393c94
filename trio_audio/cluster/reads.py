"""Reads of the JetStream store's stream: chunk metadata and audio by stream sequence.

The index knows where each chunk lies (the stream sequence of its chunk message and of its
update messages); ``metadata`` gets those messages' headers, a few at once, for the index's
reads (``store/reads.py``: through the metadata cache), and ``audio`` a chunk message's body.

Read-your-writes: on the node that acknowledged a write, always (but for a follower lagging
past twice ``store_timeout_s``). On another node once its follower has applied it:
milliseconds later on a healthy cluster; a client that sends the ``Trio-Audio-Position`` a
write's answer carried makes the node wait (up to twice ``store_timeout_s``) until its
follower has applied that much (``JetStreamStore.position``, ``wait_followed``). Audio
reads: a direct get (any replica) that finds no message is asked again of the stream's
leader, and again while the cluster does not answer (up to twice ``store_timeout_s``); a
metadata read that finds no message is asked again of the leader too: a replica that lags
is no deletion. Only a tombstone makes a chunk gone.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, Final

import trio

from ..errors import InternalError, NotFound, StoreUnavailable
from ..store.index import Location
from ..store.reads import Read, apply_patch
from .bridge import Message, MessageNotFound, NatsError, Unavailable
from .connect import Nats
from .follow import LogFollower
from .stream import META, Shared, from_header

logger = logging.getLogger("trio_audio.cluster.jetstream")

READ_PAUSE_S: Final = 0.1  # between tries of an audio read the cluster cannot answer yet
READS_AT_ONCE: Final = 16  # gets of chunk metadata by stream sequence in flight at once


class StreamReads:
    """Chunk metadata and audio read from the stream (see the module docstring)."""

    def __init__(self, shared: Shared, follower: LogFollower) -> None:
        self._config, self._stream, self._index = shared.config, shared.stream, shared.index
        self._follower = follower

    async def _get(self, nats: Nats, seq: int) -> Message:
        """The message at *seq*: a direct get (any replica), and when that finds none, a get
        from the stream's leader (a replica behind is no deletion); ``MessageNotFound`` only
        when the leader has none either."""
        try:
            return await nats.get(self._stream.name, seq)
        except MessageNotFound:
            message = await nats.get(self._stream.name, seq, direct=False)
            logger.info("a replica lagged on record %d; the stream leader had it", seq)
            return message

    async def metadata(self, locations: list[Location]) -> list[Read]:
        """The metadata at each of *locations* (None: its message is gone): the headers of
        its chunk message, with its update messages applied; gets by stream sequence, a
        few at once."""
        nats = self._stream.connection()
        limiter = trio.CapacityLimiter(READS_AT_ONCE)

        async def one(seq: int) -> dict[str, Any] | None:
            async with limiter:
                try:
                    message = await self._get(nats, seq)
                except MessageNotFound:
                    return None
                except Unavailable:
                    msg = "the store cluster does not answer; retry later"
                    raise StoreUnavailable(msg, self._config.retry_after_s) from None
                except NatsError as exc:
                    msg = f"the store cluster failed to read record {seq}: {exc}"
                    raise InternalError(msg) from None
            value: dict[str, Any] = from_header(message.headers[META])
            return value

        seqs = sorted({p.offset for loc in locations for p in (loc.record, *loc.updates)})
        got: dict[int, dict[str, Any] | None] = {}

        async def fetch(seq: int) -> None:
            got[seq] = await one(seq)

        async with trio.open_nursery() as nursery:
            for seq in seqs:
                nursery.start_soon(fetch, seq)
        out: list[Read] = []
        for location in locations:
            base = got[location.record.offset]
            meta = dict(base) if base is not None else None
            for update in location.updates:
                patch = got[update.offset]
                if meta is None or patch is None:
                    meta = None
                    break
                apply_patch(meta, patch)
            out.append((meta, None))
        return out

    async def audio(self, chunk_id: str) -> tuple[bytes, str]:
        """The exact bytes uploaded for *chunk_id*, fetched from the stream by sequence.

        A replica that has not caught up answers a direct get with "no message": that is
        asked again of the stream's leader. Only a chunk the leader no longer has, once this
        node has applied the stream that far and no longer indexes the chunk, is gone (a
        tombstone); one still indexed aged out (``--store-max-age``) or was removed by
        hand. While the cluster does not answer, the read is tried again for up to twice
        ``store_timeout_s``, then 503."""
        seq = self._index.stream_seq(chunk_id)
        if seq is None:
            msg = f"no chunk {chunk_id!r}"
            raise NotFound(msg)
        deadline = trio.current_time() + self._config.store_timeout_s * 2
        while True:
            nats = self._stream.connection()
            try:
                message = await self._get(nats, seq)
                try:
                    meta = from_header(message.headers[META])
                except (KeyError, ValueError):
                    meta = {}
                return message.data, str(meta.get("content_type", "application/octet-stream"))
            except MessageNotFound:
                break
            except Unavailable:
                if trio.current_time() > deadline:
                    msg = "the store cluster does not answer; retry later"
                    raise StoreUnavailable(msg, self._config.retry_after_s) from None
                await trio.sleep(READ_PAUSE_S)
            except NatsError as exc:
                msg = f"the store cluster failed to read chunk {chunk_id!r}: {exc}"
                raise InternalError(msg) from None
        with contextlib.suppress(NatsError):  # a tombstone before it: this node applies it
            await self._follower.wait_applied((await nats.stream_state(self._stream.name)).last_seq)
        if not self._index.has(chunk_id):
            msg = f"chunk {chunk_id!r} was deleted"
        else:
            msg = f"chunk {chunk_id!r} is no longer in the stream (aged out or removed)"
        raise NotFound(msg)
