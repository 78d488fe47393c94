"""Who may send, and how much: one object the HTTP app and the WebSocket sessions share.

``Access`` holds the tokens (None: auth off) and the per-user rate limit, so an upload over
HTTP and a chunk over either WebSocket transport are authenticated and counted the same way,
against the same buckets.
"""

from __future__ import annotations

from typing import Protocol

import attrs

from .auth import RateLimiter, TokensFile, bearer


class Headers(Protocol):
    """Request headers: a mapping, or Quart's case-insensitive ``Headers``."""

    def get(self, key: str, /) -> str | None: ...


def _no_limit() -> RateLimiter:
    return RateLimiter(0, 1)


@attrs.frozen
class Access:
    tokens: TokensFile | None = None  # None: auth off
    rate: RateLimiter = attrs.field(factory=_no_limit)

    @property
    def auth(self) -> bool:
        return self.tokens is not None

    def user_for_request(self, headers: Headers, token: str | None = None) -> str | None:
        """The user a request acts as: None with auth off, else its token's user.

        The token is *token* when the caller has one from elsewhere (a WebSocket's ``start``
        message or ``?token=``), else the ``Authorization: Bearer`` header's. ``Unauthorized``
        when it is missing or unknown.
        """
        if self.tokens is None:
            return None
        return self.tokens.user_for(token or bearer(headers.get("authorization")))

    def current(self) -> None:
        """Look at the tokens file now if it is time to (an idle server re-reads it too)."""
        if self.tokens is not None:
            self.tokens.current()

    @property
    def generation(self) -> int:
        """Changes of the tokens taken in so far: a holder of a checked token (an open
        WebSocket) checks it again when this moves."""
        return self.tokens.generation if self.tokens is not None else 0

    def take(self, user_id: str, n: int = 1) -> None:
        """Spend *n* uploads of *user_id*'s allowance, or raise ``RateLimited``."""
        self.rate.take(user_id, n)
