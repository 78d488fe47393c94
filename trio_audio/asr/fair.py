"""Which utterance a free worker decodes next: fair across sessions, finals first. Pure.

- Finals go round robin over the sessions that have one waiting, one in flight per session:
  a session with 200 utterances queued (a long file) takes one turn in each round, so a
  short session behind it waits for at most one decode per other session, not for the file.
- A partial (a re-decode of an open utterance, for live words) is taken only when no final
  can be: finals never wait for partials. Each session keeps only its newest partial; an
  older one is dropped, not queued, so a lagging worker skips partials instead of falling
  further behind.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
J = TypeVar("J")


class FairQueue(Generic[K, J]):
    def __init__(self) -> None:
        self._finals: dict[K, deque[J]] = {}  # in turn order: a session moves back after its turn
        self._partials: dict[K, J] = {}
        self._busy: set[K] = set()

    def put_final(self, key: K, job: J) -> None:
        self._finals.setdefault(key, deque()).append(job)
        self._partials.pop(key, None)  # older than the final that follows it

    def put_partial(self, key: K, job: J) -> None:
        self._partials[key] = job  # replaces (drops) an older one not yet taken

    def take(self, *, partials: bool = True) -> tuple[K, J, bool] | None:
        """The next ``(key, job, final)``, or None when nothing can go now (without
        *partials*: no partial may go). The key is busy until ``done(key)``."""
        for key in list(self._finals):
            if key in self._busy:
                continue
            queue = self._finals.pop(key)
            job = queue.popleft()
            if queue:
                self._finals[key] = queue  # to the back of the round
            self._busy.add(key)
            return key, job, True
        for key in list(self._partials if partials else ()):
            if key in self._busy:
                continue
            self._busy.add(key)
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
