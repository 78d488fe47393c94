"""The WebSocket session protocol: one connection, one session stream.

JSON text frames carry control, binary frames carry audio (one chunk each)::

    client                                   server
    start {user_id, session_id, format?, ->
           resume_from_seq?}             <-  started {session_id, next_seq, stored_next_seq,
                                                      missing_seqs, missing_count, limits}
                                         <-  (resume: ack + metadata [+ transcript] replayed)
    <binary chunk> | audio {data, seq?}  ->
                                         <-  ack {seq, chunk_id}        once durably stored
                                         <-  metadata {...chunk JSON}   (each metadata_every)
                                         <-  transcript / vad / deleted / flow {queue_depth,
                                                                                 lag_ms}
    finalize | keepalive                 ->
    end                                  ->
                                         <-  session_end {summary}, close 1000
    (anything wrong)                     <-  error {code, message, retryable}, close 4xxx

A ``start`` without ``format`` only watches: it gets the session's results and sends no audio.

Resource handling: each connection runs five tasks in its own nursery: the reader (parses,
submits to the pipeline), the acker (answers chunks in order), the relay (the session's live
results from the hub), the flow reporter (which also ends a session whose token was revoked,
with 4401, within ``ws_flow_interval_s`` of the tokens file's change), and the writer (the only
task that sends). Every queue between them is bounded: the reader stops reading the socket when
``ws_max_inflight`` chunks are unanswered (TCP backpressure); a chunk that finds the pipeline
full for ``ws_overload_timeout_s`` ends the connection with ``overloaded``; a client whose hub
queue overflows, or that takes nothing the writer sends for ``ws_send_timeout_s``, is cut off
with ``slow_reader``, which frees its slot.

Error handling: a bad message, format or chunk ends the connection with an ``error`` and the
matching close code, after the chunks taken before it are answered; other sessions never
notice. On shutdown a session stops reading, answers what it had taken, and closes with 1001
so its client can resume elsewhere.

Messages are parsed and built in ``messages.py``; the session runs over either transport of
``transports.py`` (the trio-websocket listener, or ``/ws`` on the HTTP port), which implement
``Transport`` below and only move frames.
"""

from __future__ import annotations

import contextlib
import logging
import math
import secrets
import time
from collections import deque
from collections.abc import Mapping
from typing import Any, Final, Protocol, TypeVar

import attrs
import trio

from ..budget import Inflight, UserBudgets
from ..config import Config
from ..errors import (
    BadMessage,
    IdleTimeout,
    InternalError,
    InvalidField,
    NotFound,
    Overloaded,
    PayloadTooLarge,
    RateLimited,
    ServiceError,
    SlowReader,
    Unauthorized,
)
from ..hub import Hub, Subscription, Wire
from ..metrics import Metrics
from ..models import Job, Part
from ..pipeline.pipeline import Ingress
from ..store import StoreBackend
from ..store.index import Stored
from .access import Access
from .messages import (
    Start,
    dumps,
    error_message,
    metadata_message,
    parse_audio,
    parse_control,
    parse_start,
    transcript_message,
)
from .origins import Origins
from .session_events import missing_seqs, session_summary

logger = logging.getLogger("trio_audio.ws")

CLOSE_NORMAL: Final = 1000
CLOSE_GOING_AWAY: Final = 1001
CLOSE_TIMEOUT_S: Final = 2.0  # for the closing handshake and the last error message

T = TypeVar("T")


async def _put(channel: trio.MemorySendChannel[T], value: T) -> None:
    """Send *value* at once while *channel* has room, else wait for room: a frame's answers
    and hand-offs skip a trip through the scheduler each (the task checkpoints elsewhere
    once per frame: its receive, or the reply it waits for)."""
    try:
        channel.send_nowait(value)
    except trio.WouldBlock:
        await channel.send(value)


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

    def lag_s(self, key: tuple[str, str] | None = None) -> float: ...

    def set_vocabulary(self, user_id: str, session_id: str, terms: tuple[str, ...]) -> None: ...


@attrs.define
class WsContext:
    """What every session needs, made once in ``serve`` and shared by both transports."""

    config: Config
    store: StoreBackend
    hub: Hub
    metrics: Metrics
    shutdown: trio.Event
    transcriber: Finalizer | None = None
    access: Access = attrs.field(factory=Access)  # tokens and rate limit, shared with HTTP
    origins: Origins | None = None  # who may open a socket with auth off (None: anyone)
    user_bytes: UserBudgets = attrs.field(  # unanswered chunk bytes per user, all sockets
        default=attrs.Factory(lambda ctx: UserBudgets(ctx.config.ws_user_inflight_bytes),
                              takes_self=True))  # fmt: skip
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


def _first_leaf(group: BaseExceptionGroup[SessionError]) -> SessionError:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


class Session:
    """One connection speaking the protocol over a ``Transport``.

    Channels and their owners: ``ack_send`` is the reader's, ``ack_recv`` the acker's; the
    outgoing messages channel is made per stream in ``_stream``: the writer owns its receive
    end, and every task that sends owns a clone of the send end, closed when it ends, so the
    writer sees the channel end once the last of them is done.
    """

    def __init__(self, transport: Transport, ctx: WsContext, ingress: Ingress) -> None:
        self.id = secrets.token_hex(8)  # names this connection's jobs: it skips their echo
        self.transport = transport
        self.ctx = ctx
        self.config = ctx.config
        self.ingress = ingress
        self.ack_send, self.ack_recv = trio.open_memory_channel[tuple[int, Job]](
            ctx.config.ws_max_inflight
        )
        self.unanswered: deque[float] = deque()  # receive times of chunks not yet answered
        self.inflight = Inflight(ctx.config.ws_max_inflight_bytes, ctx.user_bytes)  # their bytes
        self._answered = trio.Event()  # set each time the acker answers a chunk
        self._drained = trio.Event()  # set when the acker has answered the last chunk
        self._flowing = trio.CancelScope()  # the flow task's
        self._relay_waiting = trio.CancelScope()  # the relay's wait for its next message
        self._relay_finishing = False
        self.final_due: set[str] = set()  # this stream's chunks whose final is still to come
        self._final_relayed = trio.Event()  # set (and replaced) each time a final is relayed
        self._reading = trio.CancelScope()  # the reader's; shutdown or an error cancels it
        self._handshaking = trio.CancelScope()  # the wait for 'start'; shutdown cancels it
        self.error: ServiceError | None = None  # the first thing that went wrong: the end
        self.jammed = False  # a send timed out: the client is not reading, send no more
        self._sending = trio.CancelScope()  # the writer's current send
        self._watching = trio.CancelScope()  # the watchdog's; the writer ends it when done
        self._send_started: float | None = None  # when it began; None: not sending
        self._released = False
        self.replayed: set[str] = set()
        self.replayed_final: set[str] = set()  # chunks whose final transcript it replayed
        self.stored = 0
        self.duplicates = 0
        self.next_seq = 0
        self.start: Start | None = None
        self.admitted: str | None = None  # the user this session is counted against
        self._not_taken = Overloaded("not taken: the server is shutting down")
        self._token: str | None = None  # the token it authenticated with (auth on)
        self._token_generation = 0

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
            self._release()

    def _release(self) -> None:
        """Give back this session's slot (once): at its end, or when its client is cut off."""
        if self._released:
            return
        self._released = True
        self.inflight.close()
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
        if start.vocabulary is not None and self.ctx.transcriber is not None:
            self.ctx.transcriber.set_vocabulary(start.user_id, start.session_id, start.vocabulary)
        ended, gone = False, False
        with self.ctx.hub.subscribe(start.user_id, start.session_id, source=self.id) as sub:
            try:
                ended = await self._stream(start, sub)
            except* SessionError as group:
                self._end_with(_first_leaf(group).error)
            except* Disconnected:
                gone = True
        if gone:
            return
        if self.error is not None:
            await self._fail(self.error)
        elif ended:
            await self._close(CLOSE_NORMAL, "session ended")
        else:
            await self._close(CLOSE_GOING_AWAY, "server shutting down")

    async def _stream(self, start: Start, sub: Subscription) -> bool:
        """Run a started session's tasks until it ends; True if the client ended it.

        Whatever ends it (``end``, shutdown or an error), the chunks taken so far are
        answered first (an error or shutdown waits at most ``CLOSE_TIMEOUT_S`` for them),
        then the writer sends everything queued, and only then does ``_run`` close.
        """
        out, out_recv = trio.open_memory_channel[str](self.config.ws_queue)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._writer, out_recv)
            nursery.start_soon(self._watchdog)
            async with out:
                await self._started_and_replay(start, out)
                async with trio.open_nursery() as tasks:
                    tasks.start_soon(self._relay, sub, out.clone())
                    tasks.start_soon(self._flow, out.clone())
                    tasks.start_soon(self._acker, out.clone())
                    ended = await self._reader(start, out.clone())
                    clean = ended and self.error is None
                    with trio.move_on_after(math.inf if clean else CLOSE_TIMEOUT_S):
                        await self._drained.wait()  # bounded on shutdown: resume covers it
                    if clean and self.error is None:
                        # The relay still runs: each final the finalize brings out is sent
                        # as its `transcript`, before `session_end`.
                        await self._finalize(start)
                        # The finals are stored; they reach this socket through the fan-out,
                        # which may still be handing them on.
                        with trio.move_on_after(CLOSE_TIMEOUT_S):
                            while self.final_due:
                                await self._final_relayed.wait()
                        self._finish_relay()  # it sends what is queued, then ends
                        self._flowing.cancel()
                        tasks.cancel_scope.deadline = trio.current_time() + CLOSE_TIMEOUT_S
                    else:
                        tasks.cancel_scope.cancel()  # the relay and flow run until told
                if ended and self.error is None:
                    await self._send(out, await self._session_end(start))
            # Every send end is closed now: the writer ends once it has sent what is queued.
            nursery.cancel_scope.deadline = trio.current_time() + CLOSE_TIMEOUT_S
        return ended

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
        token = control.get("token") or self.transport.query.get("token")
        self._token = token if isinstance(token, str) else None
        self._token_generation = self.ctx.access.generation
        return self.ctx.access.user_for_request(self.transport.headers, self._token)

    def _check_token(self) -> None:
        """After the tokens file changed: end the session (4401) if its token was revoked."""
        access = self.ctx.access
        if not access.auth or self._token_generation == access.generation:
            return
        self._token_generation = access.generation
        try:
            access.user_for_request(self.transport.headers, self._token)
        except ServiceError:
            self._end_with(Unauthorized("the token of this session was revoked"))

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

    async def _started_and_replay(self, start: Start, out: trio.MemorySendChannel[str]) -> None:
        """``started``, then (on resume) the answers of the chunks stored from there on."""
        store = self.ctx.store
        session = store.summary(start.user_id, start.session_id)
        stored_next_seq = session.next_seq if session else 0
        resume = start.resume_from_seq
        if resume is not None and resume > stored_next_seq:
            msg = (
                f"resume_from_seq {resume} is past the end of this session, which has "
                f"chunks up to seq {stored_next_seq - 1}: resume from {stored_next_seq} or before"
            )
            raise SessionError(InvalidField(msg))
        self.next_seq = resume if resume is not None else stored_next_seq
        missing, missing_count = missing_seqs(store, start.user_id, start.session_id)
        await self._send(
            out,
            {
                "type": "started",
                "user_id": start.user_id,
                "session_id": start.session_id,
                "next_seq": self.next_seq,
                "stored_next_seq": stored_next_seq,
                "missing_seqs": missing,
                "missing_count": missing_count,
                "metadata_every": start.metadata_every,
                "limits": {
                    "max_message_bytes": self.config.max_body_bytes,
                    "max_inflight": self.config.ws_max_inflight,
                    "idle_timeout_s": self.config.ws_idle_timeout_s,
                },
            },
        )
        if resume is None or session is None:
            return
        for seq, chunk_id in store.chunks_after(start.user_id, start.session_id, resume - 1):
            try:
                chunk = await store.get(chunk_id)
            except NotFound:
                continue  # deleted meanwhile
            self.replayed.add(chunk_id)
            await self._send(
                out, {"type": "ack", "seq": seq, "chunk_id": chunk_id, "replayed": True}
            )
            if self._wants_metadata(seq):
                await out.send(metadata_message(chunk))
            final = transcript_message(chunk)  # as a live watcher gets it
            if final is not None:
                self.replayed_final.add(chunk_id)
                await self._send(out, final)

    def _end_with(self, error: ServiceError) -> None:
        """End the session with *error* (the first one wins): stop reading, answer, close."""
        if self.error is None:
            self.error = error
            self.ctx.metrics.failed(error.code)  # now: its slot may be freed before the close
        self._reading.cancel()

    def stop_reading(self) -> None:
        """Shutdown: read no more; answer what was taken, then close 1001."""
        self._handshaking.cancel()
        self._reading.cancel()

    # -- the tasks ----------------------------------------------------------------------

    async def _reader(self, start: Start, out: trio.MemorySendChannel[str]) -> bool:
        """Read until ``end`` (True), shutdown or an error (False); submit each chunk.

        Shutdown cancels ``_reading`` (see ``stop_reading``): a frame read but not yet
        submitted was never answered, so its client sends it again when it resumes. A bad
        message ends the session after the chunks before it are answered (``_end_with``).
        """
        async with self.ack_send, out:
            with self._reading:
                try:
                    return await self._read(start, out)
                except SessionError as exc:
                    self._end_with(exc.error)
            return False

    async def _read(self, start: Start, out: trio.MemorySendChannel[str]) -> bool:
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
                await self._send(out, {"type": "keepalive"})
            elif kind == "start":
                msg = "this connection has started its session already: one 'start' each"
                raise SessionError(BadMessage(msg))
            else:
                msg = f"unknown message type {kind[:40]!r}"
                raise SessionError(BadMessage(msg))

    async def _receive(self) -> str | bytes:
        """The next message, or ``idle_timeout`` after ``ws_idle_timeout_s`` of silence."""
        with trio.move_on_after(self.config.ws_idle_timeout_s):
            return await self.transport.receive()
        msg = f"no message for {self.config.ws_idle_timeout_s:g} s"
        raise SessionError(IdleTimeout(msg))

    def _control(self, text: str) -> dict[str, Any]:
        try:
            return parse_control(text)
        except ServiceError as exc:
            raise SessionError(exc) from None

    def _audio_payload(self, control: dict[str, Any]) -> tuple[bytes, int | None]:
        try:
            return parse_audio(control)
        except ServiceError as exc:
            raise SessionError(exc) from None

    async def _submit(self, start: Start, data: bytes, seq: int | None) -> None:
        if start.content_type is None:
            msg = "this socket sent no format in 'start': it only watches, and takes no audio"
            raise SessionError(BadMessage(msg))
        if len(data) > self.config.max_body_bytes:
            msg = f"a chunk of {len(data)} bytes is over the {self.config.max_body_bytes} limit"
            raise SessionError(PayloadTooLarge(msg))
        if seq is None:
            seq = self.next_seq
        self.next_seq = seq + 1
        part = Part(body=data, content_type=start.content_type, raw=start.raw, seq=seq)
        job = Job(user_id=start.user_id, session_id=start.session_id, parts=[part], source=self.id)
        try:
            self.ctx.access.take(start.user_id)
        except RateLimited as exc:
            raise SessionError(exc) from None
        wait_s = self.config.ws_overload_timeout_s
        if not await self.inflight.take(start.user_id, len(data), wait_s):
            msg = (f"no room in {wait_s:g} s for more unanswered bytes of this socket or user "
                   f"(ws_max_inflight_bytes, ws_user_inflight_bytes); resume from seq {seq} "
                   "later")  # fmt: skip
            raise SessionError(Overloaded(msg))
        self.unanswered.append(time.monotonic())
        await _put(self.ack_send, (seq, job))  # waits while too many are unanswered
        if self.ingress.offer(job):  # room now: no timeout to set up (the receive checkpoints)
            return
        try:
            with trio.move_on_after(self.config.ws_overload_timeout_s):
                await self.ingress.submit(job)
                return
        except trio.Cancelled:
            # Shutdown cancelled the submit: the chunk was never taken and is never answered
            # (its client sends it again when it resumes). The acker stops there instead of
            # waiting for its answer until the close timeout.
            job.reply.fail(self._not_taken)
            raise
        job.reply.fail(Overloaded("not taken: the pipeline had no room"))  # the acker's turn
        self.ctx.metrics.refuse("ws_wait_timeout")
        msg = (
            f"the pipeline had no room for {self.config.ws_overload_timeout_s:g} s; "
            f"resume from seq {seq} later"
        )
        raise SessionError(Overloaded(msg))

    async def _acker(self, out: trio.MemorySendChannel[str]) -> None:
        """Answer chunks in the order they came: ack + metadata; the first failure ends it."""
        async with self.ack_recv, out:
            async for seq, job in self.ack_recv:
                try:
                    results: list[Stored] = await job.reply.wait()
                except ServiceError as exc:
                    if exc is not self._not_taken:
                        self._end_with(exc)  # the chunks after it stay unanswered
                    break
                finally:
                    self.unanswered.popleft()
                    self.inflight.give(len(job.parts[0].body))
                    self._answered.set()
                result = results[0]
                ack: dict[str, Any] = {"type": "ack", "seq": seq,
                                       "chunk_id": result.chunk["chunk_id"]}  # fmt: skip
                if result.created:
                    self.stored += 1
                    if (result.chunk.get("transcript") or {}).get("status") == "pending":
                        self.final_due.add(result.chunk["chunk_id"])
                else:
                    ack["duplicate"] = True
                    self.duplicates += 1
                await self._send(out, ack)
                if result.chunk["chunk_id"] not in self.replayed and self._wants_metadata(seq):
                    await _put(out, metadata_message(self._as_answered(result.chunk)))
        self._drained.set()

    async def _relay(self, sub: Subscription, out: trio.MemorySendChannel[str]) -> None:
        """The session's results from others (HTTP uploads, other sockets, transcripts,
        deletions), as rendered once for every watcher; none that the resume replayed. Until
        the subscription ends or ``_finish_relay``: then what is queued still goes."""
        async with out:
            while (message := await self._relayed(sub)) is not None:
                if message.type == "transcript" and message.chunk_id is not None:
                    self.final_due.discard(message.chunk_id)  # a final: chunks have one
                    self._final_relayed.set()
                    self._final_relayed = trio.Event()
                if message.chunk_id is not None and (
                    (message.type == "metadata" and message.chunk_id in self.replayed)
                    or (message.type == "transcript" and message.chunk_id in self.replayed_final)
                ):
                    continue
                await out.send(message.text)
            if sub.overflowed:
                msg = f"more than {self.config.ws_queue} results waited for this client to read"
                self._end_with(SlowReader(msg))

    async def _relayed(self, sub: Subscription) -> Wire | None:
        """The subscription's next message; None at its end, or once the relay is finishing
        and nothing is queued. (A cancelled ``receive`` takes nothing from the channel.)"""
        while True:
            if self._relay_finishing:
                try:
                    return sub.receive.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel):
                    return None
            with trio.CancelScope() as self._relay_waiting:
                try:
                    return await sub.receive.receive()
                except trio.EndOfChannel:
                    return None

    def _finish_relay(self) -> None:
        self._relay_finishing = True
        self._relay_waiting.cancel()

    async def _flow(self, out: trio.MemorySendChannel[str]) -> None:
        """``flow {queue_depth, inflight, lag_ms, transcript_lag_ms}`` while anything lags.

        ``lag_ms``: age of this socket's oldest unanswered chunk; ``transcript_lag_ms``: age
        of this session's oldest chunk the transcriber has not done yet (other sessions'
        backlog is not this stream's lag).
        """
        transcriber = self.ctx.transcriber
        async with out:
            with self._flowing:
                while True:
                    await trio.sleep(self.config.ws_flow_interval_s)
                    self.ctx.access.current()  # and a revoked token ends the session, here
                    self._check_token()
                    behind = 0.0
                    if transcriber is not None and self.start is not None:
                        key = (self.start.user_id, self.start.session_id)
                        behind = transcriber.lag_s(key) * 1000
                    if self.unanswered or behind:
                        oldest = self.unanswered[0] if self.unanswered else time.monotonic()
                        stats = self.ingress.statistics()  # the shared pipeline's front queue
                        lag_ms = round((time.monotonic() - oldest) * 1000, 1)
                        await self._send(out, {"type": "flow",
                                               "queue_depth": stats.current_buffer_used,
                                               "inflight": len(self.unanswered),
                                               "lag_ms": lag_ms,
                                               "transcript_lag_ms": round(behind, 1)})  # fmt: skip

    async def _writer(self, out_recv: trio.MemoryReceiveChannel[str]) -> None:
        """The only task that sends: each message in order, until every sender is done.

        Once the client is found not reading (``_watchdog``), what is still queued is dropped:
        the chunks it answers stay stored, and a resume replays their answers.
        """
        async with out_recv:
            async for text in out_recv:
                if self.jammed:
                    continue
                with self._sending:
                    self._send_started = trio.current_time()
                    await self.transport.send(text)
                self._send_started = None
                self._sending = trio.CancelScope()
        self._watching.cancel()  # all sent: nothing more to watch

    async def _watchdog(self) -> None:
        """Cut off a client that takes nothing the writer sends for ``ws_send_timeout_s``.

        It ends the session with ``slow_reader`` (4429) and frees its slot at once. This task
        does it, not a timeout around the send, because a send cannot always be cancelled:
        hypercorn (``/ws`` on the HTTP port) shields its socket writes, so there the stuck send
        (and the connection) lasts until the client goes away, but holds no slot.
        """
        timeout = self.config.ws_send_timeout_s
        with self._watching:
            while True:
                await trio.sleep(timeout / 4)
                since = self._send_started
                if since is not None and trio.current_time() - since >= timeout:
                    break
        if not self._watching.cancelled_caught:
            self.jammed = True
            self._end_with(SlowReader(f"the client read nothing for {timeout:g} s"))
            self._sending.cancel()
            self._release()

    # -- helpers ------------------------------------------------------------------------

    @staticmethod
    async def _send(out: trio.MemorySendChannel[str], message: dict[str, Any]) -> None:
        await _put(out, dumps(message))

    def _wants_metadata(self, seq: int) -> bool:
        every = self.start.metadata_every if self.start is not None else 1
        return every == 1 or (every > 0 and seq % every == 0)

    def _as_answered(self, chunk: dict[str, Any]) -> dict[str, Any]:
        """The chunk JSON as committed, with ``offset_ms`` as the store has it now: the chunks
        before it are all answered by now, so it is final even if they committed after it.
        (Cheaper than reading the record back: no unpacking, no second chunk JSON.)"""
        offset = self.ctx.store.offset_ms(chunk["chunk_id"])
        if offset is None or offset == chunk.get("offset_ms"):
            return chunk
        return {**chunk, "offset_ms": offset}

    async def _wait_answered(self) -> None:
        while self.unanswered:
            self._answered = trio.Event()
            await self._answered.wait()

    async def _finalize(self, start: Start) -> None:
        if self.ctx.transcriber is not None:
            await self.ctx.transcriber.finalize(start.user_id, start.session_id)

    async def _session_end(self, start: Start) -> dict[str, Any]:
        """The session's summary (as ``POST .../end`` gives it) and this stream's counts."""
        session = await session_summary(self.ctx.store, start.user_id, start.session_id) or {
            "user_id": start.user_id, "session_id": start.session_id,
            "chunk_count": 0, "duration_ms": 0.0, "transcript": None,
        }  # fmt: skip
        stream = {"stored": self.stored, "duplicates": self.duplicates, "next_seq": self.next_seq}
        return {"type": "session_end", "summary": {**session, **stream}}

    async def _fail(self, error: ServiceError) -> None:
        if error is not self.error:  # that one was counted when it happened
            self.ctx.metrics.failed(error.code)
        if not self.jammed:  # else the error would only queue behind what it never read
            with trio.move_on_after(CLOSE_TIMEOUT_S):
                try:
                    await self.transport.send(dumps(error_message(error)))
                except Disconnected:
                    return
        await self._close(error.close_code, error.code)

    async def _close(self, code: int, reason: str) -> None:
        with trio.move_on_after(CLOSE_TIMEOUT_S), contextlib.suppress(Disconnected):
            await self.transport.close(code, reason)
