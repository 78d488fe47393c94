"""The WebSocket session protocol, and its two transports.

One connection is one session stream. JSON text frames carry control, binary frames carry
audio (one chunk each)::

    client                                   server
    start {user_id, session_id, format,  ->
           resume_from_seq?}             <-  started {session_id, next_seq, limits}
                                         <-  (resume: ack + metadata [+ transcript] replayed)
    <binary chunk> | audio {data, seq?}  ->
                                         <-  ack {seq, chunk_id}        once durably stored
                                         <-  metadata {...chunk JSON}
                                         <-  transcript / vad / flow {queue_depth, lag_ms}
    finalize | keepalive                 ->
    end                                  ->
                                         <-  session_end {summary}, close 1000
    (anything wrong)                     <-  error {code, message, retryable}, close 4xxx

Resource handling: each connection runs four tasks in its own nursery: the reader (parses,
submits to the pipeline), the acker (answers chunks in order), the relay (the session's live
results from the hub) and the writer (the only task that sends). Every queue between them is
bounded: the reader stops reading the socket when ``ws_max_inflight`` chunks are unanswered
(TCP backpressure); a chunk that finds the pipeline full for ``ws_overload_timeout_s`` ends the
connection with ``overloaded``; a client that reads results too slowly overflows its hub queue
and is cut off with ``slow_reader``.

Error handling: a bad message, format or chunk ends the connection with an ``error`` and the
matching close code; other sessions never notice. On shutdown a session stops reading,
answers what it had taken, and closes with 1001 so its client can resume elsewhere.

Transports: ``serve_ws`` runs the trio-websocket listener (the fast path); ``quart_session``
serves the same protocol at ``/ws`` on the HTTP port. Both only move frames.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import logging
import math
import secrets
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from typing import Any, Final, Protocol
from urllib.parse import parse_qsl, urlsplit

import attrs
import trio
from trio_websocket import ConnectionClosed, WebSocketRequest, serve_websocket

from ..audio.decode import RawFormat, raw_format_from
from ..config import Config
from ..errors import (
    BadMessage,
    Forbidden,
    IdleTimeout,
    InternalError,
    InvalidField,
    Overloaded,
    PayloadTooLarge,
    RateLimited,
    ServiceError,
    SlowReader,
    UnsupportedMediaType,
)
from ..hub import Hub, Subscription
from ..metrics import Metrics
from ..models import Job, Part, check_id, parse_seq
from ..pipeline.pipeline import Ingress
from ..store import StoreBackend
from ..store.index import Stored
from .auth import RateLimiter, Tokens, bearer

logger = logging.getLogger("trio_audio.ws")

CLOSE_NORMAL: Final = 1000
CLOSE_GOING_AWAY: Final = 1001
CLOSE_NOT_FOUND: Final = 4404
CLOSE_TIMEOUT_S: Final = 2.0  # for the closing handshake and the last error message
MAX_CONTROL_BYTES: Final = 64 * 1024  # a JSON message that carries no audio
CONTAINER_TYPES: Final = {"wav": "audio/wav", "flac": "audio/flac", "ogg": "audio/ogg",
                          "mp3": "audio/mpeg"}  # fmt: skip


class Disconnected(Exception):
    """The peer has gone; nothing more can be sent or received."""


class Transport(Protocol):
    """What the session needs of a WebSocket library."""

    query: Mapping[str, str]
    headers: Mapping[str, str]  # of the handshake request, names in lower case

    async def receive(self) -> str | bytes: ...

    async def send(self, message: str) -> None: ...

    async def close(self, code: int, reason: str) -> None: ...


class Finalizer(Protocol):
    """What the session needs of the transcriber."""

    async def finalize(self, user_id: str, session_id: str) -> None: ...

    def lag_s(self) -> float: ...


@attrs.define
class WsContext:
    """What every session needs, made once in ``serve`` and shared by both transports."""

    config: Config
    store: StoreBackend
    hub: Hub
    metrics: Metrics
    shutdown: trio.Event
    transcriber: Finalizer | None = None
    tokens: Tokens | None = None  # None: auth off
    rate: RateLimiter | None = None
    active: int = 0
    per_user: dict[str, int] = attrs.field(factory=dict)
    sessions: set[Session] = attrs.field(factory=set)  # open ones, told to stop on shutdown

    def stop_sessions(self) -> None:
        """Shutdown: every open session (of both transports) stops reading."""
        for session in list(self.sessions):
            session.stop_reading()


class SessionError(Exception):
    """Ends a session: send *error* and close with its close code."""

    def __init__(self, error: ServiceError) -> None:
        super().__init__(error.detail)
        self.error = error


@attrs.frozen
class Start:
    user_id: str
    session_id: str
    content_type: str
    raw: RawFormat | None
    resume_from_seq: int | None


def dumps(message: dict[str, Any]) -> str:
    return json.dumps(message, separators=(",", ":"), allow_nan=False)


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
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        msg = "a control message is a JSON object with a string 'type'"
        raise BadMessage(msg)
    return message


def parse_start(
    message: dict[str, Any], query: Mapping[str, str], user: str | None = None
) -> Start:
    """Validate a ``start`` message (ids may also come from the URL's query).

    *user* is the authenticated user, when auth is on: the stream is theirs, and naming
    another user is ``Forbidden``.
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
    if not isinstance(fmt, dict):
        msg = "start needs a format: {encoding, sample_rate, channels} or {container}"
        raise BadMessage(msg)
    container = fmt.get("container")
    raw = None
    if container is not None:
        if container not in CONTAINER_TYPES:
            msg = f"container must be one of {', '.join(CONTAINER_TYPES)}, got {container!r}"
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
    )


def _first_leaf(group: BaseExceptionGroup[SessionError]) -> SessionError:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


def _text(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        return "?"  # rejected by the field's own check with a clear message
    return str(value)


class Session:
    """One connection speaking the protocol over a ``Transport``."""

    def __init__(self, transport: Transport, ctx: WsContext, ingress: Ingress) -> None:
        self.transport = transport
        self.id = secrets.token_hex(8)  # names this connection's jobs: it skips their echo
        self.ctx = ctx
        self.config = ctx.config
        self.ingress = ingress
        self.out_send, self.out_recv = trio.open_memory_channel[str | None](ctx.config.ws_queue)
        self.ack_send, self.ack_recv = trio.open_memory_channel[tuple[int, Job]](
            ctx.config.ws_max_inflight
        )
        self.unanswered: deque[float] = deque()  # receive times of chunks not yet answered
        self._answered = trio.Event()  # set each time the acker answers a chunk
        self._drained = trio.Event()  # set when the acker has answered the last chunk
        self._reading = trio.CancelScope()  # the reader's; shutdown cancels it
        self._handshaking = trio.CancelScope()  # the wait for 'start'; shutdown cancels it
        self.replayed: set[str] = set()
        self.stored = 0
        self.duplicates = 0
        self.next_seq = 0
        self.start: Start | None = None
        self.admitted: str | None = None  # the user this session is counted against

    # -- the whole connection -----------------------------------------------------------

    async def run(self) -> None:
        self.ctx.active += 1
        self.ctx.sessions.add(self)
        if self.ctx.shutdown.is_set():
            self.stop_reading()
        try:
            await self._run()
        except Disconnected:
            pass
        except Exception:  # a bug must end this session only, never the listener
            logger.exception("WebSocket session failed")
            await self._fail(InternalError("the server failed this session"))
        finally:
            self.ctx.sessions.discard(self)
            self.ctx.active -= 1
            if self.admitted is not None:
                left = self.ctx.per_user[self.admitted] - 1
                if left:
                    self.ctx.per_user[self.admitted] = left
                else:
                    del self.ctx.per_user[self.admitted]

    async def _run(self) -> None:
        start = None
        with self._handshaking:  # shutdown cancels it: a socket that never starts is let go
            try:
                start = await self._handshake()
            except SessionError as exc:
                await self._fail(exc.error)
                return
        if start is None:
            await self._close(CLOSE_GOING_AWAY, "server shutting down")
            return
        self.start = start
        code, reason, error, gone = CLOSE_NORMAL, "session ended", None, False
        with self.ctx.hub.subscribe(start.user_id, start.session_id, source=self.id) as sub:
            try:
                async with trio.open_nursery() as nursery:
                    writer_done = trio.Event()
                    nursery.start_soon(self._writer, writer_done)
                    await self._started_and_replay(start)
                    nursery.start_soon(self._relay, sub)
                    nursery.start_soon(self._flow)
                    nursery.start_soon(self._acker)
                    ended = await self._reader(start)
                    with trio.move_on_after(CLOSE_TIMEOUT_S if not ended else math.inf):
                        await self._drained.wait()  # on shutdown, bounded: resume covers it
                    if ended:
                        await self._finalize(start)
                        await self._send(self._session_end(start))
                    else:
                        code, reason = CLOSE_GOING_AWAY, "server shutting down"
                    await self.out_send.send(None)  # the writer flushes all before it
                    with trio.move_on_after(CLOSE_TIMEOUT_S):
                        await writer_done.wait()
                    nursery.cancel_scope.cancel()
            except* SessionError as group:
                error = _first_leaf(group).error
            except* Disconnected:
                gone = True
        if gone:
            return
        if error is not None:
            await self._fail(error)
        else:
            await self._close(code, reason)

    async def _handshake(self) -> Start:
        with trio.move_on_after(self.config.ws_idle_timeout_s):
            message = await self.transport.receive()
            if isinstance(message, bytes):
                msg = "the first message must be a JSON 'start', not audio"
                raise SessionError(BadMessage(msg))
            try:
                control = parse_control(message)
                user = self._authenticate(control)
                start = parse_start(control, self.transport.query, user)
                self._admit(start.user_id)
            except ServiceError as exc:
                raise SessionError(exc) from None
            return start
        msg = f"no 'start' within {self.config.ws_idle_timeout_s:g} s"
        raise SessionError(IdleTimeout(msg))

    def _authenticate(self, control: dict[str, Any]) -> str | None:
        """With auth on: the user of the token in the start message, ?token= or the header."""
        tokens = self.ctx.tokens
        if tokens is None:
            return None
        token = control.get("token") or self.transport.query.get("token")
        if not isinstance(token, str):
            token = bearer(self.transport.headers.get("authorization"))
        return tokens.user_for(token)

    def _admit(self, user_id: str) -> None:
        """Count the session in, or refuse it past the overall and per-user caps."""
        config, per_user = self.config, self.ctx.per_user
        if sum(per_user.values()) >= config.ws_max_sessions:
            msg = f"the server has its {config.ws_max_sessions} sessions open; retry later"
            raise Overloaded(msg)
        if per_user.get(user_id, 0) >= config.ws_max_sessions_per_user:
            msg = f"user {user_id!r} has {config.ws_max_sessions_per_user} sessions open already"
            raise Overloaded(msg)
        per_user[user_id] = per_user.get(user_id, 0) + 1
        self.admitted = user_id

    async def _started_and_replay(self, start: Start) -> None:
        store = self.ctx.store
        session = store.summary(start.user_id, start.session_id)
        resume = start.resume_from_seq
        self.next_seq = resume if resume is not None else (session.next_seq if session else 0)
        await self._send(
            {
                "type": "started",
                "user_id": start.user_id,
                "session_id": start.session_id,
                "next_seq": self.next_seq,
                "limits": {
                    "max_message_bytes": self.config.max_body_bytes,
                    "max_inflight": self.config.ws_max_inflight,
                    "idle_timeout_s": self.config.ws_idle_timeout_s,
                },
            }
        )
        if resume is None or session is None:
            return
        for seq, chunk_id in store.chunks_after(start.user_id, start.session_id, resume - 1):
            chunk = store.get(chunk_id)
            self.replayed.add(chunk_id)
            await self._send({"type": "ack", "seq": seq, "chunk_id": chunk_id, "replayed": True})
            await self._send({"type": "metadata", **chunk})
            transcript = chunk.get("transcript", {})
            if transcript.get("status") == "done":
                text, words = transcript["text"], transcript["words"]
                final = {"type": "transcript", "seq": seq, "is_final": True}
                await self._send({**final, "text": text, "words": words})

    # -- the four tasks -----------------------------------------------------------------

    async def _reader(self, start: Start) -> bool:
        """Read until ``end`` (True) or shutdown (False); submit each chunk to the pipeline.

        Shutdown cancels ``_reading`` (see ``stop_reading``): a frame read but not yet
        submitted was never answered, so its client sends it again when it resumes.
        """
        async with self.ack_send:
            with self._reading:
                while True:
                    message = await self._receive()
                    if isinstance(message, bytes):
                        await self._submit(start, message, None)
                        continue
                    control = self._control(message)
                    kind = control["type"]
                    if kind == "audio":
                        data, seq = self._audio_payload(control)
                        await self._submit(start, data, seq)
                    elif kind == "end":
                        return True
                    elif kind == "finalize":
                        await self._wait_answered()
                        await self._finalize(start)
                    elif kind == "keepalive":
                        await self._send({"type": "keepalive"})
                    else:
                        msg = f"unknown message type {kind[:40]!r}"
                        raise SessionError(BadMessage(msg))
            return False

    async def _receive(self) -> str | bytes:
        """The next message, or ``idle_timeout`` after ``ws_idle_timeout_s`` of silence."""
        with trio.move_on_after(self.config.ws_idle_timeout_s):
            return await self.transport.receive()
        msg = f"no message for {self.config.ws_idle_timeout_s:g} s"
        raise SessionError(IdleTimeout(msg))

    def stop_reading(self) -> None:
        """Shutdown: read no more; answer what was taken, then close 1001."""
        self._handshaking.cancel()
        self._reading.cancel()

    def _control(self, text: str) -> dict[str, Any]:
        try:
            return parse_control(text)
        except ServiceError as exc:
            raise SessionError(exc) from None

    def _audio_payload(self, control: dict[str, Any]) -> tuple[bytes, int | None]:
        data = control.get("data")
        if not isinstance(data, str):
            raise SessionError(BadMessage("an 'audio' message needs base64 'data'"))
        try:
            audio = base64.b64decode(data, validate=True)
            seq = parse_seq(control.get("seq"))
        except (binascii.Error, ValueError) as exc:
            detail = exc.detail if isinstance(exc, ServiceError) else "data is not base64"
            raise SessionError(BadMessage(detail)) from None
        return audio, seq

    async def _submit(self, start: Start, data: bytes, seq: int | None) -> None:
        if len(data) > self.config.max_body_bytes:
            msg = f"a chunk of {len(data)} bytes is over the {self.config.max_body_bytes} limit"
            raise SessionError(PayloadTooLarge(msg))
        if seq is None:
            seq = self.next_seq
        self.next_seq = seq + 1
        part = Part(body=data, content_type=start.content_type, raw=start.raw, seq=seq)
        job = Job(user_id=start.user_id, session_id=start.session_id, parts=[part], source=self.id)
        if self.ctx.rate is not None:
            try:
                self.ctx.rate.take(start.user_id)
            except RateLimited as exc:
                raise SessionError(exc) from None
        self.unanswered.append(time.monotonic())
        await self.ack_send.send((seq, job))  # waits while too many are unanswered
        with trio.move_on_after(self.config.ws_overload_timeout_s):
            await self.ingress.submit(job)
            return
        job.reply.fail(Overloaded("not taken: the pipeline had no room"))  # the acker's turn
        self.ctx.metrics.refuse("ws_wait_timeout")
        msg = (
            f"the pipeline had no room for {self.config.ws_overload_timeout_s:g} s; "
            f"resume from seq {seq} later"
        )
        raise SessionError(Overloaded(msg))

    async def _acker(self) -> None:
        """Answer chunks in the order they came: ack + metadata, or end with the error."""
        async with self.ack_recv:
            async for seq, job in self.ack_recv:
                try:
                    results: list[Stored] = await job.reply.wait()
                except ServiceError as exc:
                    raise SessionError(exc) from None
                finally:
                    self.unanswered.popleft()
                    self._answered.set()
                result = results[0]
                ack: dict[str, Any] = {"type": "ack", "seq": seq,
                                       "chunk_id": result.chunk["chunk_id"]}  # fmt: skip
                if result.created:
                    self.stored += 1
                else:
                    ack["duplicate"] = True
                    self.duplicates += 1
                await self._send(ack)
                if result.chunk["chunk_id"] not in self.replayed:
                    # Read back now, not at commit: the chunks before it are all answered
                    # by now, so its offset_ms is final even if they committed after it.
                    chunk = self.ctx.store.get(result.chunk["chunk_id"])
                    await self._send({"type": "metadata", **chunk})
        self._drained.set()

    async def _relay(self, sub: Subscription) -> None:
        """The session's live results from others (HTTP uploads, other sockets, transcripts)."""
        async for message in sub.receive:
            if message.get("type") == "metadata" and message.get("chunk_id") in self.replayed:
                continue
            await self._send(message)
        if sub.overflowed:
            msg = f"more than {self.config.ws_queue} results waited for this client to read them"
            raise SessionError(SlowReader(msg))

    async def _flow(self) -> None:
        """``flow {queue_depth, inflight, lag_ms, transcript_lag_ms}`` while anything lags.

        ``lag_ms``: age of this socket's oldest unanswered chunk; ``transcript_lag_ms``: age
        of the oldest chunk the transcriber has not done yet (all sessions: it is shared).
        """
        transcriber = self.ctx.transcriber
        while True:
            await trio.sleep(self.config.ws_flow_interval_s)
            behind = transcriber.lag_s() * 1000 if transcriber is not None else 0.0
            if self.unanswered or behind:
                lag = (time.monotonic() - self.unanswered[0]) * 1000 if self.unanswered else 0.0
                stats = self.ingress.statistics()  # the shared pipeline's front queue
                await self._send({"type": "flow", "queue_depth": stats.current_buffer_used,
                                  "inflight": len(self.unanswered), "lag_ms": round(lag, 1),
                                  "transcript_lag_ms": round(behind, 1)})  # fmt: skip

    async def _writer(self, done: trio.Event) -> None:
        """The only task that sends: drains the outgoing queue until the ``None`` marker."""
        async for text in self.out_recv:
            if text is None:
                break
            await self.transport.send(text)
        done.set()

    # -- helpers ------------------------------------------------------------------------

    async def _send(self, message: dict[str, Any]) -> None:
        await self.out_send.send(dumps(message))

    async def _wait_answered(self) -> None:
        while self.unanswered:
            self._answered = trio.Event()
            await self._answered.wait()

    async def _finalize(self, start: Start) -> None:
        if self.ctx.transcriber is not None:
            await self.ctx.transcriber.finalize(start.user_id, start.session_id)

    def _session_end(self, start: Start) -> dict[str, Any]:
        session = self.ctx.store.summary(start.user_id, start.session_id)
        return {
            "type": "session_end",
            "summary": {
                "user_id": start.user_id,
                "session_id": start.session_id,
                "stored": self.stored,
                "duplicates": self.duplicates,
                "next_seq": self.next_seq,
                "chunk_count": session.chunk_count if session else 0,
                "duration_ms": session.duration_ms if session else 0.0,
            },
        }

    async def _fail(self, error: ServiceError) -> None:
        self.ctx.metrics.failed(error.code)
        with trio.move_on_after(CLOSE_TIMEOUT_S):
            try:
                await self.transport.send(dumps(error_message(error)))
            except Disconnected:
                return
        await self._close(error.close_code, error.code)

    async def _close(self, code: int, reason: str) -> None:
        with trio.move_on_after(CLOSE_TIMEOUT_S), contextlib.suppress(Disconnected):
            await self.transport.close(code, reason)


# -- transports ---------------------------------------------------------------------------


def message_limit(config: Config) -> int:
    """The library's frame limit: a chunk as base64 inside JSON, plus its envelope."""
    return config.max_body_bytes * 4 // 3 + MAX_CONTROL_BYTES


class TrioWebsocketTransport:
    """A trio-websocket server connection."""

    def __init__(self, connection: Any, request_headers: Any) -> None:
        self.connection = connection
        self.query: Mapping[str, str] = dict(parse_qsl(urlsplit(connection.path).query))
        self.headers: Mapping[str, str] = {
            _text_of(name).lower(): _text_of(value) for name, value in request_headers
        }

    async def receive(self) -> str | bytes:
        try:
            message: str | bytes = await self.connection.get_message()
        except ConnectionClosed:
            raise Disconnected from None
        return message

    async def send(self, message: str) -> None:
        try:
            await self.connection.send_message(message)
        except ConnectionClosed:
            raise Disconnected from None

    async def close(self, code: int, reason: str) -> None:
        await self.connection.aclose(code, reason)


def _text_of(value: str | bytes) -> str:
    return value.decode("latin-1") if isinstance(value, bytes) else value


class QuartTransport:
    """quart-trio's WebSocket on the HTTP port (a client that goes away cancels the handler)."""

    def __init__(self, websocket: Any) -> None:
        self.websocket = websocket
        self.query: Mapping[str, str] = dict(websocket.args)
        self.headers: Mapping[str, str] = {k.lower(): v for k, v in websocket.headers.items()}

    async def receive(self) -> str | bytes:
        message: str | bytes = await self.websocket.receive()
        return message

    async def send(self, message: str) -> None:
        await self.websocket.send(message)

    async def close(self, code: int, reason: str) -> None:
        await self.websocket.close(code, reason)


async def serve_ws(
    ctx: WsContext,
    ingress: Ingress,
    tls: ssl.SSLContext | None = None,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """The trio-websocket listener on ``host:ws_port`` at ``/ws``; reports the bound port.

    Resource handling: owns its *ingress* clone. On shutdown it stops accepting, lets every
    session drain and close (1001), then closes the clone so the pipeline can end.
    """
    config = ctx.config

    async def handler(request: WebSocketRequest) -> None:
        connection = await request.accept()
        if urlsplit(request.path).path != "/ws":
            # Not request.reject(): in trio-websocket 0.12 a rejected connection's task
            # never ends, so each one would leak until shutdown.
            await connection.aclose(CLOSE_NOT_FOUND, "the WebSocket endpoint is /ws")
            return
        transport = TrioWebsocketTransport(connection, request.headers)
        await Session(transport, ctx, ingress).run()

    async with ingress, trio.open_nursery() as sessions, trio.open_nursery() as listener:
        serve: Callable[..., Awaitable[Any]] = partial(
            serve_websocket,
            handler,
            config.host,
            config.ws_port,
            tls,
            handler_nursery=sessions,
            max_message_size=message_limit(config),
            message_queue_size=4,
        )
        server = await listener.start(serve)
        task_status.started(server.port)
        await ctx.shutdown.wait()
        ctx.stop_sessions()
        listener.cancel_scope.cancel()
