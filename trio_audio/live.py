"""The live port: results that are shown as they happen and never stored.

Everything durable reaches watchers one way only, as the store's ``Committed`` events (a
chunk stored, its transcript stored, chunks deleted), rendered by ``web/``. What is live and
not durable has this one port of its own: a partial transcript (words two consecutive
hypotheses agree on) and a change of speech activity. The transcriber publishes into a
``LivePort``; the service's port renders each item once and hands it to the session's
watchers (``web/watchers.py``), a cluster's also relays it to the other nodes.

``publish`` never waits: live results are best effort and a late one is worthless.
"""

from __future__ import annotations

from typing import Any, Protocol

import attrs


@attrs.frozen
class Partial:
    """Words of the open utterance two hypotheses agreed on (not final, not stored)."""

    user_id: str
    session_id: str
    seq: int  # the last chunk heard
    words: list[dict[str, Any]]
    start_ms: float
    end_ms: float


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
        return kind(**fields)
    except TypeError as exc:
        raise ValueError(str(exc)) from None


class Unwatched:
    """The live port of a process with no watchers (a cluster's ``asr-worker``)."""

    def publish(self, item: Live) -> None:
        pass
