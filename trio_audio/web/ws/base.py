"""What the session's parts share: the close codes, the hand-off, the errors that end a session,
and what a session needs of a transport and of the transcriber.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final, Protocol, TypeVar

import trio

from ...errors import ServiceError

CLOSE_NORMAL: Final = 1000
CLOSE_GOING_AWAY: Final = 1001
CLOSE_TIMEOUT_S: Final = 2.0  # for the closing handshake and the last error message

T = TypeVar("T")


async def put(channel: trio.MemorySendChannel[T], value: T) -> None:
    """Send *value* at once while *channel* has room, else wait for room: a frame's answers
    and hand-offs skip a trip through the scheduler each (the task checkpoints elsewhere
    once per frame: its receive, or the reply it waits for)."""
    try:
        channel.send_nowait(value)
    except trio.WouldBlock:
        await channel.send(value)


class Disconnected(Exception):
    """The peer has gone; nothing more can be sent or received."""


class Transport(Protocol):
    """What the session needs of a WebSocket library."""

    query: Mapping[str, str]
    headers: Mapping[str, str]  # of the handshake request, names in lower case

    async def receive(self) -> str | bytes: ...

    async def send(self, message: str) -> None: ...

    async def close(self, code: int, reason: str) -> None: ...


class Finalizer(Protocol):
    """What the session needs of the transcriber."""

    async def finalize(self, user_id: str, session_id: str) -> None: ...

    def lag_s(self, key: tuple[str, str] | None = None) -> float: ...

    def set_vocabulary(self, user_id: str, session_id: str, terms: tuple[str, ...]) -> None: ...


class SessionError(Exception):
    """Ends a session: send *error* and close with its close code."""

    def __init__(self, error: ServiceError) -> None:
        super().__init__(error.detail)
        self.error = error


def first_leaf(group: BaseExceptionGroup[SessionError]) -> SessionError:
    first = group.exceptions[0]
    return first_leaf(first) if isinstance(first, BaseExceptionGroup) else first
