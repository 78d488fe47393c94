"""The HTTP app: quart-trio, its error handling and authentication, and its routes.

``create_app`` builds one context object (``web/context.py``) with everything the routes
need (no module-level state) and registers the routes, one module per resource under
``web/routes/``. Every error is an RFC 9457 ``application/problem+json`` body with a stable
``code``; bodies are held to their byte limit however they are sent (``App``).
"""

from __future__ import annotations

import logging
from typing import Final

import trio
from quart import Response, g, request
from quart_trio import QuartTrio
from quart_trio.wrappers.request import TrioBody, TrioRequest
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from ..config import Config
from ..errors import (
    BadRequest,
    InternalError,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    ServiceError,
    UnsupportedMediaType,
)
from ..metrics import Metrics
from ..pipeline.pipeline import Ingress
from ..store import StoreBackend
from .access import Access
from .console import register_console
from .context import AppContext, Readiness, context, owned
from .responses import problem_response
from .routes import chunks, probes, sessions, socket, uploads
from .routes.session_export import register_session_export
from .ws import WsContext

logger = logging.getLogger("trio_audio.web")
POSITION: Final = "Trio-Audio-Position"  # a cluster node's log position (see read_after_write)

HTTP_ERRORS: Final[dict[int, type[ServiceError]]] = {
    404: NotFound,
    405: MethodNotAllowed,
    413: PayloadTooLarge,
    415: UnsupportedMediaType,
}
OPEN_PATHS: Final = probes.OPEN_PATHS | {"/", "/docs"}  # and /static/: the console's

__all__ = ["App", "Readiness", "create_app"]


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
    ctx: AppContext


def create_app(
    config: Config,
    store: StoreBackend,
    ingress: Ingress,
    metrics: Metrics,
    readiness: Readiness,
    ws: WsContext,
    access: Access,
    limiter: trio.CapacityLimiter | None = None,
) -> QuartTrio:
    """The quart-trio app, bound to the store and the pipeline's ingress.

    It also serves the WebSocket session protocol at ``/ws`` on the HTTP port, with the same
    session code as the dedicated listener. *access* (tokens and rate limit) is the same
    object the WebSocket sessions use. *limiter* bounds the threads that decode a session's
    audio for export (the service's CPU limiter; a limiter of ``cpu_threads`` when None).
    """
    app = App("trio_audio", static_folder=None)  # /static/ is the console's
    app.ctx = AppContext(config, store, ingress, metrics, readiness, ws, access)
    app.config["MAX_CONTENT_LENGTH"] = config.max_body_bytes
    app.config["MAX_FORM_PARTS"] = config.max_parts + 16
    app.config["BODY_TIMEOUT"] = max(30, int(config.stage_timeout_s * 3))
    app.register_error_handler(ServiceError, on_service_error)
    app.register_error_handler(HTTPException, on_http_error)
    app.register_error_handler(Exception, on_error)
    app.before_request(authenticate)
    app.before_request(read_after_write)
    app.after_request(write_position)
    for routes in (probes, uploads, chunks, sessions, socket):
        routes.register(app)
    register_session_export(
        app, config, store, owned, limiter or trio.CapacityLimiter(config.cpu_threads)
    )
    register_console(app)
    return app


async def on_service_error(error: ServiceError) -> Response:
    store = context().store
    followed = request.method == "GET" and POSITION not in request.headers
    if isinstance(error, NotFound) and followed and store.position is not None:
        # A cluster node may not have followed the log as far as the node that took a
        # write: a read right after it elsewhere is worth a retry.
        detail = (f"{error.detail} (on this node, yet: retry, or send the "
                  f"{POSITION} header the write's answer carried)")  # fmt: skip
        return problem_response(error, detail, retryable=True)
    return problem_response(error)


async def write_position(response: Response) -> Response:
    """A write answered by a cluster node carries the node's log position then, for a read on
    another node to send back (``read_after_write``)."""
    position = context().store.position  # a cluster store's; None: the local log
    written = request.method in ("POST", "DELETE") and response.status_code < 300
    if position is not None and written:
        response.headers[POSITION] = str(position)
    return response


async def read_after_write() -> None:
    """A request carrying the ``Trio-Audio-Position`` another node's answer gave waits until
    this node's follower has applied the log that far (a cluster store; up to twice
    ``store_timeout_s``, then it is answered from what this node has)."""
    wanted = request.headers.get(POSITION, "")
    if wanted.isascii() and wanted.isdigit() and len(wanted) <= 18:
        await context().store.wait_followed(int(wanted))


async def on_http_error(error: HTTPException) -> Response:
    status = error.code or 500
    if status == 413:
        detail = f"the body is over the {context().config.max_body_bytes} byte limit"
    else:
        detail = error.description or error.name
    kind = HTTP_ERRORS.get(status, BadRequest if status < 500 else InternalError)
    return problem_response(kind(detail))


async def on_error(error: Exception) -> Response:
    logger.exception("unhandled error on %s %s", request.method, request.path)
    return problem_response(InternalError("the server failed to handle this request"))


async def authenticate() -> None:
    """With auth on, every request but the open ones names its user by its token."""
    path = request.path
    if path not in OPEN_PATHS and not path.startswith("/static/"):
        g.user_id = context().access.user_for_request(request.headers)
