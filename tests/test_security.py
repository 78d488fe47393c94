"""Access control and limits that hold under attack, against real servers."""

from __future__ import annotations

import json
import os
import ssl
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trustme
from trio_websocket import open_websocket_url

from trio_audio.config import Config
from trio_audio.service import security
from trio_audio.web.auth import add_token

from .audio_samples import wav
from .conftest import Server, StartServer
from .test_ws import FORMAT, frame, receive_type, until_closed


def files_under(directory: Path) -> list[Path]:
    return sorted(p.relative_to(directory) for p in directory.rglob("*"))


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def tokens(tmp_path: Path) -> tuple[Path, str, str]:
    path = tmp_path / "tokens"
    return path, add_token(path, "alice"), add_token(path, "bob")


def test_token_add_prints_a_token_once_and_stores_only_its_hash(tmp_path: Path) -> None:
    path = tmp_path / "secrets" / "tokens"
    done = subprocess.run(
        [sys.executable, "-m", "trio_audio", "token", "add", "dora", "--tokens-file", str(path)],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    token = done.stdout.strip()
    assert len(token) >= 40
    stored = path.read_text()
    assert stored.startswith("dora sha256:") and token not in stored
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_no_token_starts_like_a_command_line_option(tmp_path: Path) -> None:
    # ``trio-audio stream ... --token TOKEN`` takes a token that starts with "-" for an
    # option (exit 2); one token in 64 would (the first of 2,000 comes after ~64).
    tokens = [add_token(tmp_path / "tokens", "erin") for _ in range(2000)]
    assert not [t for t in tokens if t.startswith("-")]
    assert len(set(tokens)) == len(tokens)


async def test_requests_without_a_valid_token_get_401(
    start_server: StartServer, tokens: tuple[Path, str, str]
) -> None:
    path, alice, _ = tokens
    server: Server = await start_server(tokens_file=str(path))
    async with server.client() as client:
        assert (await client.get("/healthz")).status_code == 200  # probes stay open
        for headers in ({}, bearer("not-a-token"), {"Authorization": f"Basic {alice}"}):
            response = await client.get("/sessions/alice", headers=headers)
            assert response.status_code == 401
            assert response.headers["www-authenticate"].startswith("Bearer")
            assert response.json()["code"] == "unauthorized"
        response = await client.post(
            "/upload", params={"session_id": "s"}, content=wav(), headers=bearer("nope")
        )
        assert response.status_code == 401


async def test_a_user_sees_only_their_own_data(
    start_server: StartServer, tokens: tuple[Path, str, str]
) -> None:
    path, alice, bob = tokens
    server: Server = await start_server(tokens_file=str(path))
    async with server.client() as client:
        # The token names the user: no user_id needed, and another user_id is refused.
        response = await client.post(
            "/upload", params={"session_id": "s"}, content=wav(), headers=bearer(alice)
        )
        assert response.status_code == 201
        chunk = response.json()
        assert chunk["user_id"] == "alice"
        response = await client.post(
            "/upload", params={"user_id": "bob", "session_id": "s"}, content=wav(),
            headers=bearer(alice),
        )  # fmt: skip
        assert response.status_code == 403 and response.json()["code"] == "forbidden"

        own = await client.get(f"/chunks/{chunk['chunk_id']}", headers=bearer(alice))
        assert own.status_code == 200
        # Bob cannot read, download, list or delete it, nor learn that it exists.
        missing = await client.get("/chunks/no-such-chunk", headers=bearer(bob))
        for method, url in [
            ("GET", f"/chunks/{chunk['chunk_id']}"),
            ("GET", f"/chunks/{chunk['chunk_id']}/audio"),
            ("GET", "/sessions/alice"),
            ("DELETE", f"/chunks/{chunk['chunk_id']}"),
            ("DELETE", "/sessions/alice?session_id=s"),
            ("GET", "/sessions/alice/s/audio"),
            ("GET", "/sessions/alice/s/transcript?format=vtt"),
            ("DELETE", "/sessions/alice/s"),
        ]:
            response = await client.request(method, url, headers=bearer(bob))
            assert response.status_code == 404, (method, url, response.text)
            assert response.json()["code"] == missing.json()["code"] == "not_found"
        assert (await client.get("/sessions/alice", headers=bearer(alice))).json()["sessions"]


async def test_websocket_auth_by_header_query_or_start(
    start_server: StartServer, tokens: tuple[Path, str, str]
) -> None:
    path, alice, _ = tokens
    server: Server = await start_server(tokens_file=str(path))
    url = server.running.ws_url
    start: dict[str, Any] = {"type": "start", "session_id": "live", "format": FORMAT}
    for n, how in enumerate(("header", "query", "start")):
        headers = [("Authorization", f"Bearer {alice}")] if how == "header" else None
        target = f"{url}?token={alice}" if how == "query" else url
        message = {**start, "token": alice} if how == "start" else start
        async with open_websocket_url(target, extra_headers=headers) as ws:
            await ws.send_message(json.dumps(message))
            started = await receive_type(ws, "started")
            assert started["user_id"] == "alice" and started["next_seq"] == n
            await ws.send_message(frame(n))
            assert (await receive_type(ws, "ack", skip=("metadata",)))["seq"] == n
    for message, code in [
        (start, 4401),
        ({**start, "token": "wrong"}, 4401),
        ({**start, "token": alice, "user_id": "bob"}, 4403),
    ]:
        async with open_websocket_url(url) as ws:
            await ws.send_message(json.dumps(message))
            received, closed = await until_closed(ws)
        assert closed == code, received


async def test_token_changes_take_effect_without_a_restart(
    start_server: StartServer, tokens: tuple[Path, str, str]
) -> None:
    """A revoked token stops working over HTTP and its open sockets (both transports) close
    with 4401; a token added meanwhile works; nobody restarted anything."""
    path, alice, bob = tokens
    server: Server = await start_server(tokens_file=str(path))
    start = {"type": "start", "session_id": "live", "format": FORMAT, "token": alice}
    urls = [server.running.ws_url, server.url.replace("http://", "ws://") + "/ws"]
    async with server.client() as client, trio.open_nursery() as nursery:
        assert (await client.get("/sessions/alice", headers=bearer(alice))).status_code == 200
        closes: list[int | None] = []

        async def open_session(url: str, task_status: trio.TaskStatus[None]) -> None:
            async with open_websocket_url(url) as ws:
                await ws.send_message(json.dumps(start))
                await receive_type(ws, "started")
                task_status.started()
                received, closed = await until_closed(ws)
            assert received[-1]["code"] == "unauthorized", received
            closes.append(closed)

        for url in urls:
            await nursery.start(open_session, url)
        await trio.sleep(1.1)  # the file's mtime must move on a coarse clock, too
        revoke = [sys.executable, "-m", "trio_audio", "token", "revoke", "alice",
                  "--tokens-file", str(path)]  # fmt: skip
        carol = add_token(path, "carol")
        await trio.run_process(revoke, capture_stdout=True)
        for _ in range(50):  # within the file's check period (a second)
            status = (await client.get("/sessions/alice", headers=bearer(alice))).status_code
            if status == 401:
                break
            await trio.sleep(0.1)
        assert status == 401
        assert (await client.get("/sessions/carol", headers=bearer(carol))).status_code == 200
        assert (await client.get("/sessions/bob", headers=bearer(bob))).status_code == 200
    assert closes == [4401, 4401]


def test_an_open_address_needs_auth_or_an_explicit_flag(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"refusing to serve 0\.0\.0\.0 with auth off"):
        security(Config(host="0.0.0.0"))
    assert security(Config(host="0.0.0.0", allow_unauthenticated_remote=True)) == (None, None)
    assert security(Config(host="::1")) == (None, None)
    done = subprocess.run(
        [sys.executable, "-m", "trio_audio", "serve", "--host", "0.0.0.0", "--port", "0",
         "--data-dir", str(tmp_path)], capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 2 and "--allow-unauthenticated-remote" in done.stderr
    env = {**os.environ, "TRIO_AUDIO_ALLOW_UNAUTHENTICATED_REMOTE": "maybe"}
    done = subprocess.run(
        [sys.executable, "-m", "trio_audio", "serve", "--data-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=30, env=env,
    )  # fmt: skip
    assert done.returncode == 2 and "is not a boolean" in done.stderr


async def test_per_user_rate_limit(start_server: StartServer) -> None:
    server: Server = await start_server(rate_limit_per_s=0.5, rate_limit_burst=2)
    async with server.client() as client:
        statuses = []
        for _ in range(3):
            response = await client.post(
                "/upload", params={"user_id": "alice", "session_id": "s"}, content=wav()
            )
            statuses.append(response.status_code)
        assert statuses == [201, 201, 429]
        assert response.headers["retry-after"] == "2"
        assert response.json()["code"] == "rate_limited"
        other = await client.post(
            "/upload", params={"user_id": "bob", "session_id": "s"}, content=wav()
        )
        assert other.status_code == 201


async def test_multipart_parts_each_count_against_the_rate_limit(start_server: StartServer) -> None:
    server: Server = await start_server(rate_limit_per_s=0.1, rate_limit_burst=2)
    files = [("file", (f"{n}.wav", wav(300 + n), "audio/wav")) for n in range(3)]
    async with server.client() as client:
        response = await client.post(
            "/upload", data={"user_id": "alice", "session_id": "s"}, files=files
        )
        assert response.status_code == 429 and response.json()["code"] == "rate_limited"


async def test_audio_is_served_as_what_it_is_not_as_what_it_was_called(
    client: httpx.AsyncClient,
) -> None:
    body = wav() + b"<script>alert(1)</script>"
    response = await client.post(
        "/upload", params={"user_id": "alice", "session_id": "s"}, content=body,
        headers={"Content-Type": "text/html"},
    )  # fmt: skip
    assert response.status_code == 201
    audio = await client.get(f"/chunks/{response.json()['chunk_id']}/audio")
    assert audio.content == body  # the exact bytes...
    assert audio.headers["content-type"] == "audio/wav"  # ...but never as a page
    assert audio.headers["x-content-type-options"] == "nosniff"


async def test_multipart_part_size_limit(start_server: StartServer) -> None:
    server: Server = await start_server(max_part_bytes=20_000)
    async with server.client() as client:
        files = [
            ("file", ("a.wav", wav(440, 0.5), "audio/wav")),  # 16 KB: fine
            ("file", ("b.wav", wav(440, 1.0), "audio/wav")),
        ]  # 32 KB: too big
        response = await client.post(
            "/upload", data={"user_id": "alice", "session_id": "s"}, files=files
        )  # fmt: skip
        assert response.status_code == 413 and response.json()["code"] == "payload_too_large"
        listing = await client.get("/sessions/alice")
        assert listing.json()["sessions"] == []


async def raw_request(server: Server, head: bytes) -> trio.SocketStream:
    host, port = server.url.removeprefix("http://").split(":")
    stream = await trio.open_tcp_stream(host, int(port))
    await stream.send_all(head)
    return stream


async def test_a_body_sent_too_slowly_is_cut_off(start_server: StartServer) -> None:
    server: Server = await start_server(min_upload_bytes_per_s=8000, upload_grace_s=0.2)
    body = wav(440, 0.125)  # 4 KB: allowed 0.2 + 0.5 s; sent at 2.5 KB/s it would take 1.6 s
    stream = await raw_request(server, (
        b"POST /upload?user_id=alice&session_id=s HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: audio/wav\r\nContent-Length: %d\r\n\r\n" % len(body)))  # fmt: skip
    response = b""
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:

            async def trickle() -> None:
                for i in range(0, len(body), 256):
                    await stream.send_all(body[i : i + 256])
                    await trio.sleep(0.1)

            nursery.start_soon(trickle)
            while not response.endswith(b"}"):  # the whole problem document
                response += await stream.receive_some()
            nursery.cancel_scope.cancel()
    head, _, problem = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408")
    assert json.loads(problem)["code"] == "request_timeout"


async def test_hundreds_of_slow_connections_do_not_slow_a_normal_client(
    start_server: StartServer,
) -> None:
    server: Server = await start_server(read_timeout_s=30)
    latencies: list[float] = []
    async with trio.open_nursery() as nursery:
        slow = []
        for _ in range(300):  # slow-loris: a header line and then a byte now and then
            slow.append(await raw_request(server, b"POST /upload HTTP/1.1\r\nHost: 127.0.0.1\r\n"))

        async def drip() -> None:
            while True:
                for stream in slow:
                    await stream.send_all(b"X")
                await trio.sleep(0.5)

        nursery.start_soon(drip)
        async with server.client() as client:
            for i in range(40):
                started = trio.current_time()
                response = await client.post(
                    "/upload", params={"user_id": "alice", "session_id": "s"}, content=wav(200 + i)
                )
                latencies.append(trio.current_time() - started)
                assert response.status_code == 201
        nursery.cancel_scope.cancel()
    latencies.sort()
    assert latencies[int(len(latencies) * 0.99) - 1] < 1.0


async def test_tls_on_both_listeners(start_server: StartServer, tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(certfile))
    cert.private_key_pem.write_to_path(str(keyfile))
    server: Server = await start_server(certfile=str(certfile), keyfile=str(keyfile))
    assert server.url.startswith("https://") and server.running.ws_url.startswith("wss://")
    client_tls = ssl.create_default_context()
    ca.configure_trust(client_tls)
    async with httpx.AsyncClient(base_url=server.url, verify=client_tls) as client:
        response = await client.post(
            "/upload", params={"user_id": "alice", "session_id": "s"}, content=wav()
        )
        assert response.status_code == 201
    for url in (server.running.ws_url, server.url.replace("https://", "wss://") + "/ws"):
        async with open_websocket_url(url, ssl_context=client_tls) as ws:
            message = {"type": "start", "user_id": "alice", "session_id": "t", "format": FORMAT}
            await ws.send_message(json.dumps(message))
            await receive_type(ws, "started")
            await ws.send_message(frame(0))
            await receive_type(ws, "ack", skip=("metadata",))
    with pytest.raises(httpx.ConnectError):  # a client that does not trust the CA
        async with httpx.AsyncClient(base_url=server.url) as client:
            await client.get("/healthz")


@pytest.mark.parametrize(
    "bad", ["../etc", "..", "a/b", "a\x00b", "%2e%2e", "a%2Fb", "é", "a b", "x" * 65, ""]
)
async def test_hostile_ids_are_refused_and_touch_no_file(
    server: Server, data_dir: Path, bad: str
) -> None:
    before = await trio.to_thread.run_sync(files_under, data_dir)
    async with server.client() as client:
        response = await client.post(
            "/upload", params={"user_id": bad, "session_id": "s"}, content=wav()
        )
        assert response.status_code == 400, response.text
        assert response.json()["code"] in ("invalid_field", "missing_field")
        response = await client.post(
            "/upload", params={"user_id": "alice", "session_id": bad}, content=wav()
        )
        assert response.status_code == 400
    after = await trio.to_thread.run_sync(files_under, data_dir)
    assert after == before
