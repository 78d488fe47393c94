"""The HTTP port while a cluster store starts: probes answered, everything else refused.

A node on a JetStream cluster cannot serve until the cluster has a meta leader and the node
has replayed the stream, which can take seconds (a fresh cluster) or longer (a big stream).
Meanwhile ``serve_while_starting`` holds the HTTP port: ``/healthz`` answers 200 (the process
is alive), ``/readyz`` 503 with the reason in ``store_problem`` (connecting, waiting for the
meta leader, replaying), and any other request 503 ``unavailable`` with ``Retry-After``, so a
load balancer sees a node starting rather than a refused connection. Once the store is
ready the caller cancels it, and the real server binds the same port.

``serve_answers`` is the listener under it, also the asr-worker's probe port
(``cluster/work.py``): any function from a request path to the whole response.

Resource handling: each connection gets one request (headers read within
``READ_TIMEOUT_S``, at most ``MAX_HEAD_BYTES``), one answer with ``Connection: close``, and is
closed. Plain HTTP only (the service skips this when it serves TLS).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Final

import attrs
import trio

from ..errors import StoreUnavailable
from .context import Readiness

READ_TIMEOUT_S: Final = 5.0
MAX_HEAD_BYTES: Final = 16 * 1024


def response(status: int, body: dict[str, object] | str, content_type: str, retry_s: int) -> bytes:
    """A whole HTTP/1.1 response (``Connection: close``); *body* a JSON value or text."""
    text = (body if isinstance(body, str) else json.dumps(body, separators=(",", ":"))).encode()
    reason = {200: "OK", 404: "Not Found", 503: "Service Unavailable"}[status]
    head = [
        f"HTTP/1.1 {status} {reason}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(text)}",
        "Connection: close",
    ]
    if status == 503:
        head.append(f"Retry-After: {retry_s}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + text


def answer(path: str, problem: str, retry_s: int) -> bytes:
    """The whole response to a request for *path* while the store starts (*problem*)."""
    if path == "/healthz":
        return response(200, {"status": "ok"}, "application/json", retry_s)
    if path == "/readyz":  # the fields the running node's /readyz has, none of them up yet
        body = {"status": "not_ready", **attrs.asdict(Readiness(store_problem=problem))}
        return response(503, body, "application/json", retry_s)
    refusal = StoreUnavailable(f"the node is starting: {problem}", retry_after=retry_s)
    return response(503, refusal.problem(instance=path), "application/problem+json", retry_s)


async def serve_while_starting(
    host: str,
    port: int,
    problem: Callable[[], str],
    retry_s: int,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Answer HTTP on *host*:*port* as the module docstring says until cancelled; reports
    the port bound (*port* 0 picks one)."""
    await serve_answers(host, port, lambda path: answer(path, problem(), retry_s),
                        task_status=task_status)  # fmt: skip


async def serve_answers(
    host: str,
    port: int,
    answer: Callable[[str], bytes],
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Answer each request on *host*:*port* with ``answer(path)`` until cancelled; reports
    the port bound (*port* 0 picks one)."""
    listeners = await trio.open_tcp_listeners(port, host=host)

    async def handle(stream: trio.SocketStream) -> None:
        async with stream:
            head = b""
            with trio.move_on_after(READ_TIMEOUT_S):
                while b"\r\n\r\n" not in head and len(head) < MAX_HEAD_BYTES:
                    data = await stream.receive_some(4096)
                    if not data:
                        return
                    head += data
            parts = head.split(b"\r\n", 1)[0].split()
            path = parts[1].decode("latin-1").split("?", 1)[0] if len(parts) >= 2 else ""
            try:
                await stream.send_all(answer(path))
            except trio.BrokenResourceError:
                return

    bound = listeners[0].socket.getsockname()[1]
    task_status.started(bound)
    await trio.serve_listeners(handle, listeners)
