"""A session's shared state (``SessionState``, the base of each task's part of ``Session``) and
the context every session shares (``WsContext``).
"""

from __future__ import annotations

import contextlib
import secrets
from collections import deque
from typing import Any

import attrs
import trio

from ...budget import Inflight, UserBudgets
from ...channels import put
from ...config import Config
from ...errors import Overloaded, ServiceError
from ...hub import Hub
from ...metrics import Metrics
from ...models import Job
from ...pipeline.pipeline import Ingress
from ...store import StoreBackend
from ..access import Access
from ..messages import Start, dumps, error_message
from ..origins import Origins
from ..watchers import Watchers
from .base import CLOSE_TIMEOUT_S, Disconnected, Finalizer, Transport


@attrs.define
class WsContext:
    """What every session needs, made once in ``serve`` and shared by both transports."""

    config: Config
    store: StoreBackend
    hub: Hub
    metrics: Metrics
    shutdown: trio.Event
    transcriber: Finalizer | None = None
    access: Access = attrs.field(factory=Access)  # tokens and rate limit, shared with HTTP
    origins: Origins | None = None  # who may open a socket with auth off (None: anyone)
    user_bytes: UserBudgets = attrs.field(  # unanswered chunk bytes per user, all sockets
        default=attrs.Factory(lambda ctx: UserBudgets(ctx.config.ws_user_inflight_bytes),
                              takes_self=True))  # fmt: skip
    active: int = 0
    per_user: dict[str, int] = attrs.field(factory=dict)
    sessions: set[SessionState] = attrs.field(factory=set)  # open ones, told to stop on shutdown
    watchers: Watchers = attrs.field(  # what web says to a session's watchers (session_end)
        default=attrs.Factory(lambda ctx: Watchers(ctx.hub), takes_self=True))  # fmt: skip

    def stop_sessions(self) -> None:
        """Shutdown: every open session (of both transports) stops reading."""
        for session in list(self.sessions):
            session.stop_reading()


class SessionState:
    """One connection's state, and what every task of it does alike: send, end the session
    with an error, stop reading, give back its slot, close.

    Channels and their owners: ``ack_send`` is the reader's, ``ack_recv`` the acker's; the
    outgoing messages channel is made per stream in ``Session._stream``: the writer owns its
    receive end, and every task that sends owns a clone of the send end, closed when it ends,
    so the writer sees the channel end once the last of them is done.
    """

    def __init__(self, transport: Transport, ctx: WsContext, ingress: Ingress) -> None:
        self.id = secrets.token_hex(8)  # names this connection's jobs: it skips their echo
        self.transport = transport
        self.ctx = ctx
        self.config = ctx.config
        self.ingress = ingress
        self.ack_send, self.ack_recv = trio.open_memory_channel[tuple[int, Job]](
            ctx.config.ws_max_inflight
        )
        self.unanswered: deque[float] = deque()  # receive times of chunks not yet answered
        self.inflight = Inflight(ctx.config.ws_max_inflight_bytes, ctx.user_bytes)  # their bytes
        self._answered = trio.Event()  # set each time the acker answers a chunk
        self._drained = trio.Event()  # set when the acker has answered the last chunk
        self._flowing = trio.CancelScope()  # the flow task's
        self._relay_waiting = trio.CancelScope()  # the relay's wait for its next message
        self._relay_finishing = False
        self.final_due: set[str] = set()  # this stream's chunks whose final is still to come
        self._final_relayed = trio.Event()  # set (and replaced) each time a final is relayed
        self._reading = trio.CancelScope()  # the reader's; shutdown or an error cancels it
        self._handshaking = trio.CancelScope()  # the wait for 'start'; shutdown cancels it
        self.error: ServiceError | None = None  # the first thing that went wrong: the end
        self.jammed = False  # a send timed out: the client is not reading, send no more
        self._sending = trio.CancelScope()  # the writer's current send
        self._watching = trio.CancelScope()  # the watchdog's; the writer ends it when done
        self._send_started: float | None = None  # when it began; None: not sending
        self._released = False
        self.replayed: set[str] = set()
        self.replayed_final: set[str] = set()  # chunks whose final transcript it replayed
        self.stored = 0
        self.duplicates = 0
        self.next_seq = 0
        self.start: Start | None = None
        self.admitted: str | None = None  # the user this session is counted against
        self._not_taken = Overloaded("not taken: the server is shutting down")
        self._token: str | None = None  # the token it authenticated with (auth on)
        self._token_generation = 0

    def _release(self) -> None:
        """Give back this session's slot (once): at its end, or when its client is cut off."""
        if self._released:
            return
        self._released = True
        self.inflight.close()
        self.ctx.sessions.discard(self)
        self.ctx.active -= 1
        if self.admitted is not None:
            left = self.ctx.per_user[self.admitted] - 1
            if left:
                self.ctx.per_user[self.admitted] = left
            else:
                del self.ctx.per_user[self.admitted]

    def _end_with(self, error: ServiceError) -> None:
        """End the session with *error* (the first one wins): stop reading, answer, close."""
        if self.error is None:
            self.error = error
            self.ctx.metrics.failed(error.code)  # now: its slot may be freed before the close
        self._reading.cancel()

    def stop_reading(self) -> None:
        """Shutdown: read no more; answer what was taken, then close 1001."""
        self._handshaking.cancel()
        self._reading.cancel()

    @staticmethod
    async def _send(out: trio.MemorySendChannel[str], message: dict[str, Any]) -> None:
        await put(out, dumps(message))

    def _wants_metadata(self, seq: int) -> bool:
        every = self.start.metadata_every if self.start is not None else 1
        return every == 1 or (every > 0 and seq % every == 0)

    async def _wait_answered(self) -> None:
        while self.unanswered:
            self._answered = trio.Event()
            await self._answered.wait()

    async def _finalize(self, start: Start) -> None:
        if self.ctx.transcriber is not None:
            await self.ctx.transcriber.finalize(start.user_id, start.session_id)

    async def _fail(self, error: ServiceError) -> None:
        if error is not self.error:  # that one was counted when it happened
            self.ctx.metrics.failed(error.code)
        if not self.jammed:  # else the error would only queue behind what it never read
            with trio.move_on_after(CLOSE_TIMEOUT_S):
                try:
                    await self.transport.send(dumps(error_message(error)))
                except Disconnected:
                    return
        await self._close(error.close_code, error.code)

    async def _close(self, code: int, reason: str) -> None:
        with trio.move_on_after(CLOSE_TIMEOUT_S), contextlib.suppress(Disconnected):
            await self.transport.close(code, reason)
