"""The one consumer of the store's ``Committed`` events: hands them to watchers and the
transcriber.

Data flows one way: web -> pipeline -> store -> events -> (hub -> watchers, transcriber).
Neither consumer may block: the hub drops a watcher that falls behind, and the transcriber
defers what its lanes cannot take. So the store's committer never waits on a slow client.

Resource handling: ``fan_out`` owns the event channel and returns when the store closes it.
"""

from __future__ import annotations

from typing import Protocol

import trio

from .hub import Hub
from .store.events import ChunkStored, Committed


class ChunkTaker(Protocol):
    def offer(self, event: ChunkStored) -> None: ...


async def fan_out(
    events: trio.MemoryReceiveChannel[Committed], hub: Hub, transcriber: ChunkTaker
) -> None:
    """New chunks' metadata to the session's watchers (not back to the connection that sent
    it), and every new chunk to the transcriber; until the store ends the stream."""
    async with events:
        async for event in events:
            if isinstance(event, ChunkStored):
                chunk = event.chunk
                message = {"type": "metadata", **chunk}
                hub.publish(chunk["user_id"], chunk["session_id"], message, source=event.source)
                transcriber.offer(event)
