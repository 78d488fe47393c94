"""Byte budgets: how much memory one kind of buffer may hold at once, across all requests.

A count of requests or chunks does not bound memory when one of them can be 16 MB (or decode
to gigabytes); these bound the bytes themselves. Three kinds use them (``docs/limits.md``):
request bodies of uploads in flight (``max_body_bytes_inflight``), decoded audio in the
pipeline (``max_decoded_bytes_inflight``) and WebSocket chunks not yet answered, per socket
and per user (``ws_max_inflight_bytes``, ``ws_user_inflight_bytes``).

Bytes are taken before the buffer is made and given back once it is gone. ``give`` may be
called from any thread (decoded audio is let go in worker threads, through a finalizer), so
the count is kept under a lock; a task waiting for room wakes when room is given on the Trio
thread, and polls every ``POLL_S`` besides, which catches room given elsewhere.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Hashable
from typing import Final

import attrs
import trio

POLL_S: Final = 0.02


@attrs.frozen
class BudgetStatistics:
    capacity: int
    used: int
    waiting: int
    refused: int


class ByteBudget:
    """At most ``capacity`` bytes taken at once."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._used = 0
        self._lock = threading.Lock()
        self._freed = trio.Event()
        self._waiting = 0
        self._refused = 0

    @property
    def used(self) -> int:
        return self._used

    def statistics(self) -> BudgetStatistics:
        return BudgetStatistics(self.capacity, self._used, self._waiting, self._refused)

    def take_nowait(self, size: int) -> bool:
        """Take *size* bytes if they fit now (thread-safe); False, taking nothing, if not."""
        with self._lock:
            if self._used + size > self.capacity:
                return False
            self._used += size
            return True

    async def take(self, size: int, timeout_s: float) -> bool:
        """Take *size* bytes, waiting up to *timeout_s* for room; False (and counted as a
        refusal) when none came. More than ``capacity`` never fits."""
        return await self._wait(size, timeout_s, take=True)

    async def room(self, size: int, timeout_s: float) -> bool:
        """Wait up to *timeout_s* until *size* bytes are free, taking none; False (counted as
        a refusal) when they were not."""
        return await self._wait(size, timeout_s, take=False)

    def _fits(self, size: int, *, take: bool) -> bool:
        if take:
            return self.take_nowait(size)
        return self._used + size <= self.capacity

    async def _wait(self, size: int, timeout_s: float, *, take: bool) -> bool:
        if self._fits(size, take=take):
            return True
        if size <= self.capacity and timeout_s > 0:
            self._waiting += 1
            try:
                with trio.move_on_after(timeout_s):
                    while not self._fits(size, take=take):
                        with trio.move_on_after(POLL_S):
                            await self._freed.wait()
                    return True
            finally:
                self._waiting -= 1
        self._refused += 1
        return False

    def charge(self, size: int) -> None:
        """Count *size* bytes that exist already, room or not (thread-safe)."""
        with self._lock:
            self._used += size

    def give(self, size: int) -> None:
        """Give back *size* bytes taken before; any thread."""
        with self._lock:
            self._used -= size
        try:
            trio.lowlevel.current_trio_token()
        except RuntimeError:
            return  # another thread: waiters see the room at their next poll
        self._freed.set()
        self._freed = trio.Event()


def budget_gauge(budget: ByteBudget) -> dict[str, float]:
    """A budget as ``/metrics`` shows it: bytes held and the capacity, tasks waiting for
    room, and refusals so far."""
    stats = budget.statistics()
    return {
        'state="used"': stats.used,
        'state="capacity"': stats.capacity,
        'state="waiting"': stats.waiting,
        'state="refused_total"': stats.refused,
    }


class UserBudgets:
    """A ``ByteBudget`` of ``capacity`` for each key (user) that holds bytes now; a key's
    budget is forgotten once it holds nothing, so idle users cost nothing."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._budgets: dict[Hashable, ByteBudget] = {}

    def __len__(self) -> int:
        return len(self._budgets)

    async def take(self, key: Hashable, size: int, timeout_s: float) -> bool:
        budget = self._budgets.setdefault(key, ByteBudget(self.capacity))
        try:
            return await budget.take(size, timeout_s)
        finally:
            self._forget_idle(key, budget)

    def give(self, key: Hashable, size: int) -> None:
        budget = self._budgets.get(key)
        if budget is not None:
            budget.give(size)
            self._forget_idle(key, budget)

    def _forget_idle(self, key: Hashable, budget: ByteBudget) -> None:
        stats = budget.statistics()
        if stats.used == 0 and stats.waiting == 0:
            self._budgets.pop(key, None)


class Inflight:
    """The bytes one sender (a WebSocket session) has in flight: within its own ``capacity``
    and within its user's budget in *users*; ``close`` gives back whatever it still holds."""

    def __init__(self, capacity: int, users: UserBudgets) -> None:
        self.own = ByteBudget(capacity)
        self.users = users
        self.key: Hashable = None
        self.held = 0

    async def take(self, key: Hashable, size: int, timeout_s: float) -> bool:
        """Take *size* bytes for *key*, waiting up to *timeout_s* for each budget. A sender
        acts for one key (a session for its user) while it holds bytes."""
        if self.held and key != self.key:
            msg = f"this sender holds bytes for {self.key!r}, not {key!r}"
            raise ValueError(msg)
        if not await self.own.take(size, timeout_s):
            return False
        if not await self.users.take(key, size, timeout_s):
            self.own.give(size)
            return False
        self.key = key
        self.held += size
        return True

    def give(self, size: int) -> None:
        size = min(size, self.held)  # nothing twice: after ``close``, a late answer gives none
        if size <= 0:
            return
        self.held -= size
        self.own.give(size)
        self.users.give(self.key, size)

    def close(self) -> None:
        if self.held:
            self.give(self.held)


class Hold:
    """Bytes taken from a budget for one piece of work, grown as it needs (``more``), parts
    handed over to the objects made (``hand_over``) and the rest given back once
    (``release``); thread-safe."""

    def __init__(self, budget: ByteBudget, size: int = 0) -> None:
        self.budget = budget
        self.size = size
        self._released = False
        self._lock = threading.Lock()

    def more(self, size: int) -> bool:
        with self._lock:
            if self._released or not self.budget.take_nowait(size):
                return False
            self.size += size
            return True

    def release(self) -> None:
        with self._lock:
            size, self.size, self._released = self.size, 0, True
        if size:
            self.budget.give(size)

    def hand_over(self, obj: object, size: int) -> None:
        """*size* bytes of the hold now belong to *obj*: given back once it is garbage (a
        finalizer); the hold keeps the rest. Bytes it lacks are counted all the same."""
        with self._lock:
            moved = min(size, self.size)
            self.size -= moved
        if size > moved:  # used already: count them (the budget may run over briefly)
            self.budget.charge(size - moved)
        weakref.finalize(obj, self.budget.give, size)
