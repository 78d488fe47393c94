"""A minimal HTTP/1.1 listener for probes: one request a connection, one whole answer.

``serve_answers`` answers each request with what a function of its path gives. It serves
the HTTP port while a cluster node starts (``web/waiting.py``) and the asr-worker's
``/healthz``, ``/readyz`` and ``/metrics`` port (``cluster/worker.py``): places where the full HTTP
server is not running, so it depends on nothing but trio.

Resource handling: each connection gets one request (headers read within
``READ_TIMEOUT_S``, at most ``MAX_HEAD_BYTES``), one answer with ``Connection: close``, and is
closed. Plain HTTP only.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Final

import trio

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
