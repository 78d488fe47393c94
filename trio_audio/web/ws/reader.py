"""The reader: it parses what the client sends and submits each chunk to the pipeline."""

from __future__ import annotations

import time
from typing import Any

import trio

from ...channels import put
from ...errors import (
    BadMessage,
    IdleTimeout,
    Overloaded,
    PayloadTooLarge,
    RateLimited,
    ServiceError,
)
from ...models import Job, Part
from ..messages import Start, keepalive_message, parse_audio, parse_control
from .base import SessionError
from .state import SessionState


class Reader(SessionState):
    """The reader task: the only one that receives; it stops at ``end``, shutdown or an error."""

    async def _reader(self, start: Start, out: trio.MemorySendChannel[str]) -> bool:
        """Read until ``end`` (True), shutdown or an error (False); submit each chunk.

        Shutdown cancels ``_reading`` (see ``stop_reading``): a frame read but not yet
        submitted was never answered, so its client sends it again when it resumes. A bad
        message ends the session after the chunks before it are answered (``_end_with``).
        """
        async with self.ack_send, out:
            with self._reading:
                try:
                    return await self._read(start, out)
                except SessionError as exc:
                    self._end_with(exc.error)
            return False

    async def _read(self, start: Start, out: trio.MemorySendChannel[str]) -> bool:
        while True:
            message = await self._receive()
            if isinstance(message, bytes):
                await self._submit(start, message, None)
                continue
            control = self._control(message)
            kind = control["type"]
            if kind == "audio":
                data, seq = self._audio_payload(control)
                await self._submit(start, data, seq)
            elif kind == "end":
                return True
            elif kind == "finalize":
                await self._wait_answered()
                await self._finalize(start)
            elif kind == "keepalive":
                await self._send(out, keepalive_message())
            elif kind == "start":
                msg = "this connection has started its session already: one 'start' each"
                raise SessionError(BadMessage(msg))
            else:
                msg = f"unknown message type {kind[:40]!r}"
                raise SessionError(BadMessage(msg))

    async def _receive(self) -> str | bytes:
        """The next message, or ``idle_timeout`` after ``ws_idle_timeout_s`` of silence."""
        with trio.move_on_after(self.config.ws_idle_timeout_s):
            return await self.transport.receive()
        msg = f"no message for {self.config.ws_idle_timeout_s:g} s"
        raise SessionError(IdleTimeout(msg))

    def _control(self, text: str) -> dict[str, Any]:
        try:
            return parse_control(text)
        except ServiceError as exc:
            raise SessionError(exc) from None

    def _audio_payload(self, control: dict[str, Any]) -> tuple[bytes, int | None]:
        try:
            return parse_audio(control)
        except ServiceError as exc:
            raise SessionError(exc) from None

    async def _submit(self, start: Start, data: bytes, seq: int | None) -> None:
        if start.content_type is None:
            msg = "this socket sent no format in 'start': it only watches, and takes no audio"
            raise SessionError(BadMessage(msg))
        if len(data) > self.config.max_body_bytes:
            msg = f"a chunk of {len(data)} bytes is over the {self.config.max_body_bytes} limit"
            raise SessionError(PayloadTooLarge(msg))
        if seq is None:
            seq = self.next_seq
        self.next_seq = seq + 1
        part = Part(body=data, content_type=start.content_type, raw=start.raw, seq=seq)
        job = Job(user_id=start.user_id, session_id=start.session_id, parts=[part], source=self.id)
        try:
            self.ctx.access.take(start.user_id)
        except RateLimited as exc:
            raise SessionError(exc) from None
        wait_s = self.config.ws_overload_timeout_s
        if not await self.inflight.take(start.user_id, len(data), wait_s):
            msg = (f"no room in {wait_s:g} s for more unanswered bytes of this socket or user "
                   f"(ws_max_inflight_bytes, ws_user_inflight_bytes); resume from seq {seq} "
                   "later")  # fmt: skip
            raise SessionError(Overloaded(msg))
        self.unanswered.append(time.monotonic())
        await put(self.ack_send, (seq, job))  # waits while too many are unanswered
        if self.ingress.offer(job):  # room now: no timeout to set up (the receive checkpoints)
            return
        try:
            with trio.move_on_after(self.config.ws_overload_timeout_s):
                await self.ingress.submit(job)
                return
        except trio.Cancelled:
            # Shutdown cancelled the submit: the chunk was never taken and is never answered
            # (its client sends it again when it resumes). The acker stops there instead of
            # waiting for its answer until the close timeout.
            job.reply.fail(self._not_taken)
            raise
        job.reply.fail(Overloaded("not taken: the pipeline had no room"))  # the acker's turn
        self.ctx.metrics.refuse("ws_wait_timeout")
        msg = (
            f"the pipeline had no room for {self.config.ws_overload_timeout_s:g} s; "
            f"resume from seq {seq} later"
        )
        raise SessionError(Overloaded(msg))
