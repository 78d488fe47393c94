"""``Session``: one connection speaking the protocol; it runs the tasks of its parts.

Each task is a part of its own (``handshake``, ``replay``, ``reader``, ``acker``, ``relay``,
``writer``) over the state they share (``state.SessionState``); this class only puts them
together: the handshake, then the stream's tasks in one nursery, then the close.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import trio

from ...errors import InternalError
from ...hub import Subscription
from ..messages import Start, session_end_message
from ..session_events import session_summary
from .acker import Acker
from .base import (
    CLOSE_GOING_AWAY,
    CLOSE_NORMAL,
    CLOSE_TIMEOUT_S,
    Disconnected,
    SessionError,
    first_leaf,
)
from .handshake import Handshake
from .reader import Reader
from .relay import Relay
from .replay import Replay
from .writer import Writer

logger = logging.getLogger("trio_audio.ws")


class Session(Handshake, Replay, Reader, Acker, Relay, Writer):
    """One connection speaking the protocol over a ``Transport``: the handshake, the stream's
    five tasks (reader, acker, relay, flow, writer, and the writer's watchdog), the close."""

    async def run(self) -> None:
        self.ctx.active += 1
        self.ctx.sessions.add(self)
        if self.ctx.shutdown.is_set():
            self.stop_reading()
        try:
            await self._run()
        except Disconnected:
            pass
        except Exception:  # a bug must end this session only, never the listener
            logger.exception("WebSocket session failed")
            await self._fail(InternalError("the server failed this session"))
        finally:
            self._release()

    async def _run(self) -> None:
        start = None
        with self._handshaking:  # shutdown cancels it: a socket that never starts is let go
            try:
                start = await self._handshake()
            except SessionError as exc:
                await self._fail(exc.error)
                return
        if start is None:
            await self._close(CLOSE_GOING_AWAY, "server shutting down")
            return
        self.start = start
        if start.vocabulary is not None and self.ctx.transcriber is not None:
            self.ctx.transcriber.set_vocabulary(start.user_id, start.session_id, start.vocabulary)
        ended, gone = False, False
        with self.ctx.hub.subscribe(start.user_id, start.session_id, source=self.id) as sub:
            try:
                ended = await self._stream(start, sub)
            except* SessionError as group:
                self._end_with(first_leaf(group).error)
            except* Disconnected:
                gone = True
        if gone:
            return
        if self.error is not None:
            await self._fail(self.error)
        elif ended:
            await self._close(CLOSE_NORMAL, "session ended")
        else:
            await self._close(CLOSE_GOING_AWAY, "server shutting down")

    async def _stream(self, start: Start, sub: Subscription) -> bool:
        """Run a started session's tasks until it ends; True if the client ended it.

        Whatever ends it (``end``, shutdown or an error), the chunks taken so far are
        answered first (an error or shutdown waits at most ``CLOSE_TIMEOUT_S`` for them),
        then the writer sends everything queued, and only then does ``_run`` close.
        """
        out, out_recv = trio.open_memory_channel[str](self.config.ws_queue)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._writer, out_recv)
            nursery.start_soon(self._watchdog)
            async with out:
                await self._started_and_replay(start, out)
                async with trio.open_nursery() as tasks:
                    tasks.start_soon(self._relay, sub, out.clone())
                    tasks.start_soon(self._flow, out.clone())
                    tasks.start_soon(self._acker, out.clone())
                    ended = await self._reader(start, out.clone())
                    clean = ended and self.error is None
                    with trio.move_on_after(math.inf if clean else CLOSE_TIMEOUT_S):
                        await self._drained.wait()  # bounded on shutdown: resume covers it
                    if clean and self.error is None:
                        # The relay still runs: each final the finalize brings out is sent
                        # as its `transcript`, before `session_end`.
                        await self._finalize(start)
                        # The finals are stored; they reach this socket through the fan-out,
                        # which may still be handing them on.
                        with trio.move_on_after(CLOSE_TIMEOUT_S):
                            while self.final_due:
                                await self._final_relayed.wait()
                        self._finish_relay()  # it sends what is queued, then ends
                        self._flowing.cancel()
                        tasks.cancel_scope.deadline = trio.current_time() + CLOSE_TIMEOUT_S
                    else:
                        tasks.cancel_scope.cancel()  # the relay and flow run until told
                if ended and self.error is None:
                    await self._send(out, await self._session_end(start))
            # Every send end is closed now: the writer ends once it has sent what is queued.
            nursery.cancel_scope.deadline = trio.current_time() + CLOSE_TIMEOUT_S
        return ended

    async def _session_end(self, start: Start) -> dict[str, Any]:
        """The session's summary (as ``POST .../end`` gives it) and this stream's counts."""
        session = await session_summary(self.ctx.store, start.user_id, start.session_id) or {
            "user_id": start.user_id, "session_id": start.session_id,
            "chunk_count": 0, "duration_ms": 0.0, "transcript": None,
        }  # fmt: skip
        stream = {"stored": self.stored, "duplicates": self.duplicates, "next_seq": self.next_seq}
        return session_end_message({**session, **stream})
