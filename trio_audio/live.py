"""The live port: results that are shown as they happen and never stored.

Everything durable reaches watchers one way only, as the store's ``Committed`` events (a
chunk stored, its transcript stored, chunks deleted), rendered by ``web/``. What is live and
not durable has this one port of its own: a partial transcript (the open utterance's latest
hypothesis, and how many of its first words the hypothesis before agreed on) and a change
of speech activity. The transcriber publishes into a
``LivePort``; the service's port renders each item once and hands it to the session's
watchers (``web/watchers.py``), a cluster's also relays it to the other nodes.

``publish`` never waits: live results are best effort and a late one is worthless.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import attrs


@attrs.frozen
class Partial:
    """The open utterance's latest hypothesis (not final, not stored): its *words*, the first
    *stable* of which the hypothesis before it agreed on (None: all of them)."""

    user_id: str
    session_id: str
    seq: int  # the last chunk heard
    words: list[dict[str, Any]]
    start_ms: float
    end_ms: float
    stable: int | None = None


@attrs.frozen
class SpeechChange:
    """Speech started or stopped at *at_ms* on the session's timeline."""

    user_id: str
    session_id: str
    event: str  # speech_started | speech_stopped
    at_ms: float


Live = Partial | SpeechChange


class LivePort(Protocol):
    """Where the transcriber and the VAD stage publish what is live and not durable."""

    def publish(self, item: Live) -> None: ...


def live_to_dict(item: Live) -> dict[str, Any]:
    """*item* as plain JSON-able data (for a cluster's relay), with its ``kind``."""
    return {"kind": type(item).__name__, **attrs.asdict(item)}


def live_from_dict(data: dict[str, Any]) -> Live:
    """The inverse of ``live_to_dict``; ``ValueError`` for anything else."""
    kinds: dict[str, type[Partial] | type[SpeechChange]] = {
        "Partial": Partial,
        "SpeechChange": SpeechChange,
    }
    fields = dict(data)
    kind = kinds.get(str(fields.pop("kind", "")))
    if kind is None:
        msg = "not a live result"
        raise ValueError(msg)
    try:
        item = kind(**fields)
    except TypeError as exc:
        raise ValueError(str(exc)) from None
    _check(item)
    return item


def _check(item: Live) -> None:
    """``ValueError`` unless *item* holds what its type says (it came off the network)."""
    ok = isinstance(item.user_id, str) and isinstance(item.session_id, str)
    if isinstance(item, SpeechChange):
        ok = ok and item.event in ("speech_started", "speech_stopped") and _ms(item.at_ms)
    else:
        ok = (ok and isinstance(item.seq, int) and not isinstance(item.seq, bool)
              and _ms(item.start_ms) and _ms(item.end_ms) and isinstance(item.words, list)
              and all(isinstance(w, dict) and isinstance(w.get("word"), str)
                      and _ms(w.get("start_ms")) and _ms(w.get("end_ms"))
                      for w in item.words)
              and (item.stable is None or (isinstance(item.stable, int)
                                           and not isinstance(item.stable, bool)
                                           and 0 <= item.stable <= len(item.words))))  # fmt: skip
    if not ok:
        msg = f"not a valid {type(item).__name__}"
        raise ValueError(msg)


def _ms(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


class Unwatched:
    """The live port of a process with no watchers (a cluster's ``asr-worker``)."""

    def publish(self, item: Live) -> None:
        pass
