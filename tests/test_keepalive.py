"""A refusal never hangs the keep-alive connection it was sent on.

Every refusal the service sends before reading a request's body (401, 413, 429, 503) is
followed, on the same connection, by the rest of that body and then another request: the
other request gets its answer, or the connection closes cleanly, never a hang. Raw sockets
pin the order down (the refusal is read before a byte of body is sent); httpx keep-alive
clients check what a real client sees. Localhost, port 0, ``fail_after`` on every wait.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from urllib.parse import urlsplit

import attrs
import httpx
import pytest
import trio
import trustme
from hypercorn.config import Config as HyperConfig
from hypercorn.trio import serve as hypercorn_serve
from quart_trio import QuartTrio

from trio_audio.web.asgi import DRAIN_MAX_BYTES, FrontDoor
from trio_audio.web.auth import add_token

from .audio_samples import wav
from .conftest import Server, StartServer

BODY = wav(440, 1.0)  # 32 KB: a 1 s 16 kHz mono upload
UPLOAD = "/upload?user_id=alice&session_id=s1"
WAIT_S = 5


@attrs.define
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes


class RawConnection:
    """HTTP/1.1 over one plain socket, so the test decides when each byte is sent."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = bytearray()

    @classmethod
    async def open(cls, url: str) -> RawConnection:
        parts = urlsplit(url)
        assert parts.hostname is not None and parts.port is not None
        return cls(await trio.open_tcp_stream(parts.hostname, parts.port))

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def _fill(self) -> bool:
        data = await self.stream.receive_some(65536)
        self.buffer += data
        return bool(data)

    async def response(self) -> RawResponse | None:
        """The next response (1xx included), or None when the server closed cleanly."""
        with trio.fail_after(WAIT_S):
            while b"\r\n\r\n" not in self.buffer:
                if not await self._fill():
                    assert not self.buffer, f"closed inside a response: {bytes(self.buffer)!r}"
                    return None
            head, _, rest = bytes(self.buffer).partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split()[1])
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            length = int(headers.get("content-length", "0"))
            self.buffer = bytearray(rest)
            while len(self.buffer) < length:
                assert await self._fill(), f"closed inside a response body {head!r}"
            body, self.buffer = bytes(self.buffer[:length]), self.buffer[length:]
            return RawResponse(status, headers, body)

    async def closed(self) -> bool:
        """True once the server closes (EOF), within the wait; anything else sent is a fail."""
        with trio.fail_after(WAIT_S):
            return not await self._fill()

    async def aclose(self) -> None:
        await self.stream.aclose()


def head(method: str, target: str, length: int | None = None, **headers: str) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1"]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


UPLOAD_HEAD = head("POST", UPLOAD, len(BODY), Content_Type="audio/wav")
HEALTH = head("GET", "/healthz")


@attrs.define
class Refusal:
    """A server set up so that the next upload is refused before its body is read."""

    server: Server
    status: int
    code: str
    body: bytes = BODY
    release: Callable[[], None] = lambda: None  # lets held work go at the end


Setup = Callable[[StartServer, Path, trio.Nursery], Awaitable[Refusal]]


async def unauthorized(start_server: StartServer, tmp_path: Path, nursery: trio.Nursery) -> Refusal:
    path = tmp_path / "tokens"
    add_token(path, "alice")
    server = await start_server(tokens_file=str(path))
    return Refusal(server, 401, "unauthorized")


async def rate_limited(start_server: StartServer, tmp_path: Path, nursery: trio.Nursery) -> Refusal:
    server = await start_server(rate_limit_per_s=0.01, rate_limit_burst=1)
    async with server.client() as client:  # the one upload the bucket allows
        response = await client.post(UPLOAD, content=BODY)
        assert response.status_code == 201
    return Refusal(server, 429, "rate_limited")


async def too_large(start_server: StartServer, tmp_path: Path, nursery: trio.Nursery) -> Refusal:
    server = await start_server(max_body_bytes=len(BODY) // 2)
    return Refusal(server, 413, "payload_too_large")


async def overloaded(start_server: StartServer, tmp_path: Path, nursery: trio.Nursery) -> Refusal:
    """The only CPU thread held, the validate worker blocked on it, the ingress queue full."""
    server = await start_server(ingress_queue=1, stage_queue=1, stage_workers=1, cpu_threads=1,
                                inline_max_samples=0)  # fmt: skip
    limiter = server.running.limiter
    await limiter.acquire_on_behalf_of("test")

    async def hold(seq: int) -> None:
        async with server.client() as client:
            response = await client.post(f"{UPLOAD}&seq={seq}", content=wav(300 + seq))
            assert response.status_code == 201

    for seq in range(2):  # one taken by the blocked worker, one waiting in the queue
        nursery.start_soon(hold, seq)
    with trio.fail_after(WAIT_S):
        # The queue is the server's state, not an event this test can wait on: poll it.
        while 'queue_depth{queue="ingress"} 1' not in server.running.metrics.render():  # noqa: ASYNC110
            await trio.sleep(0.01)
    return Refusal(server, 503, "overloaded", release=lambda: limiter.release_on_behalf_of("test"))


async def no_slot(
    start_server: StartServer, tmp_path: Path, nursery: trio.Nursery, retry_after_s: int = 1
) -> Refusal:
    """The one upload slot held by an upload inside (its decode waits for the only CPU
    thread, held): the gate refuses before the body is read. (A body still on its way holds
    no slot: the front door reads it before the upload is admitted.)"""
    server = await start_server(admit_max=1, admit_wait_s=0.1, retry_after_s=retry_after_s,
                                cpu_threads=1, inline_max_samples=0)  # fmt: skip
    limiter = server.running.limiter
    await limiter.acquire_on_behalf_of("test")

    async def hold() -> None:
        async with server.client() as client:
            response = await client.post(f"{UPLOAD}&seq=0", content=wav(300))
            assert response.status_code == 201

    nursery.start_soon(hold)
    with trio.fail_after(WAIT_S):
        # Admission is the server's state, not an event this test can wait on: poll it.
        while 'trio_audio_admission{state="inside"} 1' not in server.running.metrics.render():  # noqa: ASYNC110
            await trio.sleep(0.01)
    return Refusal(server, 503, "overloaded", release=lambda: limiter.release_on_behalf_of("test"))


SETUPS: dict[str, Setup] = {
    "401": unauthorized,
    "413": too_large,
    "429": rate_limited,
    "503": overloaded,
    "503-admission": no_slot,
}


@pytest.fixture(params=sorted(SETUPS))
async def refusal(
    request: pytest.FixtureRequest, start_server: StartServer, tmp_path: Path, nursery: trio.Nursery
) -> AsyncIterator[Refusal]:
    made = await SETUPS[request.param](start_server, tmp_path, nursery)
    yield made
    made.release()


def assert_refused(response: RawResponse | httpx.Response | None, refusal: Refusal) -> None:
    assert response is not None
    status = response.status if isinstance(response, RawResponse) else response.status_code
    body = response.body if isinstance(response, RawResponse) else response.content
    assert status == refusal.status, body
    assert json.loads(body)["code"] == refusal.code


async def test_the_next_request_on_a_refused_connection_is_answered(refusal: Refusal) -> None:
    """Refusal read first, then its body, then the next request: answered on that socket."""
    conn = await RawConnection.open(refusal.server.url)
    await conn.send(UPLOAD_HEAD)
    first = await conn.response()
    assert_refused(first, refusal)
    assert first is not None and "close" not in first.headers.get("connection", "")
    await conn.send(refusal.body)
    await conn.send(HEALTH)
    second = await conn.response()
    assert second is not None and second.status == 200, second
    assert json.loads(second.body) == {"status": "ok"}
    # And the connection is still good for the refused kind of request.
    await conn.send(UPLOAD_HEAD + refusal.body)
    assert_refused(await conn.response(), refusal)
    await conn.aclose()


async def test_a_body_sent_after_a_pause_then_the_next_request(refusal: Refusal) -> None:
    """The issue's order: headers, the body a moment later, then the next request at once."""
    conn = await RawConnection.open(refusal.server.url)
    await conn.send(UPLOAD_HEAD)
    await trio.sleep(0.05)  # the client's network pause between headers and body
    await conn.send(refusal.body + HEALTH)
    assert_refused(await conn.response(), refusal)
    second = await conn.response()
    assert second is not None and second.status == 200, second
    await conn.aclose()


async def test_a_refused_body_too_large_to_drain_closes_its_connection(
    start_server: StartServer,
) -> None:
    """Past the drain bound the refusal says ``Connection: close`` and the server closes."""
    server = await start_server(max_body_bytes=64 * 1024)
    conn = await RawConnection.open(server.url)
    length = 64 * 1024 + DRAIN_MAX_BYTES + 1
    await conn.send(head("POST", UPLOAD, length, Content_Type="audio/wav"))
    response = await conn.response()
    assert response is not None and response.status == 413
    assert response.headers["connection"] == "close"
    assert await conn.closed()
    await conn.aclose()
    async with server.client() as client:  # and the server is none the worse
        assert (await client.get("/healthz")).status_code == 200


async def test_a_connection_refused_again_at_once_is_answered_after_its_retry_after(
    start_server: StartServer, tmp_path: Path, nursery: trio.Nursery
) -> None:
    """A client that resends at once (a retry storm) gets its next refusal once the
    Retry-After it was given has passed; other connections are refused without a wait."""
    made = await no_slot(start_server, tmp_path, nursery, retry_after_s=2)
    conn = await RawConnection.open(made.server.url)
    sent_at = trio.current_time()  # the server's pacing starts after this
    await conn.send(UPLOAD_HEAD + BODY)
    first = await conn.response()
    assert_refused(first, made)
    assert first is not None and first.headers["retry-after"] == "2"
    refused_at = trio.current_time()
    await conn.send(UPLOAD_HEAD + BODY)  # again at once, Retry-After ignored
    other = await RawConnection.open(made.server.url)
    await other.send(UPLOAD_HEAD + BODY)
    assert_refused(await other.response(), made)
    assert trio.current_time() - refused_at < 1.5  # not held: its first refusal
    assert_refused(await conn.response(), made)
    assert trio.current_time() - sent_at >= 2.0  # held until its Retry-After
    assert 'trio_audio_admission{state="paced_total"} 1' in made.server.running.metrics.render()
    await conn.aclose()
    await other.aclose()
    made.release()


def local_port(response: httpx.Response) -> int:
    stream = response.extensions["network_stream"]
    port: int = stream.get_extra_info("client_addr")[1]
    return port


async def test_an_httpx_keep_alive_client_carries_on_after_a_refusal(refusal: Refusal) -> None:
    """A real client on one pooled connection: refused, then answered, on the same socket."""

    async def slow_body() -> AsyncIterator[bytes]:
        half = len(refusal.body) // 2
        yield refusal.body[:half]
        await trio.sleep(0.05)  # the rest comes after the server has answered
        yield refusal.body[half:]

    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    async with refusal.server.client(limits=limits) as client:
        before = await client.get("/healthz")
        with trio.fail_after(WAIT_S):
            response = await client.post(
                UPLOAD, content=slow_body(), headers={"Content-Type": "audio/wav",
                                                      "Content-Length": str(len(refusal.body))}
            )  # fmt: skip
        assert_refused(response, refusal)
        with trio.fail_after(WAIT_S):
            after = await client.get("/healthz")
        assert after.status_code == 200
        assert local_port(after) == local_port(response) == local_port(before)
        # A client that obeys Retry-After on the same connection is answered too.
        with trio.fail_after(WAIT_S):
            again = await client.post(UPLOAD, content=refusal.body)
        assert_refused(again, refusal)
        assert local_port(again) == local_port(before)


async def test_an_httpx_client_refused_a_huge_body_gets_its_answer(
    start_server: StartServer,
) -> None:
    """Past the drain bound: the 413 arrives, the connection closes, the next one works."""
    server = await start_server(max_body_bytes=64 * 1024)
    body = bytes(4 * DRAIN_MAX_BYTES)
    async with server.client() as client:
        with trio.fail_after(WAIT_S):
            response = await client.post(UPLOAD, content=body)
        assert response.status_code == 413
        assert response.headers["connection"] == "close"
        with trio.fail_after(WAIT_S):
            assert (await client.get("/healthz")).status_code == 200


async def serve_behind_door(nursery: trio.Nursery, door: FrontDoor) -> str:
    """Hypercorn's trio worker on port 0 serving *door* until the test ends; its URL."""
    config = HyperConfig()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None

    async def serve(task_status: trio.TaskStatus[list[str]]) -> None:
        await hypercorn_serve(door, config, shutdown_trigger=trio.sleep_forever,
                              task_status=task_status, mode="asgi")  # fmt: skip

    binds: list[str] = await nursery.start(serve)
    return binds[0]


async def test_a_bare_quart_trio_app_that_refuses_early_keeps_its_connection(
    nursery: trio.Nursery,
) -> None:
    """The hang is hypercorn's with quart-trio, not this service's: any such app gets it."""
    app = QuartTrio("bare")

    @app.post("/refuse")
    async def refuse() -> tuple[dict[str, str], int]:
        return {"code": "rate_limited"}, 429  # before the body is read

    @app.get("/ok")
    async def ok() -> dict[str, str]:
        return {"status": "ok"}

    url = await serve_behind_door(nursery, FrontDoor(app, trio.Event()))
    conn = await RawConnection.open(url)
    for _ in range(3):
        await conn.send(head("POST", "/refuse", len(BODY)))
        refused = await conn.response()
        assert refused is not None and refused.status == 429
        await conn.send(BODY + head("GET", "/ok"))
        answer = await conn.response()
        assert answer is not None and answer.status == 200
    await conn.aclose()


async def test_an_http2_client_refused_early_keeps_its_connection(
    start_server: StartServer, tmp_path: Path
) -> None:
    """Over TLS with h2, hypercorn resets the whole connection when a refused stream's body
    arrives after the stream ended; waiting for the body keeps every stream on it working."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(certfile))
    cert.private_key_pem.write_to_path(str(keyfile))
    server = await start_server(certfile=str(certfile), keyfile=str(keyfile),
                                rate_limit_per_s=0.01, rate_limit_burst=1)  # fmt: skip
    trusted = ssl.create_default_context()
    ca.configure_trust(trusted)
    big = wav(440, 8.0)  # 256 KB: several h2 DATA frames, most after the refusal
    async with httpx.AsyncClient(base_url=server.url, http2=True, verify=trusted) as client:
        with trio.fail_after(WAIT_S):
            stored = await client.post(UPLOAD, content=BODY)
            refused = await client.post(UPLOAD, content=big)
            after = await client.get("/healthz")
        assert stored.http_version == "HTTP/2" and stored.status_code == 201
        assert refused.status_code == 429
        assert after.status_code == 200
        assert local_port(after) == local_port(stored)
