"""Putting one session's chunks back in seq order before they are transcribed. Pure.

Pipeline workers run in parallel, so a session's chunks can be committed out of seq order;
a decoder must hear them in order. A chunk whose predecessor has not arrived *waits* here,
up to ``limit`` chunks and until the caller says the wait is over (``overdue``): a missing
seq may have failed or never been sent, and then the ones after it go on without it.
"""

from __future__ import annotations

from typing import Generic, TypeVar

T = TypeVar("T")


class Reorder(Generic[T]):
    """Items by seq; ``add`` and ``release`` return the items that may go on, in order."""

    def __init__(self, next_seq: int, limit: int) -> None:
        self.next_seq = next_seq  # the seq that may go on; later ones wait
        self.limit = limit
        self.waiting: dict[int, T] = {}
        self.since = 0.0  # when the oldest wait began (the caller's clock)

    def __len__(self) -> int:
        return len(self.waiting)

    def add(self, seq: int, item: T, now: float) -> list[T]:
        """Take *item*; what may go on now (it, and any waiting items it unblocks)."""
        if seq > self.next_seq and len(self.waiting) < self.limit:
            if not self.waiting:
                self.since = now
            self.waiting[seq] = item
            return []
        out = [self._take(seq, item)]
        return out + self.release(now, everything=len(self.waiting) >= self.limit)

    def release(self, now: float, *, everything: bool = False) -> list[T]:
        """The waiting items that are next in line (with *everything*: all, in order)."""
        out = []
        while self.waiting:
            seq = self.next_seq if self.next_seq in self.waiting else min(self.waiting)
            if seq != self.next_seq and not everything:
                break
            out.append(self._take(seq, self.waiting.pop(seq)))
        self.since = now
        return out

    def overdue(self, now: float, wait_s: float) -> bool:
        """Whether items have waited *wait_s* for a missing seq."""
        return bool(self.waiting) and now - self.since >= wait_s

    def _take(self, seq: int, item: T) -> T:
        self.next_seq = max(self.next_seq, seq + 1)
        return item
