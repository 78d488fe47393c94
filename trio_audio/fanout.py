"""The one consumer of the store's ``Committed`` events: hands them to watchers and the
transcriber.

Data flows one way: web -> pipeline -> store -> events -> (watchers, transcriber). Every
event goes to the watchers (``web/watchers.py`` renders it once for the session's hub
subscribers); new chunks also go to the transcriber. Neither consumer may block: the hub
drops a watcher that falls behind, and the transcriber defers what its lanes cannot take.
So the store's committer never waits on a slow client, and every event it sends has a
reader.

What is said after the fact (``session_end`` for ``POST .../end``) waits its turn:
``FanOut.after_pending`` runs it once every event committed before it was handed on, so a
watcher gets a session's finals before the end that summarises them.

Resource handling: ``FanOut.run`` owns the event channel and returns when the store closes it.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from typing import Final, Protocol

import trio

from .channels import waiting
from .store.events import ChunkStored, Committed

logger = logging.getLogger("trio_audio.fanout")

EVENTS_AT_ONCE: Final = 256  # events handled per wake-up at most (then it checkpoints)


class ChunkTaker(Protocol):
    def offer(self, event: ChunkStored) -> None: ...


class EventTaker(Protocol):
    def committed(self, event: Committed) -> None: ...


class FanOut:
    """Every event to the session's watchers, and every new chunk to the transcriber; until
    the store ends the stream."""

    def __init__(
        self,
        events: trio.MemoryReceiveChannel[Committed],
        watchers: EventTaker,
        transcriber: ChunkTaker,
    ) -> None:
        self._events = events
        self._watchers = watchers
        self._transcriber = transcriber
        self._handled = 0  # events handed on
        self._receiving = False  # inside the channel's receive (its only wait)
        self._due: deque[tuple[int, Callable[[], None]]] = deque()  # (events before, then)

    def after_pending(self, then: Callable[[], None]) -> None:
        """Call *then* once every event sent so far has been handed on (now, if none waits).

        Pending: those in the channel's buffer, and one more when the fan-out is inside
        ``receive`` but not parked there (an event handed to it, or taken, that it has not
        run with yet); it waits nowhere else."""
        stats = self._events.statistics()
        held = self._receiving and stats.tasks_waiting_receive == 0
        ticket = self._handled + stats.current_buffer_used + int(held)
        if ticket <= self._handled:
            _call(then)
        else:
            self._due.append((ticket, then))

    async def run(self) -> None:
        try:
            async with self._events:
                while True:
                    self._receiving = True
                    try:
                        first = await self._events.receive()
                    except trio.EndOfChannel:
                        break
                    finally:
                        self._receiving = False
                    for event in waiting(first, self._events, EVENTS_AT_ONCE):  # one wake-up
                        self._watchers.committed(event)
                        if isinstance(event, ChunkStored):
                            self._transcriber.offer(event)
                        self._handled += 1
                        while self._due and self._due[0][0] <= self._handled:
                            _call(self._due.popleft()[1])
        finally:
            while self._due:  # ended (or stopped): nothing else will come before these
                _call(self._due.popleft()[1])


def _call(then: Callable[[], None]) -> None:
    """What waited its turn; its failure is its own, not the fan-out's."""
    try:
        then()
    except Exception:
        logger.exception("a message after the committed events failed")
