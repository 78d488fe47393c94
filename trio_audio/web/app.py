"""The HTTP API: quart-trio routes that send jobs into the pipeline and read the store.

``create_app`` receives everything the routes need (no module-level state). Uploads are
refused with 503 + ``Retry-After`` when the ingress queue is full, checked before the body is
read; bodies over ``max_body_bytes`` get 413 without being read into memory (Quart refuses on
``Content-Length`` and stops buffering a chunked body at the limit). Every error is an RFC 9457
``application/problem+json`` body with a stable ``code``.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import logging
from collections.abc import Iterator
from typing import Any, Final

import attrs
import trio
from quart import Response, g, request, websocket
from quart_trio import QuartTrio
from quart_trio.wrappers.request import TrioBody, TrioRequest
from werkzeug.datastructures import MultiDict
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from ..asr.context import parse_vocabulary
from ..audio.decode import parse_media_type, raw_format_from
from ..config import Config
from ..errors import (
    BadRequest,
    Forbidden,
    InternalError,
    InvalidAudio,
    InvalidField,
    MethodNotAllowed,
    MissingField,
    NotFound,
    PayloadTooLarge,
    RequestTimeout,
    ServiceError,
    Unauthorized,
    UnsupportedMediaType,
)
from ..metrics import Metrics
from ..models import Job, Part, check_id, parse_seq, parse_timestamp
from ..pipeline.pipeline import Ingress
from ..store import StoreBackend
from ..store.index import Stored
from . import session_events
from .access import Access
from .console import register_console
from .media import CONTAINER_TYPES, OCTETS
from .openapi import SPEC
from .transports import QuartTransport
from .ws import Session, WsContext

logger = logging.getLogger("trio_audio.web")

DEFAULT_PAGE: Final = 100
MAX_PAGE: Final = 1000
PROBLEM_TYPE: Final = "application/problem+json"
HTTP_ERRORS: Final[dict[int, type[ServiceError]]] = {
    404: NotFound,
    405: MethodNotAllowed,
    413: PayloadTooLarge,
    415: UnsupportedMediaType,
}


@attrs.define
class Readiness:
    """What ``/readyz`` reports: each part of the service sets its flag when it is up."""

    store: bool = False
    pipeline: bool = False
    http: bool = False
    draining: bool = False
    store_problem: str | None = None  # why a cluster store cannot serve now (None: it can)

    @property
    def ready(self) -> bool:
        ok = self.store and self.pipeline and self.http and not self.draining
        return ok and self.store_problem is None

    def note_store(self, problem: str | None) -> None:
        """The store's health changed (``JetStreamStore``'s ``on_health``)."""
        self.store_problem = problem


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    text = json.dumps(body, separators=(",", ":"), allow_nan=False)
    return Response(text, status=status, headers=headers, content_type="application/json")


def problem_response(error: ServiceError, detail: str | None = None, **extra: Any) -> Response:
    """*error* as RFC 9457 problem+json; *detail* replaces its detail, *extra* adds members."""
    headers = {}
    if isinstance(error, Unauthorized):
        headers["WWW-Authenticate"] = 'Bearer realm="trio-audio"'

    retry_after = getattr(error, "retry_after", None)
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    body = error.problem(instance=request.path if request else None)
    if detail is not None:
        body["detail"] = detail
    body.update(extra)
    text = json.dumps(body, separators=(",", ":"))
    return Response(text, status=error.status, headers=headers, content_type=PROBLEM_TYPE)


class _CappedBody(TrioBody):
    """A request body whose byte limit counts every byte received, not the bytes buffered.

    Quart compares its limit with what waits in the buffer, which a form parser empties as it
    reads: a chunked multipart body (no Content-Length) was never cut off at the limit. And a
    reader woken by the cut-off saw only "no more data", a form that simply ended.
    """

    _received = 0

    async def __anext__(self) -> bytes:
        try:
            return await super().__anext__()
        except StopAsyncIteration:
            if self._must_raise is not None:
                raise self._must_raise from None
            raise

    def append(self, data: bytes) -> None:
        self._received += len(data)
        limit = self._max_content_length
        if limit is not None and self._received > limit and self._must_raise is None:
            self._must_raise = RequestEntityTooLarge()
            self.set_complete()
            return
        super().append(data)


class _Request(TrioRequest):
    body_class = _CappedBody


class App(QuartTrio):
    """The quart-trio app, with request bodies held to their byte limit however they are sent.

    How a response ends under hypercorn (a refusal's unread body, the held-back
    ``http.disconnect``) is the front door's business (``asgi.py``), in front of this app.
    """

    request_class = _Request


def create_app(
    config: Config,
    store: StoreBackend,
    ingress: Ingress,
    metrics: Metrics,
    readiness: Readiness,
    ws: WsContext,
    access: Access,
) -> QuartTrio:
    """The quart-trio app, bound to the store and the pipeline's ingress.

    It also serves the WebSocket session protocol at ``/ws`` on the HTTP port, with the same
    session code as the dedicated listener. *access* (tokens and rate limit) is the same
    object the WebSocket sessions use.
    """
    app = App("trio_audio", static_folder=None)  # /static/ is the console's
    app.config["MAX_CONTENT_LENGTH"] = config.max_body_bytes
    app.config["MAX_FORM_PARTS"] = config.max_parts + 16
    app.config["BODY_TIMEOUT"] = max(30, int(config.stage_timeout_s * 3))

    @contextlib.contextmanager
    def body_deadline(length: int | None) -> Iterator[None]:
        """Cut off a body sent slower than ``min_upload_bytes_per_s`` (after a grace)."""
        if config.min_upload_bytes_per_s <= 0:
            yield
            return
        size = length if length is not None else config.max_body_bytes
        allowed = config.upload_grace_s + size / config.min_upload_bytes_per_s
        with trio.move_on_after(allowed) as scope:
            yield
        if scope.cancelled_caught:
            msg = (f"the body took over {allowed:.1f} s; the minimum upload rate is "
                   f"{config.min_upload_bytes_per_s:g} bytes/s")  # fmt: skip
            raise RequestTimeout(msg)

    def form_too_large(exc: RequestEntityTooLarge) -> PayloadTooLarge:
        """The 413 for a multipart body, naming the limit it broke.

        werkzeug's multipart parser raises the same exception for too many parts, a text field
        over ``MAX_FORM_MEMORY_SIZE`` and a body over the byte limit; where it was raised tells
        them apart (the part count is checked as each part's headers are parsed).
        """
        where = exc.__traceback__
        while where is not None and where.tb_next is not None:
            where = where.tb_next
        raised_in = where.tb_frame.f_code.co_name if where is not None else ""
        if raised_in == "next_event":
            msg = (f"the multipart body has more than {app.config['MAX_FORM_PARTS']} parts; an "
                   f"upload takes at most {config.max_parts} files and a few fields")  # fmt: skip
        elif raised_in == "parse":
            msg = (f"a multipart text field is over the "
                   f"{app.config['MAX_FORM_MEMORY_SIZE']} byte limit")  # fmt: skip
        else:
            msg = f"the body is over the {config.max_body_bytes} byte limit"
        return PayloadTooLarge(msg)

    def part_problem(error: ServiceError, index: int, filename: str | None) -> Response:
        """*error* as a problem that names the multipart file part it is about."""
        detail = f"file part {index} (filename {filename!r}): {error.detail}"
        return problem_response(error, detail, part={"index": index, "filename": filename})

    @app.errorhandler(ServiceError)
    async def on_service_error(error: ServiceError) -> Response:
        return problem_response(error)

    @app.errorhandler(HTTPException)
    async def on_http_error(error: HTTPException) -> Response:
        status = error.code or 500
        if status == 413:
            detail = f"the body is over the {config.max_body_bytes} byte limit"
        else:
            detail = error.description or error.name
        kind = HTTP_ERRORS.get(status, BadRequest if status < 500 else InternalError)
        return problem_response(kind(detail))

    @app.errorhandler(Exception)
    async def on_error(error: Exception) -> Response:
        logger.exception("unhandled error on %s %s", request.method, request.path)
        return problem_response(InternalError("the server failed to handle this request"))

    open_paths = {"/healthz", "/readyz", "/metrics", "/openapi.json", "/", "/docs"}

    @app.before_request
    async def authenticate() -> None:
        """With auth on, every request but the open ones names its user by its token."""
        path = request.path
        if path not in open_paths and not path.startswith("/static/"):
            g.user_id = access.user_for_request(request.headers)

    def owned(owner: str, what: str) -> None:
        """Another user's data is reported missing: its existence must not leak."""
        user = g.get("user_id")
        if user is not None and owner != user:
            raise NotFound(f"no {what}")

    def chunk_owner(chunk_id: str) -> None:
        owner = store.owner(chunk_id)
        if owner is not None:
            owned(owner, f"chunk {chunk_id!r}")

    @app.get("/openapi.json")
    async def openapi() -> Response:
        return json_response(SPEC)

    @app.get("/healthz")
    async def healthz() -> Response:
        return json_response({"status": "ok"})

    @app.get("/readyz")
    async def readyz() -> Response:
        stats = store.stats()
        body: dict[str, Any] = {
            "status": "ready" if readiness.ready else "not_ready",
            **attrs.asdict(readiness),
            "chunks": stats.chunks,
            "replayed_records": stats.replayed_records,
        }
        return json_response(body, 200 if readiness.ready else 503)

    @app.get("/metrics")
    async def metrics_text() -> Response:
        return Response(metrics.render(), content_type="text/plain; version=0.0.4")

    @app.post("/upload")
    async def upload() -> Response:
        if ingress.full:  # refuse before reading the body
            raise ingress.refuse("queue_full")
        content_type = request.headers.get("Content-Type", "")
        media_type, _ = parse_media_type(content_type)
        user = g.get("user_id")
        multipart = media_type == "multipart/form-data"
        if not multipart and (user is not None or request.args.get("user_id")):
            access.take(user or request.args["user_id"])  # before reading the body
        filenames: list[str | None] = []
        with body_deadline(request.content_length):
            if media_type == "multipart/form-data":
                try:
                    form = await request.form
                except RequestEntityTooLarge as exc:
                    raise form_too_large(exc) from None
                files = (await request.files).getlist("file")
                fields = MultiDict(list(request.args.items(multi=True)))
                fields.update(form)
                uploads = [(f.read(config.max_part_bytes + 1), f.content_type or OCTETS)
                           for f in files]  # fmt: skip
                filenames = [f.filename for f in files]
            else:
                fields = request.args
                uploads = [(await request.get_data(cache=False), content_type)]
        if media_type == "multipart/form-data":
            if not uploads:
                raise MissingField("multipart upload has no 'file' part")
            if len(uploads) > config.max_parts:
                msg = f"{len(uploads)} files in one upload, over the limit of {config.max_parts}"
                raise PayloadTooLarge(msg)
            for index, (body, _) in enumerate(uploads):
                if len(body) > config.max_part_bytes:
                    msg = f"the file part is over the {config.max_part_bytes} byte limit"
                    return part_problem(PayloadTooLarge(msg), index, filenames[index])
            if owner := user or fields.get("user_id"):
                access.take(owner, len(uploads))  # one upload per file part
        fields = authorize_fields(fields, user)
        job = build_job(fields, uploads)
        terms = upload_vocabulary(fields)
        ingress.submit_nowait(job)
        if terms is not None and ws.transcriber is not None:  # before its chunks are stored
            ws.transcriber.set_vocabulary(job.user_id, job.session_id, terms)
        try:
            results: list[Stored] = await job.reply.wait()
        except (InvalidAudio, UnsupportedMediaType, PayloadTooLarge) as exc:
            # Decoding refused a part: name it (parts are decoded in order, and the
            # first part left undecoded is the one that failed).
            failed = next((i for i, part in enumerate(job.parts)
                           if part.decoded is None and part.audio_info is None), None)  # fmt: skip
            if not multipart or failed is None:
                raise
            return part_problem(exc, failed, filenames[failed])
        status = 201 if any(r.created for r in results) else 200
        locations = [f"/chunks/{r.chunk['chunk_id']}" for r in results]
        headers = {"Location": locations[0]}
        if media_type == "multipart/form-data":
            # Location names the first chunk; Link names every chunk, in part order.
            headers["Link"] = ", ".join(f'<{url}>; rel="item"' for url in locations)
            return json_response({"chunks": [r.chunk for r in results]}, status, headers)
        return json_response(results[0].chunk, status, headers)

    @app.get("/chunks/<chunk_id>")
    async def get_chunk(chunk_id: str) -> Response:
        check_id("chunk_id", chunk_id)
        chunk_owner(chunk_id)
        return json_response(store.get(chunk_id))

    @app.get("/chunks/<chunk_id>/audio")
    async def get_audio(chunk_id: str) -> Response:
        check_id("chunk_id", chunk_id)
        chunk_owner(chunk_id)
        data, _ = await store.read_audio(chunk_id)
        # The type of what the bytes are (found by their magic), never the uploader's
        # header: a "text/html" upload must not come back as a page a browser runs.
        container = store.get(chunk_id)["audio"]["container"]
        headers = {"X-Content-Type-Options": "nosniff"}
        return Response(data, content_type=CONTAINER_TYPES.get(container, OCTETS), headers=headers)

    @app.websocket("/ws")
    async def ws_session() -> None:
        await websocket.accept()
        await Session(QuartTransport(websocket), ws, ingress).run()

    @app.get("/sessions/<user_id>")
    async def get_sessions(user_id: str) -> Response:
        check_id("user_id", user_id)
        owned(user_id, f"user {user_id!r}")
        only = check_id("session_id", request.args.get("session_id"), required=False)
        limit = parse_limit(request.args.get("limit"))
        cursor = decode_cursor(request.args.get("cursor"))
        return json_response(list_sessions(store, user_id, only, limit, cursor))

    @app.delete("/chunks/<chunk_id>")
    async def delete_chunk(chunk_id: str) -> Response:
        # A durable tombstone; 404 if not stored, 507 when the log cannot take it.
        check_id("chunk_id", chunk_id)
        chunk_owner(chunk_id)
        await store.delete_chunk(chunk_id)
        return json_response({"chunk_id": chunk_id, "deleted": True})

    @app.delete("/sessions/<user_id>")
    async def delete_session(user_id: str) -> Response:
        check_id("user_id", user_id)
        owned(user_id, f"user {user_id!r}")
        session_id = check_id("session_id", request.args.get("session_id"))
        assert session_id is not None
        deleted = await store.delete_session(user_id, session_id)
        body = {"user_id": user_id, "session_id": session_id, "deleted": len(deleted)}
        return json_response({**body, "chunk_ids": deleted})

    @app.post("/sessions/<user_id>/<session_id>/end")
    async def end_session(user_id: str, session_id: str) -> Response:
        # Finalize now: the session's last words, without waiting for the idle timeout.
        check_id("user_id", user_id)
        check_id("session_id", session_id)
        owned(user_id, f"user {user_id!r}")
        ended = await session_events.end_session(store, ws.hub, ws.transcriber, user_id,
                                                 session_id)  # fmt: skip
        if ended is None:
            raise NotFound(f"user {user_id!r} has no session {session_id!r}")
        return json_response(ended)

    @app.get("/sessions/<user_id>/<session_id>/events")
    async def watch_session(user_id: str, session_id: str) -> Response:
        # Server-sent events: the session's live results, as a WebSocket watcher gets them.
        check_id("user_id", user_id)
        check_id("session_id", session_id)
        owned(user_id, f"user {user_id!r}")
        stream = session_events.event_stream(ws.hub, user_id, session_id, ws.shutdown)
        # Its end is the connection's end: no idle keep-alive left to hold a shutdown.
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", "Connection": "close"}
        response = Response(stream, content_type="text/event-stream", headers=headers)
        response.timeout = None  # it lasts as long as the client watches
        return response

    register_console(app)
    return app


def authorize_fields(fields: MultiDict[str, str], user: str | None) -> MultiDict[str, str]:
    """With auth on, the upload is the token's user's: naming another is refused (403)."""
    if user is None:
        return fields
    named = fields.get("user_id")
    if named and named != user:
        msg = f"this token uploads as {user!r}, not {named[:64]!r}"
        raise Forbidden(msg)
    if named:
        return fields
    out = MultiDict(list(fields.items(multi=True)))
    out["user_id"] = user
    return out


def upload_vocabulary(fields: MultiDict[str, str]) -> tuple[str, ...] | None:
    """The ``vocabulary`` field of an upload (query or form): comma-separated terms, or the
    field repeated, a term each; None when it is not given. 400 when it is too big."""
    given = fields.getlist("vocabulary")
    if not given:
        return None
    return parse_vocabulary(given[0] if len(given) == 1 else given)


def build_job(fields: MultiDict[str, str], uploads: list[tuple[bytes, str]]) -> Job:
    """A job from the request's fields (query or form) and its bodies; 400 on bad fields."""
    user_id = check_id("user_id", fields.get("user_id"))
    session_id = check_id("session_id", fields.get("session_id"))
    assert user_id is not None and session_id is not None
    seq = parse_seq(fields.get("seq"))
    timestamp = parse_timestamp(fields.get("timestamp"))
    parts = []
    for index, (body, content_type) in enumerate(uploads):
        media_type, params = parse_media_type(content_type)
        raw = raw_format_from(
            media_type,
            params,
            fields.get("encoding"),
            fields.get("sample_rate"),
            fields.get("channels"),
        )
        parts.append(
            Part(
                body=body,
                content_type=content_type or "application/octet-stream",
                raw=raw,
                seq=None if seq is None else seq + index,
                timestamp=timestamp,
            )
        )
    return Job(user_id=user_id, session_id=session_id, parts=parts)


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
