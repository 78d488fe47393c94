"""With auth off, only the service's own pages and hosts: a page elsewhere on the machine
cannot open a WebSocket, post a simple cross-site form, or read through a rebound DNS name
(``web/origins.py``). Against real servers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio
import wsproto
from trio_websocket import ConnectionRejected, open_websocket_url
from wsproto.events import AcceptConnection, RejectConnection, Request

from trio_audio.web.auth import add_token

from .audio_samples import wav
from .conftest import Server, StartServer
from .test_ws import FORMAT

EVIL = "http://evil.example"
REBOUND = "rebind.evil.example"
PARAMS = {"user_id": "alice", "session_id": "s"}


def ws_urls(server: Server) -> list[str]:
    return [server.running.ws_url, server.url.replace("http://", "ws://") + "/ws"]


async def handshake(url: str, **headers: str) -> int:
    """The handshake's status: 101 when the socket opens (and takes a ``start``)."""
    try:
        with trio.fail_after(10):
            async with open_websocket_url(url, extra_headers=list(headers.items())) as ws:
                start = {"type": "start", "user_id": "alice", "session_id": "s", "format": FORMAT}
                await ws.send_message(json.dumps(start))
                assert json.loads(await ws.get_message())["type"] == "started"
                return 101
    except ConnectionRejected as rejected:
        problem = json.loads(rejected.body or b"{}")
        assert problem.get("status") == rejected.status_code, problem
        return int(rejected.status_code)


async def test_a_page_elsewhere_cannot_open_a_websocket(server: Server) -> None:
    port = server.url.rsplit(":", 1)[1]
    for url in ws_urls(server):
        assert await handshake(url, Origin=EVIL) == 403
        assert await handshake(url, Origin="http://localhost:5173") == 403  # another local app
        assert await handshake(url, Origin="null") == 403  # a sandboxed page, a file
        assert await handshake(url) == 101  # no Origin: not a browser
        # The console's own page (on the HTTP port), by either loopback name.
        assert await handshake(url, Origin=server.url) == 101
        assert await handshake(url, Origin=f"http://localhost:{port}") == 101


async def test_a_rebound_host_is_misdirected(server: Server) -> None:
    port = server.url.rsplit(":", 1)[1]
    async with server.client() as client:
        assert (await client.post("/upload", params=PARAMS, content=wav())).status_code == 201
        for path in ("/sessions/alice", "/healthz", "/"):
            response = await client.get(path, headers={"Host": f"{REBOUND}:{port}"})
            assert response.status_code == 421, path
            assert response.json()["code"] == "misdirected_request"
        for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}", "127.0.0.2"):
            assert (await client.get("/sessions/alice", headers={"Host": host})).status_code == 200
    for url in ws_urls(server):
        assert await raw_handshake(url, f"{REBOUND}:{port}") == 421


async def raw_handshake(url: str, host: str) -> int:
    """A handshake with *host* as its ``Host`` (a client library sends the URL's): status."""
    address, port = url.removeprefix("ws://").removesuffix("/ws").rsplit(":", 1)
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream(address, int(port))
        ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
        await stream.send_all(ws.send(Request(host=host, target="/ws")))
        while True:
            ws.receive_data(await stream.receive_some(4096))
            for event in ws.events():
                if isinstance(event, RejectConnection | AcceptConnection):
                    await stream.aclose()
                    return 101 if isinstance(event, AcceptConnection) else event.status_code


async def test_a_cross_site_simple_post_stores_nothing(server: Server) -> None:
    async with server.client() as client:
        refused = [
            ({"Content-Type": "text/plain", "Origin": EVIL}, 403, "forbidden_origin"),
            ({"Content-Type": "text/plain"}, 415, "unsupported_media_type"),
            ({"Content-Type": "application/x-www-form-urlencoded"}, 415, "unsupported_media_type"),
            ({"Content-Type": "audio/wav", "Origin": EVIL}, 403, "forbidden_origin"),
        ]
        for headers, status, code in refused:
            response = await client.post("/upload", params=PARAMS, content=wav(), headers=headers)
            assert (response.status_code, response.json()["code"]) == (status, code), headers
        files = [("file", ("a.wav", wav(), "audio/wav"))]
        response = await client.post("/upload", data=PARAMS, files=files, headers={"Origin": EVIL})
        assert response.status_code == 403
        response = await client.delete("/sessions/alice", params={"session_id": "s"},
                                       headers={"Origin": EVIL})  # fmt: skip
        assert response.status_code == 403
        assert (await client.get("/sessions/alice")).json()["sessions"] == []
        # The console's way: a same-origin form post, and a raw body with its audio type.
        response = await client.post("/upload", data=PARAMS, files=files,
                                     headers={"Origin": server.url})  # fmt: skip
        assert response.status_code == 201
        own = {"Content-Type": "audio/wav", "Origin": server.url}
        response = await client.post("/upload", params={**PARAMS, "seq": "5"}, content=wav(300),
                                     headers=own)  # fmt: skip
        assert response.status_code == 201


async def test_an_operator_opens_it_deliberately(start_server: StartServer, tmp_path: Path) -> None:
    server: Server = await start_server(allowed_origins="https://app.example, http://evil.example",
                                        allowed_hosts="audio.example")  # fmt: skip
    for url in ws_urls(server):
        assert await handshake(url, Origin=EVIL) == 101
        assert await handshake(url, Origin="https://app.example") == 101
        assert await handshake(url, Origin="http://other.example") == 403
    async with server.client() as client:
        response = await client.get("/sessions/alice", headers={"Host": "audio.example"})
        assert response.status_code == 200
        plain = {"Content-Type": "text/plain", "Origin": EVIL}
        response = await client.post("/upload", params=PARAMS, content=wav(), headers=plain)
        assert response.status_code == 201
    await server.stop()
    anything: Server = await start_server(allowed_origins="*", allowed_hosts="*",
                                          data_dir=tmp_path / "other")  # fmt: skip
    async with anything.client() as client:
        response = await client.get("/healthz", headers={"Host": REBOUND, "Origin": EVIL})
        assert response.status_code == 200


async def test_with_auth_on_the_token_decides(start_server: StartServer, tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    token = add_token(path, "alice")
    server: Server = await start_server(tokens_file=str(path))
    headers = {"Authorization": f"Bearer {token}", "Host": REBOUND, "Origin": EVIL}
    async with server.client() as client:
        response = await client.post("/upload", params=PARAMS, content=wav(), headers=headers)
        assert response.status_code == 201


@pytest.mark.parametrize("value", ["0.0.0.0", "192.0.2.7"])
async def test_the_bound_address_is_a_host_of_its_own(value: str) -> None:
    from trio_audio.config import Config
    from trio_audio.web.origins import Origins

    origins = Origins.from_config(Config(host=value, allow_unauthenticated_remote=True), auth=False)
    assert origins.host_allowed(value) and origins.host_allowed("localhost")
    assert not origins.host_allowed(REBOUND)
