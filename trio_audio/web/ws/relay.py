"""The relay (the session's live results from the hub) and the flow reporter (``flow``, and the
end of a session whose token was revoked).
"""

from __future__ import annotations

import time

import trio

from ...errors import ServiceError, SlowReader, Unauthorized
from ...hub import Subscription, Wire
from ..messages import flow_message
from .state import SessionState


class Relay(SessionState):
    """The relay and flow tasks."""

    async def _relay(self, sub: Subscription, out: trio.MemorySendChannel[str]) -> None:
        """The session's results from others (HTTP uploads, other sockets, transcripts,
        deletions), as rendered once for every watcher; none that the resume replayed. Until
        the subscription ends or ``_finish_relay``: then what is queued still goes."""
        async with out:
            while (message := await self._relayed(sub)) is not None:
                if message.type == "transcript" and message.chunk_id is not None:
                    self.final_due.discard(message.chunk_id)  # a final: chunks have one
                    self._final_relayed.set()
                    self._final_relayed = trio.Event()
                if message.chunk_id is not None and (
                    (message.type == "metadata" and message.chunk_id in self.replayed)
                    or (message.type == "transcript" and message.chunk_id in self.replayed_final)
                ):
                    continue
                await out.send(message.text)
            if sub.overflowed:
                msg = f"more than {self.config.ws_queue} results waited for this client to read"
                self._end_with(SlowReader(msg))

    async def _relayed(self, sub: Subscription) -> Wire | None:
        """The subscription's next message; None at its end, or once the relay is finishing
        and nothing is queued. (A cancelled ``receive`` takes nothing from the channel.)"""
        while True:
            if self._relay_finishing:
                try:
                    return sub.receive.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel):
                    return None
            with trio.CancelScope() as self._relay_waiting:
                try:
                    return await sub.receive.receive()
                except trio.EndOfChannel:
                    return None

    def _finish_relay(self) -> None:
        self._relay_finishing = True
        self._relay_waiting.cancel()

    async def _flow(self, out: trio.MemorySendChannel[str]) -> None:
        """``flow {queue_depth, inflight, lag_ms, transcript_lag_ms}`` while anything lags.

        ``lag_ms``: age of this socket's oldest unanswered chunk; ``transcript_lag_ms``: age
        of this session's oldest chunk the transcriber has not done yet (other sessions'
        backlog is not this stream's lag).
        """
        transcriber = self.ctx.transcriber
        async with out:
            with self._flowing:
                while True:
                    await trio.sleep(self.config.ws_flow_interval_s)
                    self.ctx.access.current()  # and a revoked token ends the session, here
                    self._check_token()
                    behind = 0.0
                    if transcriber is not None and self.start is not None:
                        key = (self.start.user_id, self.start.session_id)
                        behind = transcriber.lag_s(key) * 1000
                    if self.unanswered or behind:
                        oldest = self.unanswered[0] if self.unanswered else time.monotonic()
                        stats = self.ingress.statistics()  # the shared pipeline's front queue
                        lag_ms = round((time.monotonic() - oldest) * 1000, 1)
                        flow = flow_message(stats.current_buffer_used, len(self.unanswered),
                                            lag_ms, round(behind, 1))  # fmt: skip
                        await self._send(out, flow)

    def _check_token(self) -> None:
        """After the tokens file changed: end the session (4401) if its token was revoked."""
        access = self.ctx.access
        if not access.auth or self._token_generation == access.generation:
            return
        self._token_generation = access.generation
        try:
            access.user_for_request(self.transport.headers, self._token)
        except ServiceError:
            self._end_with(Unauthorized("the token of this session was revoked"))
