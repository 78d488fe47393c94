"""Hypercorn's trio worker, with every connection's socket in reach of the drain.

``hypercorn.trio.serve`` (0.18) writes to a connection's socket inside a shielded cancel
scope (``TCPServer.protocol_send``): a client that stops reading (a ``/ws`` socket on the
HTTP port whose reader stalls, a download nobody takes) blocks that write until the kernel
gives up, and no cancellation reaches it: not hypercorn's graceful deadline, not the drain
deadline, not a second signal. Such a connection kept the process alive after SIGTERM.

This is the same server loop (hypercorn's own lifespan, ``TCPServer`` and protocol code),
with two differences:

* every connection's stream is known while it is open, and once the server's nursery is
  cancelled (the drain deadline, hypercorn's ``graceful_timeout``, or a second signal) their
  sockets are closed, which wakes a blocked write with ``ClosedResourceError`` even inside
  the shield;
* an idle connection's close (its keep-alive timer, or the drain's start) checks that it is
  still idle: hypercorn's goes ahead once its timer has fired even when a request arrived in
  the same instant, and cut that request's answer after its head (a 503 of the drain, seen
  under mixed load);
* a close the application asks for (a refused WebSocket frame, a ``Connection: close``
  answer) half-closes the socket and lets the connection's one reader drain what the client
  is still sending, dropping it, until the client has been quiet ``LINGER_QUIET_S`` (at most
  ``LINGER_S`` and ``LINGER_BYTES`` in all); only then is the socket closed. Closed with
  unread data, the kernel answers with a reset, and a reset destroys what the client has not
  read yet: the refusal of a WebSocket frame too large to take (its ``error`` message and
  close code) was lost so about one time in three. Only the reader reads: a second reader
  beside it would race it for the socket (``BusyResourceError``);
* hypercorn's ``read_timeout`` applies while the client owes bytes, not while a request it
  sent whole is being answered: then it owes nothing, and a long answer (``POST .../end``
  waiting for a session's last words, a stream of server-sent events) was cut after
  ``read_timeout`` with no response.

QUIC (HTTP/3) is not served: the service never binds it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import suppress
from functools import partial
from math import inf
from typing import Any, Final

import h11
import trio
from hypercorn.config import Config as HyperConfig
from hypercorn.events import Closed, Event, RawData, Updated
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.tcp_server import MAX_RECV, TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ASGIFramework, ConnectionState
from hypercorn.utils import repr_socket_addr, wrap_app

LINGER_QUIET_S: Final = 0.1  # a client quiet this long after the server's FIN is done sending
LINGER_S: Final = 2.0  # the most a close lingers
LINGER_BYTES: Final = 64 * 1024 * 1024  # and the most it reads and drops


class Connections:
    """The open connections' streams; ``abort`` closes their sockets at once, and ``none``
    is set once the last of them has ended (after ``draining`` was set)."""

    def __init__(self) -> None:
        self.streams: set[Any] = set()
        self.draining = False
        self.none = trio.Event()

    def drain(self) -> None:
        self.draining = True
        if not self.streams:
            self.none.set()

    def discard(self, stream: Any) -> None:
        self.streams.discard(stream)
        if self.draining and not self.streams:
            self.none.set()

    def abort(self) -> None:
        for stream in list(self.streams):
            _socket_of(stream).close()  # a trio socket wakes its blocked waiters on close
        self.streams.clear()


def _socket_of(stream: Any) -> Any:
    transport = getattr(stream, "transport_stream", stream)  # TLS: the socket under it
    return transport.socket


class Server(TCPServer):
    """Hypercorn's connection handler, its idle close made to yield to a request and its
    asked-for close made to linger while the client is still sending."""

    linger_until: float | None = None  # set once the socket is half-closed
    reading: trio.CancelScope | None = None  # the reader's wait for the next bytes
    busy = False  # a request is being answered (hypercorn's idle timer is stopped)

    async def protocol_send(self, event: Event) -> None:
        if isinstance(event, Updated):
            self.busy = not event.idle
        if not isinstance(event, Closed):
            await super().protocol_send(event)
            return
        try:
            await self.stream.send_eof()
        except (AttributeError, trio.BrokenResourceError, trio.BusyResourceError,
                trio.ClosedResourceError):  # fmt: skip
            await self.stream.aclose()  # gone already, or TLS (no half-close): closed at once
        else:
            if self.linger_until is None:
                self.linger_until = trio.current_time() + LINGER_S
                if self.reading is not None:  # a reader waiting forever waits no longer
                    self.reading.deadline = trio.current_time() + LINGER_QUIET_S
        await self.protocol.handle(Closed())

    def _owed(self) -> bool:
        """Whether the client owes bytes: always, but while a request it sent whole (HTTP/1.1)
        is being answered."""
        connection = getattr(getattr(self.protocol, "protocol", None), "connection", None)
        return not self.busy or getattr(connection, "their_state", None) is not h11.DONE

    async def _read_data(self) -> None:
        dropped = 0
        while dropped <= LINGER_BYTES:
            data = None
            with trio.CancelScope() as self.reading:
                now = trio.current_time()
                if self.linger_until is None and self._owed():
                    self.reading.deadline = now + (self.config.read_timeout or inf)
                elif self.linger_until is None:  # an answer in the making: nothing is owed
                    self.reading.deadline = inf
                else:
                    self.reading.deadline = min(self.linger_until, now + LINGER_QUIET_S)
                with suppress(trio.ClosedResourceError, trio.BrokenResourceError):
                    data = await self.stream.receive_some(MAX_RECV)
            self.reading = None
            if not data:  # closed, timed out, quiet long enough, or the client's EOF
                if data == b"" and self.linger_until is None:
                    await self.protocol.handle(RawData(b""))
                break
            if self.linger_until is not None:  # closing: what the client still sends is dropped
                dropped += len(data)
                continue
            await self.protocol.handle(RawData(bytes(data)))
        await self.protocol.handle(Closed())

    async def _idle_timeout(self) -> None:
        with trio.move_on_after(self.config.keep_alive_timeout):
            await self.context.terminated.wait()
        # A request that came in meanwhile has cancelled this task (the protocol stops the
        # idle timer when it parses one): that cancellation is delivered here, not inside
        # the shielded close.
        await trio.lowlevel.checkpoint()
        with trio.CancelScope(shield=True):
            await self._initiate_server_close()


async def serve_hypercorn(
    app: ASGIFramework,
    config: HyperConfig,
    *,
    shutdown_trigger: Callable[[], Awaitable[Any]],
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve *app* as ``hypercorn.trio.serve`` does, until *shutdown_trigger* returns; then
    stop accepting, let connections finish for ``config.graceful_timeout`` and close the
    sockets of those still open. Reports the bound URLs."""
    wrapped = wrap_app(app, config.wsgi_max_body_size, "asgi")
    lifespan_state: dict[str, Any] = {}
    lifespan = Lifespan(wrapped, config, lifespan_state)
    context = WorkerContext(None)
    connections = Connections()

    async def handle(stream: Any) -> None:
        connections.streams.add(stream)
        try:
            server = Server(wrapped, config, context, ConnectionState(lifespan_state.copy()),
                               stream)  # fmt: skip
            await server.run()
        finally:
            connections.discard(stream)

    async def abort_when_cancelled() -> None:
        try:
            await trio.sleep_forever()
        finally:
            connections.abort()

    async with trio.open_nursery() as lifespan_nursery:
        await lifespan_nursery.start(lifespan.handle_lifespan)
        await lifespan.wait_for_startup()
        sockets = config.create_sockets()
        ssl_context = config.create_ssl_context()
        listeners: list[trio.abc.Listener[Any]] = []
        binds = []
        for sock, scheme in [(s, "https") for s in sockets.secure_sockets] + [
            (s, "http") for s in sockets.insecure_sockets
        ]:
            sock.listen(config.backlog)
            listener: trio.abc.Listener[Any] = trio.SocketListener(
                trio.socket.from_stdlib_socket(sock)
            )
            if scheme == "https":
                assert ssl_context is not None
                listener = trio.SSLListener(listener, ssl_context, https_compatible=True)
            listeners.append(listener)
            binds.append(f"{scheme}://{repr_socket_addr(sock.family, sock.getsockname())}")
        async with trio.open_nursery() as server_nursery:
            server_nursery.start_soon(abort_when_cancelled)
            task_status.started(binds)
            async with trio.open_nursery() as accepting:
                serving = partial(trio.serve_listeners, handler_nursery=server_nursery)
                accepting.start_soon(serving, handle, listeners)
                await shutdown_trigger()
                accepting.cancel_scope.cancel()  # closes the listeners
            await context.terminated.set()  # hypercorn closes idle connections, recycles none
            server_nursery.cancel_scope.deadline = trio.current_time() + config.graceful_timeout
            connections.drain()
            await connections.none.wait()
            server_nursery.cancel_scope.cancel()
        await lifespan.wait_for_shutdown()
        lifespan_nursery.cancel_scope.cancel()
