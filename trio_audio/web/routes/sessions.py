"""``/sessions/{user_id}``: a user's sessions (paged), a session's deletion, ending it now
(``.../end``) and watching it (``.../events``, server-sent events)."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any, Final

from quart import Response, request
from quart_trio import QuartTrio

from ...errors import InvalidField, NotFound
from ...models import check_id
from ...store import StoreBackend
from .. import session_events
from ..context import context, owned
from ..responses import json_response

DEFAULT_PAGE: Final = 100
MAX_PAGE: Final = 1000


async def get_sessions(user_id: str) -> Response:
    check_id("user_id", user_id)
    owned(user_id, f"user {user_id!r}")
    only = check_id("session_id", request.args.get("session_id"), required=False)
    limit = parse_limit(request.args.get("limit"))
    cursor = decode_cursor(request.args.get("cursor"))
    return json_response(list_sessions(context().store, user_id, only, limit, cursor))


async def delete_session(user_id: str) -> Response:
    check_id("user_id", user_id)
    owned(user_id, f"user {user_id!r}")
    session_id = check_id("session_id", request.args.get("session_id"))
    assert session_id is not None
    deleted = await context().store.delete_session(user_id, session_id)
    body = {"user_id": user_id, "session_id": session_id, "deleted": len(deleted)}
    return json_response({**body, "chunk_ids": deleted})


async def end_session(user_id: str, session_id: str) -> Response:
    # Finalize now: the session's last words, without waiting for the idle timeout.
    check_id("user_id", user_id)
    check_id("session_id", session_id)
    owned(user_id, f"user {user_id!r}")
    ctx = context()
    ended = await session_events.end_session(ctx.store, ctx.ws.hub, ctx.ws.transcriber, user_id,
                                             session_id)  # fmt: skip
    if ended is None:
        raise NotFound(f"user {user_id!r} has no session {session_id!r}")
    return json_response(ended)


async def watch_session(user_id: str, session_id: str) -> Response:
    # Server-sent events: the session's live results, as a WebSocket watcher gets them.
    check_id("user_id", user_id)
    check_id("session_id", session_id)
    owned(user_id, f"user {user_id!r}")
    ws = context().ws
    stream = session_events.event_stream(ws.hub, user_id, session_id, ws.shutdown)
    # Its end is the connection's end: no idle keep-alive left to hold a shutdown.
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", "Connection": "close"}
    response = Response(stream, content_type="text/event-stream", headers=headers)
    response.timeout = None  # it lasts as long as the client watches
    return response


def register(app: QuartTrio) -> None:
    app.add_url_rule("/sessions/<user_id>", view_func=get_sessions, methods=["GET"])
    app.add_url_rule("/sessions/<user_id>", view_func=delete_session, methods=["DELETE"])
    app.add_url_rule(
        "/sessions/<user_id>/<session_id>/end", view_func=end_session, methods=["POST"]
    )
    app.add_url_rule(
        "/sessions/<user_id>/<session_id>/events", view_func=watch_session, methods=["GET"]
    )


def parse_limit(value: str | None) -> int:
    if value is None or value == "":
        return DEFAULT_PAGE
    if not (value.isascii() and value.isdigit()) or not 1 <= int(value) <= MAX_PAGE:
        msg = f"limit must be an integer 1..{MAX_PAGE}, got {value[:20]!r}"
        raise InvalidField(msg)
    return int(value)


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


def list_sessions(
    store: StoreBackend,
    user_id: str,
    only: str | None,
    limit: int,
    cursor: tuple[str, int] | None,
) -> dict[str, Any]:
    """One page of a user's chunks, grouped by session (sessions by id, chunks by seq)."""
    page, more = store.page(user_id, only, limit, cursor)
    out = [
        {
            "session_id": summary.session_id,
            "chunk_count": summary.chunk_count,
            "duration_ms": summary.duration_ms,
            "transcript": summary.transcript,
            "chunks": chunks,
        }
        for summary, chunks in page
    ]
    next_cursor = encode_cursor(*more) if more is not None else None
    return {"user_id": user_id, "sessions": out, "next_cursor": next_cursor}
