"""Messages per session for its watchers (WebSocket, SSE, console), each rendered once.

Only ``web/`` publishes (``watchers.py``: the store's committed events and the live port's
results; ``session_events.py``: ``session_end``), each message rendered once into a ``Wire``
(its JSON text), which every watcher sends as it is.

Each watcher gets its own bounded channel. ``publish`` never waits: a watcher whose channel
is full has fallen too far behind, so its channel is closed and it is marked ``overflowed``;
the WebSocket handler then disconnects it with a clear code. A slow reader can therefore never
make the server buffer without bound, nor slow down anyone else.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import attrs
import trio


@attrs.frozen
class Wire:
    """One message as watchers send it: its ``type``, its JSON text, and the chunk it is
    about (None: not one chunk's)."""

    type: str
    text: str
    chunk_id: str | None = None


Message = Wire


class Subscription:
    """One watcher of one session: ``async for message in sub.receive``."""

    def __init__(self, queue_size: int, source: str | None) -> None:
        self._send, self.receive = trio.open_memory_channel[Message](queue_size)
        self.source = source
        self.overflowed = False

    def offer(self, message: Message) -> None:
        if self.overflowed:
            return
        try:
            self._send.send_nowait(message)
        except trio.WouldBlock:
            self.overflowed = True
            self._send.close()
        except trio.BrokenResourceError:
            pass  # the watcher has gone; unsubscribe follows

    def close(self) -> None:
        self._send.close()


class Hub:
    """Subscriptions by ``(user_id, session_id)``."""

    def __init__(self, queue_size: int) -> None:
        self.queue_size = queue_size
        self._subs: dict[tuple[str, str], set[Subscription]] = {}
        self.published = 0

    @contextmanager
    def subscribe(
        self, user_id: str, session_id: str, *, source: str | None = None
    ) -> Iterator[Subscription]:
        """Watch a session; messages caused by the connection *source* (its own id) are not
        echoed back to it."""
        key = (user_id, session_id)
        sub = Subscription(self.queue_size, source)
        self._subs.setdefault(key, set()).add(sub)
        try:
            yield sub
        finally:
            sub.close()
            subs = self._subs.get(key)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self._subs[key]

    def publish(
        self, user_id: str, session_id: str, message: Message, *, source: str | None = None
    ) -> None:
        for sub in self._subs.get((user_id, session_id), ()):
            if source is None or sub.source != source:
                sub.offer(message)
                self.published += 1

    def watched(self, user_id: str, session_id: str, *, source: str | None = None) -> bool:
        """Whether a message of *source* for this session would reach anyone (so whether it
        is worth rendering)."""
        subs = self._subs.get((user_id, session_id), ())
        return any(source is None or sub.source != source for sub in subs)

    def watchers(self, user_id: str, session_id: str) -> int:
        return len(self._subs.get((user_id, session_id), ()))

    @property
    def sessions_watched(self) -> int:
        return len(self._subs)
