"""What the session's parts share: the close codes, the errors that end a session, and what a
session needs of a transport and of the transcriber.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final, Protocol

from ...errors import ServiceError

CLOSE_NORMAL: Final = 1000
CLOSE_GOING_AWAY: Final = 1001
CLOSE_TIMEOUT_S: Final = 2.0  # for the closing handshake and the last error message


class Disconnected(Exception):
    """The peer has gone; nothing more can be sent or received."""


class Transport(Protocol):
    """What the session needs of a WebSocket library."""

    query: Mapping[str, str]
    headers: Mapping[str, str]  # of the handshake request, names in lower case

    async def receive(self) -> str | bytes: ...

    async def send(self, message: str) -> None: ...

    async def send_many(self, messages: list[str]) -> None:
        """*messages* in order, as few writes to the socket as the library allows."""

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
