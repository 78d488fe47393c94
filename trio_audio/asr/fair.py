"""Which utterance a free worker decodes next: fair across sessions, finals first. Pure.

- Finals go round robin over the sessions that have one waiting, one in flight per session:
  a session with 200 utterances queued (a long file) takes one turn in each round, so a
  short session behind it waits for at most one decode per other session, not for the file.
- A partial (a re-decode of an open utterance, for live words) is taken when no final can
  be, and also once ``FINALS_PER_PARTIAL`` finals in a row went while a partial waited: finals
  come first, but a live talker still sees words while other sessions keep every worker busy
  with finals. Each session keeps only its newest partial; an older one is dropped, not
  queued, so a lagging worker skips partials instead of falling further behind.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable
from typing import Final, Generic, TypeVar

FINALS_PER_PARTIAL: Final = 4  # finals taken in a row before a waiting partial goes

K = TypeVar("K", bound=Hashable)
J = TypeVar("J")


class FairQueue(Generic[K, J]):
    def __init__(self) -> None:
        self._finals: dict[K, deque[J]] = {}  # in turn order: a session moves back after its turn
        self._partials: dict[K, J] = {}
        self._busy: set[K] = set()
        self._finals_in_a_row = 0  # finals taken while a partial waited

    def put_final(self, key: K, job: J) -> None:
        self._finals.setdefault(key, deque()).append(job)
        self._partials.pop(key, None)  # older than the final that follows it

    def put_partial(self, key: K, job: J) -> None:
        self._partials[key] = job  # replaces (drops) an older one not yet taken

    def withdraw(self, key: K, job: J) -> bool:
        """Take back a final not yet taken (*job* itself); whether it was waiting."""
        queue = self._finals.get(key)
        if queue is None:
            return False
        for i, waiting in enumerate(queue):
            if waiting is job:
                del queue[i]
                if not queue:
                    del self._finals[key]
                return True
        return False

    def take(self, *, partials: bool = True) -> tuple[K, J, bool] | None:
        """The next ``(key, job, final)``, or None when nothing can go now (without
        *partials*: no partial may go). The key is busy until ``done(key)``."""
        if partials and self._finals_in_a_row >= FINALS_PER_PARTIAL:
            taken = self._take_partial()  # its turn, finals waiting or not
            if taken is not None:
                return taken
        for key in list(self._finals):
            if key in self._busy:
                continue
            queue = self._finals.pop(key)
            job = queue.popleft()
            if queue:
                self._finals[key] = queue  # to the back of the round
            self._busy.add(key)
            if self._partials:
                self._finals_in_a_row += 1
            return key, job, True
        return self._take_partial() if partials else None

    def _take_partial(self) -> tuple[K, J, bool] | None:
        for key in list(self._partials):
            if key in self._busy:
                continue
            self._busy.add(key)
            self._finals_in_a_row = 0
            return key, self._partials.pop(key), False
        return None

    def done(self, key: K) -> None:
        self._busy.discard(key)

    def forget(self, key: K) -> None:
        """Drop everything waiting for *key*."""
        self._finals.pop(key, None)
        self._partials.pop(key, None)

    def finals_waiting(self, key: K | None = None) -> int:
        if key is not None:
            return len(self._finals.get(key, ()))
        return sum(len(q) for q in self._finals.values())

    @property
    def partials_waiting(self) -> int:
        return len(self._partials)
