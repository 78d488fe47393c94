"""A lean HTTP/1.1 client for load: keep-alive over a trio stream, pre-built request bytes.

httpx spends tens of microseconds of Python per request building and parsing objects; on a
2-core machine that shares its cores with the server under test, the load generator would be
measured instead of the server. This client sends bytes it was handed and parses no more of
the answer than the status, ``Content-Length`` and ``Connection: close``.

Error handling: anything wrong with the connection (reset, EOF before a whole response, a
response it cannot frame) raises ``HttpError``; the connection is then closed and the next
``request`` opens a new one.
"""

from __future__ import annotations

import attrs
import trio

MAX_HEAD_BYTES = 64 * 1024


class HttpError(Exception):
    """The connection failed before a whole response arrived."""


@attrs.frozen
class Response:
    status: int
    body: bytes


def request_bytes(
    method: str, target: str, host: str, body: bytes = b"", content_type: str = ""
) -> bytes:
    """The head (and body) of one HTTP/1.1 request, ready to send as is."""
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
    if content_type:
        lines.append(f"Content-Type: {content_type}")
    if body or method in ("POST", "PUT"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class Connection:
    """One keep-alive connection to ``host:port``; requests on it go one at a time."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.stream: trio.SocketStream | None = None
        self.opened = 0  # connections made (a server that closes after each reply shows here)
        self._buffer = bytearray()

    async def request(self, data: bytes) -> Response:
        """Send *data* (a whole request) and read the whole response."""
        if self.stream is None:
            self.stream = await trio.open_tcp_stream(self.host, self.port)
            self.opened += 1
            self._buffer.clear()
        try:
            await self.stream.send_all(data)
            return await self._response()
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError, HttpError) as exc:
            await self.aclose()
            if isinstance(exc, HttpError):
                raise
            msg = f"connection failed: {exc!r}"
            raise HttpError(msg) from exc

    async def _response(self) -> Response:
        assert self.stream is not None
        buffer = self._buffer
        while (end := buffer.find(b"\r\n\r\n")) < 0:
            if len(buffer) > MAX_HEAD_BYTES:
                msg = "response head too long"
                raise HttpError(msg)
            await self._fill()
        head = bytes(buffer[:end]).lower()
        del buffer[: end + 4]
        try:
            status = int(head[9:12])
        except ValueError:
            msg = f"not an HTTP response: {head[:40]!r}"
            raise HttpError(msg) from None
        at = head.find(b"\r\ncontent-length:")
        if at < 0:
            msg = "response without Content-Length"
            raise HttpError(msg)
        stop = head.find(b"\r\n", at + 2)
        length = int(head[at + 17 : stop if stop >= 0 else len(head)])
        while len(buffer) < length:
            await self._fill()
        body = bytes(buffer[:length])
        del buffer[:length]
        if b"\r\nconnection: close" in head:
            await self.aclose()
        return Response(status, body)

    async def _fill(self) -> None:
        assert self.stream is not None
        data = await self.stream.receive_some(256 * 1024)
        if not data:
            msg = "the server closed the connection mid-response"
            raise HttpError(msg)
        self._buffer += data

    async def aclose(self) -> None:
        if self.stream is not None:
            stream, self.stream = self.stream, None
            await stream.aclose()


def field(body: bytes, name: bytes) -> str | None:
    """A string field of a compact JSON object, found without parsing the whole body."""
    key = b'"' + name + b'":"'
    at = body.find(key)
    if at < 0:
        return None
    start = at + len(key)
    return body[start : body.index(b'"', start)].decode()
