"""``GET /sessions/{user_id}``: a user's sessions, as pages of their chunks or as totals.

With chunks (the default), a page holds up to ``limit`` chunks grouped by session (sessions
by id, chunks by seq) and each session's totals. With ``chunks=false`` a page holds up to
``limit`` sessions' totals and transcripts and no chunks, so a client can list an hour-long
session (36,000 chunks) as one line. Either way ``next_cursor`` continues where the page
ended; a cursor is opaque to clients and good only for the mode that gave it out.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any, Final

from ..errors import InvalidField
from ..store import StoreBackend
from ..store.queries import SessionSummary

DEFAULT_PAGE: Final = 100
MAX_PAGE: Final = 1000
FLAGS: Final = {"true": True, "1": True, "false": False, "0": False}


def parse_limit(value: str | None) -> int:
    if value is None or value == "":
        return DEFAULT_PAGE
    if not (value.isascii() and value.isdigit()) or not 1 <= int(value) <= MAX_PAGE:
        msg = f"limit must be an integer 1..{MAX_PAGE}, got {value[:20]!r}"
        raise InvalidField(msg)
    return int(value)


def parse_flag(name: str, value: str | None, default: bool) -> bool:
    if value is None or value == "":
        return default
    if value.lower() not in FLAGS:
        msg = f"{name} must be true or false, got {value[:20]!r}"
        raise InvalidField(msg)
    return FLAGS[value.lower()]


def encode_cursor(session_id: str, seq: int) -> str:
    raw = json.dumps([session_id, seq], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(value: str | None) -> tuple[str, int] | None:
    if not value:
        return None
    msg = "cursor is not one this server gave out"
    try:
        position = json.loads(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise InvalidField(msg) from None
    match position:
        case [str(session_id), int(seq)]:
            return session_id, seq
    raise InvalidField(msg)


async def list_sessions(
    store: StoreBackend,
    user_id: str,
    only: str | None,
    limit: int,
    cursor: tuple[str, int] | None,
) -> dict[str, Any]:
    """One page of a user's chunks, grouped by session (sessions by id, chunks by seq)."""
    page, more = await store.page(user_id, only, limit, cursor)
    out = [session_json(summary, chunks) for summary, chunks in page]
    next_cursor = encode_cursor(*more) if more is not None else None
    return {"user_id": user_id, "sessions": out, "next_cursor": next_cursor}


async def list_session_totals(
    store: StoreBackend,
    user_id: str,
    only: str | None,
    limit: int,
    cursor: tuple[str, int] | None,
) -> dict[str, Any]:
    """One page of a user's sessions (by id): their totals and transcripts, no chunks.
    The cursor names the last session given (its seq part is unused, -1)."""
    names = [n for n in store.session_ids(user_id) if only is None or n == only]
    if cursor is not None:
        names = [n for n in names if n > cursor[0]]
    out = []
    for name in names[:limit]:
        summary = store.summary(user_id, name)
        if summary is None:  # deleted since the ids were read
            continue
        out.append(session_json(summary, []))
    next_cursor = encode_cursor(names[limit - 1], -1) if len(names) > limit else None
    return {"user_id": user_id, "sessions": out, "next_cursor": next_cursor}


def session_json(summary: SessionSummary, chunks: list[dict[str, Any]]) -> dict[str, Any]:
    """One session of a listing: its totals, transcript and *chunks* (in seq order)."""
    return {
        "session_id": summary.session_id,
        "chunk_count": summary.chunk_count,
        "duration_ms": summary.duration_ms,
        "transcript": summary.transcript,
        "chunks": chunks,
    }
