"""``/sessions/{user_id}``: a user's sessions (paged; ``web/listing.py``), ending one now
(``.../end``) and watching it (``.../events``, server-sent events). A session's audio,
transcript and deletion are ``session_export.py``'s."""

from __future__ import annotations

from typing import Final

from quart import Response, request
from quart_trio import QuartTrio

from ...errors import NotFound
from ...models import check_id
from .. import session_events
from ..context import context, owned
from ..listing import decode_cursor, list_session_totals, list_sessions, parse_flag, parse_limit
from ..responses import chunks_response, json_response

DEFAULT_PAGE: Final = 100
MAX_PAGE: Final = 1000


async def get_sessions(user_id: str) -> Response:
    check_id("user_id", user_id)
    owned(user_id, f"user {user_id!r}")
    only = check_id("session_id", request.args.get("session_id"), required=False)
    limit = parse_limit(request.args.get("limit"))
    cursor = decode_cursor(request.args.get("cursor"))
    with_chunks = parse_flag("chunks", request.args.get("chunks"), default=True)
    store = context().store
    if with_chunks:
        return chunks_response(await list_sessions(store, user_id, only, limit, cursor))
    return json_response(await list_session_totals(store, user_id, only, limit, cursor))


async def end_session(user_id: str, session_id: str) -> Response:
    # Finalize now: the session's last words, without waiting for the idle timeout.
    check_id("user_id", user_id)
    check_id("session_id", session_id)
    owned(user_id, f"user {user_id!r}")
    ctx = context()
    ws = ctx.ws
    ended = await session_events.end_session(ctx.store, ws.watchers, ws.transcriber, user_id,
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
    app.add_url_rule(
        "/sessions/<user_id>/<session_id>/end", view_func=end_session, methods=["POST"]
    )
    app.add_url_rule(
        "/sessions/<user_id>/<session_id>/events", view_func=watch_session, methods=["GET"]
    )
