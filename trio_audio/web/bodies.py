"""Upload bodies, read by the front door before an upload takes an admission slot.

An upload's slot is for its work (decoding, analysis, the store), not for its body's journey:
a body still trickling in holds nothing but the bytes it has sent. So the front door reads the
whole body first, under three rules, and only then asks the admission gate for a slot:

- **Rate.** After ``upload_grace_s`` the body must have come at ``min_upload_bytes_per_s`` on
  average since its start, whatever length it declared; a body that falls behind is cut off
  with 408 ``request_timeout``. (A declared 16 MiB body sent 1,000 bytes every 5 s is cut after
  about ``upload_grace_s``, not after the 17 minutes its length would allow.)
- **Size.** More than ``max_body_bytes`` is a 413, also for a chunked body (no length).
- **Bytes in flight.** All upload bodies held at once (being read, or in the service until
  their answer) stay within ``max_body_bytes_inflight``. A body's bytes are taken from that
  budget as they arrive, so a slow body holds only what it sent; one that declares more than
  is free waits up to ``admit_wait_s`` for room before any of it is read, then is refused
  (503 ``overloaded`` with ``Retry-After``); one that finds no room mid-way is refused then.

Resource handling: every byte taken from the budget is given back by ``Body.release``, which
the front door calls once the exchange is over, however it ended.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any, Final

import attrs
import trio
from hypercorn.typing import ASGIReceiveEvent

from ..budget import ByteBudget
from ..config import Config
from ..errors import Overloaded, PayloadTooLarge, RequestTimeout

LINGER_BYTES_PER_S: Final = 4 * 1024 * 1024  # the slowest a refused body is read to its end


@attrs.frozen
class BodyRules:
    """The limits above, from the config, and the budget they share."""

    max_bytes: int
    min_rate: float  # bytes/s; 0: no minimum
    grace_s: float
    wait_s: float
    retry_after_s: int
    budget: ByteBudget

    @property
    def linger_s(self) -> float:
        """How long a refusal for room reads the rest of a body (up to ``max_bytes``) before
        it closes: the grace, then ``LINGER_BYTES_PER_S``."""
        return self.grace_s + self.max_bytes / LINGER_BYTES_PER_S

    @classmethod
    def from_config(cls, config: Config) -> BodyRules:
        return cls(
            max_bytes=config.max_body_bytes,
            min_rate=config.min_upload_bytes_per_s,
            grace_s=config.upload_grace_s,
            wait_s=config.admit_wait_s,
            retry_after_s=config.retry_after_s,
            budget=ByteBudget(config.max_body_bytes_inflight),
        )


class ClientGone(Exception):
    """The client went away before its body was in."""


class Body:
    """One upload's body as it is read: its chunks, and the bytes it holds in the budget."""

    def __init__(self, rules: BodyRules) -> None:
        self.rules = rules
        self.chunks: deque[bytes] = deque()
        self.held = 0
        self._replayed = False

    async def read(self, receive: Any, declared: int | None) -> None:
        """Receive the whole body by the rules; ``RequestTimeout``, ``PayloadTooLarge``,
        ``Overloaded`` or ``ClientGone`` when it cannot be."""
        rules = self.rules
        if declared is not None and not await rules.budget.room(declared, rules.wait_s):
            raise self._no_room()
        started = trio.current_time()
        received = 0
        while True:
            deadline = math.inf
            if rules.min_rate > 0:
                deadline = started + rules.grace_s + received / rules.min_rate
            with trio.move_on_at(deadline):
                message = await receive()
                if message["type"] != "http.request":
                    raise ClientGone
                data: bytes = message.get("body", b"")
                received += len(data)
                if received > rules.max_bytes:
                    msg = f"the body is over the {rules.max_bytes} byte limit"
                    raise PayloadTooLarge(msg)
                if data:
                    if not rules.budget.take_nowait(len(data)):
                        raise self._no_room()
                    self.held += len(data)
                    self.chunks.append(data)
                if not message.get("more_body", False):
                    return
                continue
            elapsed = trio.current_time() - started
            msg = (
                f"the body came too slowly: {received} bytes in {elapsed:.1f} s; after "
                f"{rules.grace_s:g} s a body must come at {rules.min_rate:g} bytes/s or more"
            )
            raise RequestTimeout(msg)

    def _no_room(self) -> Overloaded:
        msg = "too many upload bytes are in flight; retry after the delay given"
        return Overloaded(msg, retry_after=self.rules.retry_after_s)

    async def replay(self, receive: Any) -> ASGIReceiveEvent:
        """The body again, as the app receives it; then what *receive* says (the end)."""
        if self.chunks or not self._replayed:
            self._replayed = True
            data = self.chunks.popleft() if self.chunks else b""
            return {"type": "http.request", "body": data, "more_body": bool(self.chunks)}
        message: ASGIReceiveEvent = await receive()
        return message

    def release(self) -> None:
        self.chunks.clear()
        held, self.held = self.held, 0
        if held:
            self.rules.budget.give(held)
