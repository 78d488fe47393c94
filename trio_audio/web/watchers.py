"""What a session's watchers (WebSocket, SSE, console) are told, and the one place it is
published from.

Two inputs, one hub: the store's ``Committed`` events, handed over by the service's fan-out
(a chunk stored, a chunk's transcript stored, chunks deleted: what is durable), and the live
port (partial words, speech activity: what is not). Each is rendered once into its wire
message (``messages.render``, ``messages.live_message``), which every watcher sends as it
is. So a final transcript reaches a watcher only after it is durable: it is the stored
chunk's update, not the decoder's answer.

Neither input ever waits: the hub cuts off a watcher that falls behind. What web says of
its own (``session_end`` after ``POST .../end``) goes out once the events committed before it
have (``after_pending``: the fan-out's), so its session's finals come first.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..hub import Hub
from ..live import Live
from ..store.events import ChunksDeleted, ChunkStored, Committed
from .messages import live_message, render, wire


class Watchers:
    """Publishes into *hub*; the service's ``LivePort`` and the fan-out's watcher side."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        # Runs its argument once the events committed so far are handed on (the service
        # sets the fan-out's ``after_pending``; alone, at once).
        self.after_pending: Callable[[Callable[[], None]], None] = lambda then: then()

    def committed(self, event: Committed) -> None:
        """A durable change, to the watchers of its session (a new chunk not back to the
        connection that sent it: that one has its ack and metadata). Rendered only when
        someone would get it."""
        source = None
        if isinstance(event, ChunksDeleted):
            user_id, session_id = event.user_id, event.session_id
        else:
            user_id, session_id = event.chunk["user_id"], event.chunk["session_id"]
            if isinstance(event, ChunkStored):
                source = event.source
        if not self.hub.watched(user_id, session_id, source=source):
            return
        message = render(event)
        if message is not None:
            self.hub.publish(user_id, session_id, message, source=source)

    def publish(self, item: Live) -> None:
        """A live result (``LivePort``)."""
        if self.hub.watched(item.user_id, item.session_id):
            self.hub.publish(item.user_id, item.session_id, wire(live_message(item)))

    def say(self, user_id: str, session_id: str, message: dict[str, Any]) -> None:
        """A message of web's own (``session_end``) to the session's watchers, after what
        was committed before it."""
        text = wire(message)
        self.after_pending(lambda: self.hub.publish(user_id, session_id, text))
