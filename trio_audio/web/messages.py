"""The WebSocket protocol's messages: parsing what a client sends, building what it gets.

Every message the server sends is rendered here: the session's own (``started``, ``ack``,
``flow``, ``keepalive``, ``session_end``, ``error``), and, once for every watcher of a
session: a stored chunk's
``metadata``, a chunk's durable ``transcript`` (the same message live and on resume), a
``deleted``, and the live port's partial ``transcript`` and ``vad`` (``render``). A
``transcript`` always has ``seq, chunk_id, is_final, status, text, words, start_ms,
end_ms``: a final is one chunk's stored transcript (``status`` done or failed, plus
``error`` when failed) spanning that chunk; a partial (``status: partial``, ``chunk_id``
null) is the open utterance's latest hypothesis, spanning the utterance, with ``stable``:
how many of its first words the hypothesis before agreed on.

Pure functions, no I/O: each parser returns a value or raises one of the project's typed
errors (``trio_audio.errors``), never anything else, whatever the input (property-tested in
tests/test_hostile.py and fuzzed in tests/fuzz_targets.py). The session (``ws/``) turns
those errors into an ``error`` message and a 4xxx close.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from typing import Any, Final

import attrs
import msgspec

from ..asr.context import parse_vocabulary
from ..audio.decode import RawFormat, raw_format_from
from ..errors import (
    BadMessage,
    Forbidden,
    InvalidField,
    PayloadTooLarge,
    ServiceError,
    UnsupportedMediaType,
)
from ..hub import Wire
from ..live import Live, Partial, SpeechChange
from ..models import check_id, parse_seq
from ..store.events import ChunksDeleted, ChunkStored, ChunkUpdated, Committed
from .media import CONTAINER_TYPES

MAX_CONTROL_BYTES: Final = 64 * 1024  # a JSON message that carries no audio
MAX_METADATA_EVERY: Final = 1_000_000


@attrs.frozen
class Start:
    """A validated ``start``. ``content_type`` None: no ``format``, the socket only watches."""

    user_id: str
    session_id: str
    content_type: str | None
    raw: RawFormat | None
    resume_from_seq: int | None
    metadata_every: int = 1  # send the metadata of chunks whose seq it divides (0: none)
    vocabulary: tuple[str, ...] | None = None  # words to expect (None: none given)

    @property
    def watch_only(self) -> bool:
        return self.content_type is None


def dumps(message: dict[str, Any]) -> str:
    """*message* as compact JSON text (msgspec: a chunk's metadata, with its many floats, in
    a fifth of ``json.dumps``'s time; every message a WebSocket answer costs goes through it)."""
    return msgspec.json.encode(message).decode()


def metadata_message(chunk: dict[str, Any]) -> str:
    """``{"type": "metadata", ...chunk}`` as text, without copying the chunk's dict."""
    return '{"type":"metadata",' + dumps(chunk)[1:]


def transcript_message(chunk: dict[str, Any]) -> dict[str, Any] | None:
    """The final ``transcript`` of a stored chunk once its transcript is done or failed;
    None while it is pending or when transcription is off."""
    transcript = chunk.get("transcript") or {}
    status = transcript.get("status")
    if status not in ("done", "failed"):
        return None
    start = float(chunk.get("offset_ms") or 0.0)
    message = {
        "type": "transcript",
        "seq": chunk["seq"],
        "chunk_id": chunk["chunk_id"],
        "is_final": True,
        "status": status,
        "text": transcript.get("text", ""),
        "words": transcript.get("words", []),
        "start_ms": round(start, 1),
        "end_ms": round(start + float(chunk["audio"]["duration_ms"]), 1),
    }
    if status == "failed":
        message["error"] = transcript.get("error", "")
    if transcript.get("short_window"):
        message["short_window"] = True  # decoded in the short window to keep its deadline
    return message


def deleted_message(event: ChunksDeleted) -> dict[str, Any]:
    """``deleted {user_id, session_id, chunk_ids, seqs}``: those chunks are gone."""
    return {"type": "deleted", "user_id": event.user_id, "session_id": event.session_id,
            "chunk_ids": event.chunk_ids, "seqs": event.seqs}  # fmt: skip


def live_message(item: Live) -> dict[str, Any]:
    """A partial ``transcript`` or a ``vad`` event. A partial has a final's keys and one
    more, ``stable``: how many of its first words the hypothesis before agreed on (the rest
    may still change with the next)."""
    if isinstance(item, SpeechChange):
        return {"type": "vad", "event": item.event, "at_ms": round(item.at_ms, 1)}
    assert isinstance(item, Partial)
    stable = len(item.words) if item.stable is None else item.stable
    return {"type": "transcript", "seq": item.seq, "chunk_id": None, "is_final": False,
            "status": "partial", "text": " ".join(w["word"] for w in item.words),
            "words": item.words, "start_ms": round(item.start_ms, 1),
            "end_ms": round(item.end_ms, 1), "stable": stable}  # fmt: skip


def render(event: Committed) -> Wire | None:
    """The one wire message of a committed event for the session's watchers (None: the
    event tells them nothing, such as an update that left the transcript pending)."""
    if isinstance(event, ChunkStored):
        chunk = event.chunk
        return Wire("metadata", metadata_message(chunk), chunk["chunk_id"])
    if isinstance(event, ChunkUpdated):
        message = transcript_message(event.chunk)
        if message is None:
            return None
        return Wire("transcript", dumps(message), event.chunk["chunk_id"])
    return Wire("deleted", dumps(deleted_message(event)))


def wire(message: dict[str, Any]) -> Wire:
    """*message* rendered for watchers."""
    return Wire(message["type"], dumps(message), message.get("chunk_id"))


def started_message(
    start: Start,
    next_seq: int,
    stored_next_seq: int,
    missing: list[int],
    missing_count: int,
    limits: dict[str, Any],
) -> dict[str, Any]:
    """The answer to ``start``: where to go on from, the gaps, the socket's limits."""
    return {
        "type": "started",
        "user_id": start.user_id,
        "session_id": start.session_id,
        "next_seq": next_seq,
        "stored_next_seq": stored_next_seq,
        "missing_seqs": missing,
        "missing_count": missing_count,
        "metadata_every": start.metadata_every,
        "limits": limits,
    }


def ack_message(
    seq: int, chunk_id: str, *, duplicate: bool = False, replayed: bool = False
) -> dict[str, Any]:
    """A chunk's answer once durably stored (``duplicate``: it was stored already;
    ``replayed``: a resume sends it again)."""
    ack: dict[str, Any] = {"type": "ack", "seq": seq, "chunk_id": chunk_id}
    if duplicate:
        ack["duplicate"] = True
    if replayed:
        ack["replayed"] = True
    return ack


def flow_message(
    queue_depth: int, inflight: int, lag_ms: float, transcript_lag_ms: float
) -> dict[str, Any]:
    return {"type": "flow", "queue_depth": queue_depth, "inflight": inflight,
            "lag_ms": lag_ms, "transcript_lag_ms": transcript_lag_ms}  # fmt: skip


def keepalive_message() -> dict[str, Any]:
    return {"type": "keepalive"}


def session_end_message(summary: dict[str, Any]) -> dict[str, Any]:
    return {"type": "session_end", "summary": summary}


def error_message(error: ServiceError, **extra: Any) -> dict[str, Any]:
    return {"type": "error", "code": error.code, "message": error.detail,
            "retryable": error.retryable, **extra}  # fmt: skip


def parse_control(text: str) -> dict[str, Any]:
    """A JSON object with a string ``type``; anything else is a ``bad_message``."""
    if len(text) > MAX_CONTROL_BYTES and '"audio"' not in text[:256]:
        msg = f"a control message of {len(text)} bytes is over {MAX_CONTROL_BYTES}"
        raise PayloadTooLarge(msg)
    try:
        message = json.loads(text)
    except ValueError as exc:
        msg = f"not JSON: {exc}"
        raise BadMessage(msg) from None
    except RecursionError:  # nested deeper than the decoder goes
        msg = "not JSON this server reads: nested too deeply"
        raise BadMessage(msg) from None
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        msg = "a control message is a JSON object with a string 'type'"
        raise BadMessage(msg)
    return message


def parse_start(
    message: dict[str, Any], query: Mapping[str, str], user: str | None = None
) -> Start:
    """Validate a ``start`` message (ids may also come from the URL's query).

    *user* is the authenticated user, when auth is on: the stream is theirs, and naming
    another user is ``Forbidden``. Without a ``format`` the socket only watches the session.
    """
    if message.get("type") != "start":
        msg = f"the first message must be 'start', got {str(message.get('type'))[:40]!r}"
        raise BadMessage(msg)
    named = _text(message.get("user_id") or query.get("user_id"))
    if user is not None and named is not None and named != user:
        msg = f"this token streams as {user!r}, not {named[:64]!r}"
        raise Forbidden(msg)
    user_id = check_id("user_id", named or user)
    session_id = check_id("session_id", _text(message.get("session_id") or query.get("session_id")))
    assert user_id is not None and session_id is not None
    fmt = message.get("format")
    content_type: str | None = None
    raw = None
    if fmt is None:
        pass  # a watcher: it sends no audio
    elif not isinstance(fmt, dict):
        msg = "format is {encoding, sample_rate, channels} or {container}; leave it out to watch"
        raise BadMessage(msg)
    elif (container := fmt.get("container")) is not None:
        if not isinstance(container, str) or container not in CONTAINER_TYPES:
            shown = str(container)[:40]
            msg = f"container must be one of {', '.join(CONTAINER_TYPES)}, got {shown!r}"
            raise UnsupportedMediaType(msg)
        content_type = CONTAINER_TYPES[container]
    else:
        encoding = fmt.get("encoding")
        try:
            raw = raw_format_from(
                "", {}, _text(encoding), _text(fmt.get("sample_rate")), _text(fmt.get("channels"))
            )
        except InvalidField as exc:
            if encoding is not None and "encoding" in exc.detail:
                raise UnsupportedMediaType(exc.detail) from None
            raise
        if raw is None:
            msg = "format needs encoding, sample_rate and channels (or a container)"
            raise BadMessage(msg)
        content_type = f"audio/pcm;encoding={raw.encoding};rate={raw.sample_rate};" + (
            f"channels={raw.channels}"
        )
    return Start(
        user_id=user_id,
        session_id=session_id,
        content_type=content_type,
        raw=raw,
        resume_from_seq=parse_seq(message.get("resume_from_seq")),
        metadata_every=_metadata_every(message.get("metadata_every", 1)),
        vocabulary=None if "vocabulary" not in message else parse_vocabulary(message["vocabulary"]),
    )


def _metadata_every(value: object) -> int:
    """How often a stream wants its chunks' ``metadata``: every chunk whose seq this
    divides; 1 (the default) is every chunk, 0 none."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or not 0 <= value <= MAX_METADATA_EVERY
    ):
        shown = str(value)[:40]
        msg = f"metadata_every must be a whole number from 0 to {MAX_METADATA_EVERY}, got {shown!r}"
        raise InvalidField(msg)
    return value


def parse_audio(message: dict[str, Any]) -> tuple[bytes, int | None]:
    """The bytes and optional seq of an ``audio {data: BASE64, seq?}`` message."""
    data = message.get("data")
    if not isinstance(data, str):
        raise BadMessage("an 'audio' message needs base64 'data'")
    try:
        audio = base64.b64decode(data, validate=True)
        seq = parse_seq(message.get("seq"))
    except (binascii.Error, ValueError) as exc:
        detail = exc.detail if isinstance(exc, ServiceError) else "data is not base64"
        raise BadMessage(detail) from None
    return audio, seq


def _text(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        return "?"  # rejected by the field's own check with a clear message
    return str(value)
