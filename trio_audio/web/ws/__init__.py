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

Messages are parsed and built in ``web/messages.py``. The modules, by task: ``session``
(``Session``: runs the others), ``handshake`` (``start``, authentication, admission),
``replay`` (``started`` and a resume's replay), ``reader``, ``acker``, ``relay`` (relay and
flow), ``writer`` (writer and watchdog), over ``state`` (what they share, and ``WsContext``)
and ``base`` (close codes, ``Transport``, ``Finalizer``). The session runs over either
transport of ``transports`` (the trio-websocket listener, or ``/ws`` on the HTTP port), which
implement ``base.Transport`` and only move frames.
"""

from .base import (
    CLOSE_GOING_AWAY,
    CLOSE_NORMAL,
    CLOSE_TIMEOUT_S,
    Disconnected,
    Finalizer,
    SessionError,
    Transport,
)
from .session import Session
from .state import WsContext
from .transports import QuartTransport, TrioWebsocketTransport, serve_ws

__all__ = [
    "CLOSE_GOING_AWAY",
    "CLOSE_NORMAL",
    "CLOSE_TIMEOUT_S",
    "Disconnected",
    "Finalizer",
    "QuartTransport",
    "Session",
    "SessionError",
    "Transport",
    "TrioWebsocketTransport",
    "WsContext",
    "serve_ws",
]
