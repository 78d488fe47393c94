"""A session's live results over HTTP: server-sent events, and ending a session at once.

``GET /sessions/{user_id}/{session_id}/events`` streams what a WebSocket watcher of the
session gets, as ``text/event-stream``: ``event: metadata`` (a chunk was stored),
``transcript`` (partial words, and each chunk's final words once stored), ``vad`` (speech
started or stopped), ``deleted`` (chunks of the session were deleted) and ``session_end``
(after ``POST .../end``). ``data`` is the same JSON message the WebSocket
protocol sends. A comment line goes out every ``HEARTBEAT_S`` so proxies keep the
connection open.

``POST /sessions/{user_id}/{session_id}/end`` ends the session's open utterance now (no
waiting for ``asr_idle_timeout_s``): it returns once the final words are stored, with the
session's summary, and publishes ``session_end`` to the session's watchers.

Resource handling: each stream holds one hub subscription (a bounded channel); a client
that reads slower than its results arrive overflows it and its stream ends. Every stream
ends when the service starts to shut down.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Final, Protocol

import trio

from ..errors import NotFound
from ..hub import Hub, Subscription, Wire
from ..store import StoreBackend
from .messages import session_end_message
from .watchers import Watchers

HEARTBEAT_S: Final = 15.0
SUMMARY_MAX_WORDS: Final = 20_000  # words a session_end summary carries (its text has all)
MISSING_SEQS_MAX: Final = 100  # the most missing seqs ``started`` lists (the highest ones)
MISSING_WINDOW: Final = 256  # seqs looked at first, from the end; then four times as many


def missing_seqs(store: StoreBackend, user_id: str, session_id: str) -> tuple[list[int], int]:
    """The seqs below the session's ``stored_next_seq`` that hold no chunk: the highest
    ``MISSING_SEQS_MAX`` of them in order, and how many there are in all.

    A crash can leave such a hole: the pipeline stores a stream's chunks out of order, so
    seq N+1 may be durable (never acknowledged: acks go in order) when N was lost with the
    process. Named here, a client that lost its state sends them again (``audio`` with their
    ``seq``) besides going on from ``stored_next_seq``.

    Cost: nothing when no seq is missing (the count is ``next_seq - chunk_count``); else
    windows of the newest seqs, growing fourfold, until the ones to name are found (a hole
    from a crash lies among the newest; only a session whose sole gaps are far back reads
    further).
    """
    summary = store.summary(user_id, session_id)
    if summary is None:
        return [], 0
    end = summary.next_seq
    total = end - summary.chunk_count
    window = MISSING_WINDOW
    while total > 0:
        low = max(0, end - window)
        stored = {seq for seq, _ in store.chunks_after(user_id, session_id, low - 1)}
        missing = [seq for seq in range(low, end) if seq not in stored]
        if len(missing) >= min(total, MISSING_SEQS_MAX) or low == 0:
            return missing[-MISSING_SEQS_MAX:], total
        window *= 4
    return [], 0


async def session_summary(
    store: StoreBackend, user_id: str, session_id: str
) -> dict[str, Any] | None:
    """What ``session_end`` says of a session (WebSocket and ``POST .../end`` alike): its
    ids, chunk count, duration and transcript so far (``status``, ``text`` and ``words``,
    each word on the session timeline: the first ``SUMMARY_MAX_WORDS``, and
    ``words_truncated`` past them); None if it has no chunks."""
    summary = store.summary(user_id, session_id)
    if summary is None:
        return None
    transcript: dict[str, Any] = dict(summary.transcript)
    transcript["words"] = words = list[dict[str, Any]]()
    for _, chunk_id in store.chunks_after(user_id, session_id, None):
        if store.transcript_status(chunk_id) != "done":
            continue  # no words (or deleted meanwhile): nothing to read from the log
        try:
            done = (await store.get(chunk_id)).get("transcript", {})
        except NotFound:
            continue
        words += done.get("words", [])
        if len(words) > SUMMARY_MAX_WORDS:
            del words[SUMMARY_MAX_WORDS:]
            transcript["words_truncated"] = True
            break
    return {
        "user_id": user_id,
        "session_id": session_id,
        "chunk_count": summary.chunk_count,
        "duration_ms": summary.duration_ms,
        "transcript": transcript,
    }


class Finalizer(Protocol):
    async def finalize(self, user_id: str, session_id: str) -> None: ...


def format_event(message: Wire) -> bytes:
    """One server-sent event: its name is the message's ``type``, its data the JSON."""
    return f"event: {message.type}\ndata: {message.text}\n\n".encode()


async def next_message(sub: Subscription, shutdown: trio.Event, wait_s: float) -> Wire | None:
    """The session's next message; None after *wait_s* without one. ``trio.EndOfChannel``
    when the stream must end (the client fell behind, or the service is shutting down)."""
    message: Wire | None = None
    async with trio.open_nursery() as nursery:

        async def end_on_shutdown() -> None:
            await shutdown.wait()
            nursery.cancel_scope.cancel()

        nursery.start_soon(end_on_shutdown)
        with trio.move_on_after(wait_s):
            message = await sub.receive.receive()
        nursery.cancel_scope.cancel()
    if shutdown.is_set():
        raise trio.EndOfChannel
    return message


async def event_stream(
    hub: Hub, user_id: str, session_id: str, shutdown: trio.Event
) -> AsyncIterator[bytes]:
    """The body of an events response: the session's messages until the stream ends."""
    with hub.subscribe(user_id, session_id) as sub:
        yield b": watching " + f"{user_id}/{session_id}".encode() + b"\n\n"
        while True:
            try:
                message = await next_message(sub, shutdown, HEARTBEAT_S)
            except trio.EndOfChannel:
                return
            yield b": keepalive\n\n" if message is None else format_event(message)


async def end_session(
    store: StoreBackend,
    watchers: Watchers,
    transcriber: Finalizer | None,
    user_id: str,
    session_id: str,
) -> dict[str, Any] | None:
    """Finalize the session's transcript now; its summary (None: no such session)."""
    if store.summary(user_id, session_id) is None:
        return None
    if transcriber is not None:
        await transcriber.finalize(user_id, session_id)
    body = await session_summary(store, user_id, session_id)
    if body is None:  # deleted meanwhile
        return None
    watchers.say(user_id, session_id, session_end_message(body))
    return body
