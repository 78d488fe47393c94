"""Admission of uploads: a bounded number inside the service, the rest wait briefly or are
refused, so that overload costs little and work already admitted keeps its pace.

Without it, every upload a client sends is parsed, read and queued until the ingest queue
is full, and hundreds of busy connections starve the pipeline's few tasks of the scheduler:
refusing cost about as much as accepting, and goodput fell to a few percent of capacity.

The rule (after CoDel, "controlled delay"): at most ``limit`` uploads are inside at once.
One more waits for a slot, not runnable, for at most ``max_wait_s``. The time each admitted
upload waited (its queueing delay) is watched: once it has stayed above ``target_s`` for
``interval_s`` the service is overloaded, not merely busy, and new arrivals are refused at
once, before their body is read, until an upload is admitted within the target again. Bursts
are absorbed; a standing queue is not allowed to form. A refusal is an explicit 503
``overloaded`` with ``Retry-After`` (never a silent drop), sent on a connection that stays
usable (the front door, ``asgi.py``).

Refusals are paced per connection (``pace``, keyed by the client's address and port): a
connection gets at most one refusal per ``retry_after_s`` (over HTTP/2, or through a proxy
that shares its upstream connections, the requests of one connection are paced together). A
client that honours ``Retry-After`` is never held; one that sends again at once (a retry storm
on keep-alive connections) has its next refusal held, not runnable, until the ``Retry-After``
it was given has passed. Under hypercorn a refusal costs about what a bare quart-trio request
costs (its HTTP parsing and the body's reading, which no early answer avoids: README,
Performance), so the refusals per second are what decide how much of the one event loop is
left for admitted work; pacing bounds them by connections / ``retry_after_s`` instead of by
how fast clients can resend.

Plain trio; ``statistics()`` is what ``/metrics`` shows.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import AsyncIterator, Hashable
from typing import Final

import attrs
import trio

from ..errors import Overloaded

TARGET_S: Final = 0.05
INTERVAL_S: Final = 0.5
PACED_CONNECTIONS_MAX: Final = 65536  # connections remembered for pacing (~200 B each)


@attrs.frozen
class AdmissionStatistics:
    inside: int
    waiting: int
    admitted: int
    refused: int
    overloaded: bool
    last_delay_s: float
    held: int  # refusals being held by the pacing
    paced: int  # refusals held so far


class Admission:
    """A gate with ``limit`` slots; ``async with gate.admit(): ...`` around each upload."""

    def __init__(
        self,
        limit: int,
        *,
        max_wait_s: float = 1.0,
        target_s: float = TARGET_S,
        interval_s: float = INTERVAL_S,
        retry_after_s: int = 1,
    ) -> None:
        self.limit = limit
        self.max_wait_s = max_wait_s
        self.target_s = target_s
        self.interval_s = interval_s
        self.retry_after_s = retry_after_s
        self._slots = trio.Semaphore(limit)  # FIFO: the longest waiter gets the next slot
        self._waiting = 0
        self._admitted = 0
        self._refused = 0
        self._above_since: float | None = None  # when the delay first went over the target
        self._last_delay = 0.0
        # per connection: no refusal before this time (an OrderedDict: O(1) at both ends)
        self._next_refusal: OrderedDict[Hashable, float] = OrderedDict()
        self._held = 0
        self._paced = 0

    def overloaded(self, now: float) -> bool:
        return self._above_since is not None and now - self._above_since >= self.interval_s

    def statistics(self) -> AdmissionStatistics:
        return AdmissionStatistics(
            inside=self.limit - self._slots.value,
            waiting=self._waiting,
            admitted=self._admitted,
            refused=self._refused,
            overloaded=self.overloaded(trio.current_time()),
            last_delay_s=self._last_delay,
            held=self._held,
            paced=self._paced,
        )

    def _refuse(self, why: str) -> Overloaded:
        self._refused += 1
        return Overloaded(why, retry_after=self.retry_after_s)

    async def acquire(self) -> None:
        """Take a slot, waiting as the rule allows; ``Overloaded`` when none comes in time.
        The caller must ``release`` it."""
        arrived = trio.current_time()
        try:
            self._slots.acquire_nowait()
        except trio.WouldBlock:
            if self.overloaded(arrived) or self.max_wait_s <= 0:
                msg = "the service is at capacity; retry after the delay given"
                raise self._refuse(msg) from None
            self._waiting += 1
            try:
                with trio.move_on_after(self.max_wait_s) as waited:
                    await self._slots.acquire()
            finally:
                self._waiting -= 1
            if waited.cancelled_caught:  # no slot (acquire is all or nothing)
                self._observe(self.max_wait_s, trio.current_time())
                raise self._refuse(
                    f"no room within {self.max_wait_s:g} s; retry after the delay given"
                ) from None
        now = trio.current_time()
        self._observe(now - arrived, now)
        self._admitted += 1

    async def room(self) -> None:
        """Return once a slot is free, taking none (it waits as ``acquire`` does);
        ``Overloaded`` when none comes in time. What an upload asks before its body is read:
        it takes its slot once the body is in (``acquire``), so a slow body holds none."""
        await self.acquire()
        self._admitted -= 1
        self.release()

    def release(self) -> None:
        self._slots.release()
        if self._waiting == 0:  # the queue has drained: no standing delay any more
            self._above_since = None

    @contextlib.asynccontextmanager
    async def admit(self) -> AsyncIterator[None]:
        """Hold a slot for the block (``Overloaded`` when none comes in time)."""
        await self.acquire()
        try:
            yield
        finally:
            self.release()

    async def pace(self, connection: Hashable | None, cancel: trio.Event) -> None:
        """Return when a refusal may be sent on *connection*: at once, unless it was sent one
        less than ``retry_after_s`` ago, then once that has passed (or *cancel* is set: the
        service is draining and answers everyone now). None (no known connection): at once.
        """
        if connection is None:
            return
        until = self._next_refusal.get(connection)
        if until is not None and until > trio.current_time():
            self._held += 1
            self._paced += 1
            try:
                with trio.move_on_at(until):
                    await cancel.wait()
            finally:
                self._held -= 1
        now = trio.current_time()
        # Kept in the order of their times (each is moved to the end when set), so the ones
        # let go are at the front; past the bound the oldest is forgotten.
        remembered = self._next_refusal
        remembered.pop(connection, None)
        while remembered and (
            len(remembered) >= PACED_CONNECTIONS_MAX or next(iter(remembered.values())) <= now
        ):
            remembered.popitem(last=False)
        remembered[connection] = now + self.retry_after_s

    def _observe(self, delay: float, now: float) -> None:
        self._last_delay = delay
        if delay < self.target_s:
            self._above_since = None
        elif self._above_since is None:
            self._above_since = now
