"""The one consumer of the store's ``Committed`` events: hands them to watchers and the
transcriber.

Data flows one way: web -> pipeline -> store -> events -> (watchers, transcriber). Every
event goes to the watchers (``web/watchers.py`` renders it once for the session's hub
subscribers); new chunks also go to the transcriber. Neither consumer may block: the hub
drops a watcher that falls behind, and the transcriber defers what its lanes cannot take.
So the store's committer never waits on a slow client, and every event it sends has a
reader.

Resource handling: ``fan_out`` owns the event channel and returns when the store closes it.
"""

from __future__ import annotations

from typing import Final, Protocol

import trio

from .channels import waiting
from .store.events import ChunkStored, Committed

EVENTS_AT_ONCE: Final = 256  # events handled per wake-up at most (then it checkpoints)


class ChunkTaker(Protocol):
    def offer(self, event: ChunkStored) -> None: ...


class EventTaker(Protocol):
    def committed(self, event: Committed) -> None: ...


async def fan_out(
    events: trio.MemoryReceiveChannel[Committed], watchers: EventTaker, transcriber: ChunkTaker
) -> None:
    """Every event to the session's watchers, and every new chunk to the transcriber; until
    the store ends the stream."""
    async with events:
        async for first in events:
            for event in waiting(first, events, EVENTS_AT_ONCE):  # a batch's, in one wake-up
                watchers.committed(event)
                if isinstance(event, ChunkStored):
                    transcriber.offer(event)
