"""The wait for ``start``: authentication and admission against the session caps."""

from __future__ import annotations

from typing import Any

import trio

from ...errors import BadMessage, IdleTimeout, Overloaded, ServiceError
from ..messages import Start, parse_control, parse_start
from .base import SessionError
from .state import SessionState


class Handshake(SessionState):
    """The handshake: the first message must be a valid ``start`` from a user with room."""

    async def _handshake(self) -> Start:
        with trio.move_on_after(self.config.ws_idle_timeout_s):
            message = await self.transport.receive()
            if isinstance(message, bytes):
                msg = "the first message must be a JSON 'start', not audio"
                raise SessionError(BadMessage(msg))
            try:
                control = parse_control(message)
                user = self._authenticate(control)
                start = parse_start(control, self.transport.query, user)
                self._admit(start.user_id)
            except ServiceError as exc:
                raise SessionError(exc) from None
            return start
        msg = f"no 'start' within {self.config.ws_idle_timeout_s:g} s"
        raise SessionError(IdleTimeout(msg))

    def _authenticate(self, control: dict[str, Any]) -> str | None:
        """With auth on: the user of the token in the start message, ?token= or the header."""
        token = control.get("token") or self.transport.query.get("token")
        self._token = token if isinstance(token, str) else None
        self._token_generation = self.ctx.access.generation
        return self.ctx.access.user_for_request(self.transport.headers, self._token)

    def _admit(self, user_id: str) -> None:
        """Count the session in, or refuse it past the overall and per-user caps."""
        config, per_user = self.config, self.ctx.per_user
        if sum(per_user.values()) >= config.ws_max_sessions:
            msg = f"the server has its {config.ws_max_sessions} sessions open; retry later"
            raise Overloaded(msg)
        if per_user.get(user_id, 0) >= config.ws_max_sessions_per_user:
            msg = f"user {user_id!r} has {config.ws_max_sessions_per_user} sessions open already"
            raise Overloaded(msg)
        per_user[user_id] = per_user.get(user_id, 0) + 1
        self.admitted = user_id
