"""The WebSocket session protocol, end to end, on both transports.

Every test runs twice: against the trio-websocket listener (``--ws-port``) and against ``/ws``
on the HTTP port, which share one session implementation.
"""

from __future__ import annotations

import base64
import json
import re
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import wsproto
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from trio_websocket import (
    ConnectionClosed,
    WebSocketConnection,
    open_websocket_url,
    wrap_client_stream,
)
from wsproto.events import AcceptConnection, BytesMessage, Request, TextMessage

from .audio_samples import pcm_s16le, wav
from .conftest import Server, StartServer, upload_params
from .faults import FaultyFiles
from .processes import Process
from .strategies import JSON_VALUES, start_messages

LIVE = ("flow", "keepalive", "vad", "transcript")  # may come at any time
FORMAT = {"encoding": "pcm_s16le", "sample_rate": 16000, "channels": 1}
FRAME = pcm_s16le(440.0, seconds=0.1, rate=16000)  # 100 ms of 16 kHz audio


def frame(n: int) -> bytes:
    """A distinct 100 ms frame per n (so checksums differ)."""
    return pcm_s16le(300.0 + 10 * n, seconds=0.1, rate=16000)


@pytest.fixture(params=["listener", "http-port"])
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def ws_url(server: Server, transport: str) -> str:
    if transport == "listener":
        return server.running.ws_url
    return server.url.replace("http://", "ws://") + "/ws"


@asynccontextmanager
async def connect(url: str) -> AsyncIterator[WebSocketConnection]:
    with trio.fail_after(30):
        async with open_websocket_url(url, max_message_size=4 * 2**20) as ws:
            yield ws


async def receive(ws: WebSocketConnection) -> dict[str, Any]:
    with trio.fail_after(15):
        message: dict[str, Any] = json.loads(await ws.get_message())
    return message


async def receive_type(
    ws: WebSocketConnection, kind: str, skip: tuple[str, ...] = ()
) -> dict[str, Any]:
    """The next message of *kind*, skipping only *skip* and the live engine results."""
    while True:
        message = await receive(ws)
        if message["type"] == kind:
            return message
        assert message["type"] in (*skip, *LIVE), message


async def until_closed(ws: WebSocketConnection) -> tuple[list[dict[str, Any]], int | None]:
    """Every message up to the close, and the close code."""
    out: list[dict[str, Any]] = []
    with trio.fail_after(15):
        try:
            while True:
                out.append(json.loads(await ws.get_message()))
        except ConnectionClosed as closed:
            return out, closed.reason.code


async def start(ws: WebSocketConnection, session: str = "live", **extra: Any) -> dict[str, Any]:
    message = {"type": "start", "user_id": "alice", "session_id": session, "format": FORMAT}
    await ws.send_message(json.dumps({**message, **extra}))
    started = await receive(ws)
    assert started["type"] == "started", started
    return started


async def test_the_whole_message_sequence(server: Server, transport: str) -> None:
    async with connect(ws_url(server, transport)) as ws:
        started = await start(ws)
        assert started["next_seq"] == 0 and started["session_id"] == "live"
        assert started["limits"]["max_inflight"] == server.config.ws_max_inflight
        for n in range(3):
            await ws.send_message(frame(n))
        metadata = []
        for n in range(3):
            ack = await receive_type(ws, "ack")
            assert ack["seq"] == n
            meta = await receive_type(ws, "metadata")
            assert meta["chunk_id"] == ack["chunk_id"] and meta["seq"] == n
            assert meta["audio"]["encoding"] == "pcm_s16le" and meta["audio"]["frames"] == 1600
            assert meta["offset_ms"] == 100.0 * n
            assert abs(meta["features"]["dominant_hz"] - (300 + 10 * n)) < 2 * 7.9
            metadata.append(meta)
        await ws.send_message(json.dumps({"type": "keepalive"}))
        assert (await receive_type(ws, "keepalive"))["type"] == "keepalive"
        await ws.send_message(json.dumps({"type": "end"}))
        rest, code = await until_closed(ws)
    end = [m for m in rest if m["type"] == "session_end"]
    assert code == 1000
    assert end[0]["summary"]["stored"] == 3 and end[0]["summary"]["chunk_count"] == 3
    async with server.client() as client:
        listing = (await client.get("/sessions/alice")).json()
    assert listing["sessions"][0]["chunks"] == [
        {k: v for k, v in m.items() if k != "type"} for m in metadata
    ]
    # The same session summary as POST /sessions/{user}/{session}/end gives, plus the
    # stream's own counts.
    session = listing["sessions"][0]
    assert end[0]["summary"] == {
        "user_id": "alice", "session_id": session["session_id"],
        "chunk_count": 3, "duration_ms": session["duration_ms"],
        "transcript": {**session["transcript"], "words": []},
        "stored": 3, "duplicates": 0, "next_seq": 3,
    }  # fmt: skip


@pytest.mark.parametrize(("every", "with_metadata"), [(3, [0, 3, 6]), (0, [])])
async def test_metadata_every_sends_the_metadata_of_every_nth_seq(
    server: Server, transport: str, every: int, with_metadata: list[int]
) -> None:
    """A client that asks for fewer metadata messages gets every ack, durable, and the
    metadata of the seqs that *every* divides; the chunks are all stored with their analysis."""
    async with connect(ws_url(server, transport)) as ws:
        started = await start(ws, "sparse", metadata_every=every)
        assert started["metadata_every"] == every
        for n in range(8):
            await ws.send_message(frame(n))
        await ws.send_message(json.dumps({"type": "end"}))
        received, code = await until_closed(ws)
    assert code == 1000
    acks = [m["seq"] for m in received if m["type"] == "ack"]
    metadata = [m for m in received if m["type"] == "metadata"]
    assert acks == list(range(8))
    assert [m["seq"] for m in metadata] == with_metadata
    async with server.client() as client:
        chunks = (await client.get("/sessions/alice?session_id=sparse")).json()["sessions"][0]
    assert len(chunks["chunks"]) == 8
    assert all("speech_ratio" in c["features"] for c in chunks["chunks"])
    for meta in metadata:
        assert chunks["chunks"][meta["seq"]] == {k: v for k, v in meta.items() if k != "type"}


async def test_container_frames_and_base64_audio_messages(server: Server, transport: str) -> None:
    async with connect(ws_url(server, transport)) as ws:
        await start(ws, "files", format={"container": "wav"})
        await ws.send_message(wav(440, 0.25))
        data = base64.b64encode(wav(880, 0.25)).decode()
        await ws.send_message(json.dumps({"type": "audio", "data": data, "seq": 5}))
        first, second = await receive_type(ws, "ack"), None
        await receive_type(ws, "metadata")
        second = await receive_type(ws, "ack")
        meta = await receive_type(ws, "metadata")
    assert (first["seq"], second["seq"]) == (0, 5)
    assert meta["audio"]["container"] == "wav"
    assert abs(meta["features"]["dominant_hz"] - 880) <= meta["features"]["fft_bin_hz"] * 2


@pytest.mark.parametrize(
    ("messages", "code", "error"),
    [
        (["not json"], 4400, "bad_message"),
        ([b"audio before start"], 4400, "bad_message"),
        ([{"type": "hello"}], 4400, "bad_message"),
        ([{"type": "start", "user_id": "a/../b", "session_id": "s", "format": FORMAT}], 4400,
         "invalid_field"),
        ([{"type": "start", "user_id": "a", "format": FORMAT}], 4400, "missing_field"),
        ([{"type": "start", "user_id": "a", "session_id": "s", "format": "wav"}], 4400,
         "bad_message"),
        ([{"type": "start", "user_id": "a", "session_id": "s"}, b"\x00\x00"], 4400,
         "bad_message"),  # no format: a watcher, which sends no audio
        ([{"type": "start", "user_id": "a", "session_id": "s",
           "format": {"encoding": "pcm_mulaw", "sample_rate": 8000, "channels": 1}}], 4415,
         "unsupported_media_type"),
        ([{"type": "start", "user_id": "a", "session_id": "s",
           "format": {"container": "aac"}}], 4415, "unsupported_media_type"),
        (["START", {"type": "dance"}], 4400, "bad_message"),
        (["START", {"type": "audio", "data": "***"}], 4400, "bad_message"),
        (["START", b"\x00\x01\x02"], 4415, "invalid_audio"),  # odd length for 16-bit PCM
        (["START", "[1, 2]"], 4400, "bad_message"),
        (["START", b""], 4415, "invalid_audio"),  # an empty frame: the same on both ports
        (["START", "[" * 50_000], 4400, "bad_message"),  # nested deeper than JSON decoding goes
        (["START", {"type": "start", "user_id": "alice", "session_id": "live",
                    "format": FORMAT}], 4400, "bad_message"),  # a second start
        ([{"type": "start", "user_id": "a", "session_id": "s", "format": {"container": []}}],
         4415, "unsupported_media_type"),
        ([{"type": "start", "user_id": "a", "session_id": "s", "format": FORMAT,
           "metadata_every": -1}], 4400, "invalid_field"),
        ([{"type": "start", "user_id": "a", "session_id": "s", "format": FORMAT,
           "metadata_every": "2"}], 4400, "invalid_field"),
        ([{"type": "start", "user_id": "a", "session_id": "s", "format": FORMAT,
           "metadata_every": True}], 4400, "invalid_field"),
    ],
)  # fmt: skip
async def test_errors_close_with_their_code_and_others_go_on(
    server: Server, transport: str, messages: list[Any], code: int, error: str
) -> None:
    url = ws_url(server, transport)
    async with connect(url) as bystander, connect(url) as ws:
        await start(bystander, "bystander")
        for message in messages:
            if message == "START":
                await start(ws, "bad")
            elif isinstance(message, dict):
                await ws.send_message(json.dumps(message))
            else:
                await ws.send_message(message)
        received, closed_with = await until_closed(ws)
        assert closed_with == code
        errors = [m for m in received if m["type"] == "error"]
        assert errors[-1]["code"] == error and errors[-1]["message"]
        assert errors[-1]["retryable"] is False
        # The other session is untouched.
        await bystander.send_message(FRAME)
        assert (await receive_type(bystander, "ack"))["seq"] == 0


async def test_frame_over_the_size_limit(start_server: StartServer, transport: str) -> None:
    server: Server = await start_server(max_body_bytes=8000)
    async with connect(ws_url(server, transport)) as ws:
        await start(ws)
        await ws.send_message(b"\x00" * 8002)
        received, code = await until_closed(ws)
    assert code == 4413
    assert received[-1]["code"] == "payload_too_large"


async def test_idle_connection_is_closed(start_server: StartServer, transport: str) -> None:
    server: Server = await start_server(ws_idle_timeout_s=0.3)
    async with connect(ws_url(server, transport)) as ws:
        await start(ws)
        received, code = await until_closed(ws)
    assert code == 4408
    assert received[-1]["code"] == "idle_timeout"


async def test_resume_after_a_killed_connection_misses_nothing_and_doubles_nothing(
    server: Server, transport: str
) -> None:
    url = ws_url(server, transport)
    acked: dict[int, str] = {}
    async with connect(url) as ws:
        await start(ws)
        for n in range(6):
            await ws.send_message(frame(n))
        for _ in range(2):  # read two answers, then the connection dies
            ack = await receive_type(ws, "ack", skip=("metadata",))
            acked[ack["seq"]] = ack["chunk_id"]
    # Reconnect from the first seq this client has no ack for, and send from there again.
    resume_from = max(acked) + 1
    replayed: dict[int, str] = {}
    async with connect(url) as ws:
        started = await start(ws, resume_from_seq=resume_from)
        assert started["next_seq"] == resume_from
        for n in range(resume_from, 8):
            await ws.send_message(frame(n))
        answers = []
        while len(answers) < 8 - resume_from:
            message = await receive(ws)
            if message["type"] == "ack" and message.get("replayed"):
                replayed[message["seq"]] = message["chunk_id"]
            elif message["type"] == "ack":
                answers.append(message)
        await ws.send_message(json.dumps({"type": "end"}))
        _, code = await until_closed(ws)
    assert code == 1000
    # Chunks stored before the break were replayed, and their resend was not stored again.
    for answer in answers:
        if answer["seq"] in replayed:
            assert answer["duplicate"] and answer["chunk_id"] == replayed[answer["seq"]]
    assert [a["seq"] for a in answers] == list(range(resume_from, 8))
    async with server.client() as client:
        session = (await client.get("/sessions/alice")).json()["sessions"][0]
    assert [c["seq"] for c in session["chunks"]] == list(range(8))
    assert [c["offset_ms"] for c in session["chunks"]] == [100.0 * n for n in range(8)]
    for seq, chunk_id in acked.items():
        assert session["chunks"][seq]["chunk_id"] == chunk_id


async def test_watchers_see_http_uploads_and_other_sockets(server: Server, transport: str) -> None:
    url = ws_url(server, transport)
    async with connect(url) as watcher, connect(url) as sender, server.client() as client:
        await start(watcher, "shared")
        await start(sender, "shared")
        await sender.send_message(frame(1))
        ack = await receive_type(sender, "ack")
        from_socket = await receive_type(watcher, "metadata")
        assert from_socket["chunk_id"] == ack["chunk_id"]
        response = await client.post(
            "/upload", params=upload_params(session_id="shared"), content=wav()
        )
        from_http = await receive_type(watcher, "metadata")
        assert from_http["chunk_id"] == response.json()["chunk_id"]
        # The sender sees the HTTP chunk too, but not an echo of its own.
        await receive_type(sender, "metadata")  # its own chunk's metadata
        assert (await receive_type(sender, "metadata"))["chunk_id"] == from_http["chunk_id"]


async def test_a_saturated_pipeline_answers_overloaded(
    start_server: StartServer, transport: str
) -> None:
    server: Server = await start_server(
        ingress_queue=1, stage_queue=1, stage_workers=1, cpu_threads=1, inline_max_samples=0,
        ws_max_inflight=4, ws_overload_timeout_s=0.5, ws_flow_interval_s=0.05,
    )  # fmt: skip
    limiter = server.running.limiter
    await limiter.acquire_on_behalf_of("test")  # the only CPU thread: nothing moves
    try:
        async with connect(ws_url(server, transport)) as ws:
            await start(ws)
            for n in range(8):
                await ws.send_message(frame(n))
            received, code = await until_closed(ws)
    finally:
        limiter.release_on_behalf_of("test")
    assert code == 4429
    error = received[-1]
    assert error["code"] == "overloaded" and error["retryable"] is True
    flows = [m for m in received if m["type"] == "flow"]
    assert flows and all(f["queue_depth"] <= 1 and f["inflight"] <= 4 for f in flows)
    assert flows[-1]["lag_ms"] > 0 and flows[-1]["transcript_lag_ms"] == 0.0  # engine: none
    async with server.client() as client:
        metrics = (await client.get("/metrics")).text
    assert 'trio_audio_refused_total{reason="ws_wait_timeout"} 1' in metrics


async def test_a_reader_that_falls_behind_is_cut_off(
    start_server: StartServer, transport: str
) -> None:
    server: Server = await start_server(ws_queue=8)
    host, port = server.url.removeprefix("http://").split(":")
    if transport == "listener":
        port = server.running.ws_url.rsplit(":", 1)[1].split("/")[0]
    # A client with a tiny receive window that never reads: the server cannot push to it.
    sock = trio.socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    await sock.connect((host, int(port)))
    async with trio.open_nursery() as nursery:
        ws = await wrap_client_stream(nursery, trio.SocketStream(sock), host, "/ws")
        await start(ws, "busy")
        async with server.client() as client:
            for n in range(150):
                await client.post(
                    "/upload", params=upload_params(session_id="busy"), content=wav(200 + n)
                )
        received, code = await until_closed(ws)
        assert code == 4429
        assert received[-1]["code"] == "slow_reader"
        # Everything was stored all the same.
        async with server.client() as client:
            listing = (await client.get("/sessions/alice")).json()
        assert listing["sessions"][0]["chunk_count"] == 150
        nursery.cancel_scope.cancel()


async def test_many_concurrent_sessions(server: Server, transport: str) -> None:
    url = ws_url(server, transport)
    counts: dict[str, int] = {}

    async def one(i: int) -> None:
        async with connect(url) as ws:
            await start(ws, f"s{i}", user_id=f"user{i % 5}")  # 4 sessions per user
            for n in range(4):
                await ws.send_message(frame(n))
            for n in range(4):
                ack = await receive_type(ws, "ack", skip=("metadata",))
                assert ack["seq"] == n
            await ws.send_message(json.dumps({"type": "end"}))
            rest, code = await until_closed(ws)
            assert code == 1000
            end = next(m for m in rest if m["type"] == "session_end")
            counts[f"s{i}"] = end["summary"]["chunk_count"]

    async with trio.open_nursery() as nursery:
        for i in range(20):
            nursery.start_soon(one, i)
    assert counts == {f"s{i}": 4 for i in range(20)}


async def test_session_caps_per_user_and_overall(start_server: StartServer, transport: str) -> None:
    server: Server = await start_server(ws_max_sessions_per_user=2, ws_max_sessions=3)
    url = ws_url(server, transport)
    async with connect(url) as a, connect(url) as b, connect(url) as c, connect(url) as d:
        await start(a, "one")
        await start(b, "two")
        await c.send_message(json.dumps({"type": "start", "user_id": "alice",
                                         "session_id": "three", "format": FORMAT}))  # fmt: skip
        received, code = await until_closed(c)
        assert code == 4429 and "2 sessions open already" in received[-1]["message"]
        await start(d, "other", user_id="bob")  # another user still gets in
        async with connect(url) as e:
            await e.send_message(json.dumps({"type": "start", "user_id": "carol",
                                             "session_id": "x", "format": FORMAT}))  # fmt: skip
            received, code = await until_closed(e)
        assert code == 4429 and "3 sessions open" in received[-1]["message"]


async def test_shutdown_drains_sessions_and_closes_1001(
    start_server: StartServer, transport: str
) -> None:
    server: Server = await start_server()
    async with connect(ws_url(server, transport)) as ws:
        await start(ws)
        for n in range(3):
            await ws.send_message(frame(n))
        await receive_type(ws, "ack")
        stopping: Callable[[], Awaitable[None]] = server.stop
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stopping)
            received, code = await until_closed(ws)
    assert code == 1001
    assert [m["seq"] for m in received if m["type"] == "ack"] == [1, 2]


async def test_unknown_path_on_the_listener_is_closed_4404(server: Server) -> None:
    url = server.running.ws_url.replace("/ws", "/elsewhere")
    async with connect(url) as ws:
        _, code = await until_closed(ws)
    assert code == 4404
    with trio.fail_after(5):  # and nothing of it lingers to hold up the shutdown
        await server.stop()


async def test_shutdown_lets_go_of_a_socket_that_never_started(
    start_server: StartServer, transport: str
) -> None:
    server: Server = await start_server(ws_idle_timeout_s=60, drain_timeout_s=10)
    async with connect(ws_url(server, transport)) as ws:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.stop)
            _, code = await until_closed(ws)
        assert code == 1001
    assert server.done.is_set()


async def test_websocket_chunks_count_against_the_users_rate_limit(
    start_server: StartServer, transport: str
) -> None:
    server: Server = await start_server(rate_limit_per_s=0.1, rate_limit_burst=2)
    async with connect(ws_url(server, transport)) as ws:
        await start(ws)
        for n in range(2):  # the allowance
            await ws.send_message(frame(n))
            assert (await receive_type(ws, "ack", skip=("metadata",)))["seq"] == n
        await ws.send_message(frame(2))
        received, code = await until_closed(ws)
    assert code == 4429
    assert received[-1]["code"] == "rate_limited" and received[-1]["retryable"] is True


async def test_a_second_start_says_so(server: Server, transport: str) -> None:
    async with connect(ws_url(server, transport)) as ws:
        await start(ws)
        await start_again(ws)
        received, code = await until_closed(ws)
    assert code == 4400
    assert received[-1]["code"] == "bad_message" and "started" in received[-1]["message"]


async def start_again(ws: WebSocketConnection) -> None:
    message = {"type": "start", "user_id": "alice", "session_id": "live", "format": FORMAT}
    await ws.send_message(json.dumps(message))


@pytest.mark.parametrize("bad", ["not json", b"\x00\x01\x02", "second start"])
async def test_chunks_taken_before_a_bad_message_are_answered_before_the_error(
    server: Server, transport: str, bad: str | bytes
) -> None:
    async with connect(ws_url(server, transport)) as ws:
        await start(ws)
        for n in range(6):
            await ws.send_message(frame(n))
        if bad == "second start":
            await start_again(ws)
        else:
            await ws.send_message(bad)
        received, code = await until_closed(ws)
    assert code in (4400, 4415)
    assert received[-1]["type"] == "error"
    assert [m["seq"] for m in received if m["type"] == "ack"] == list(range(6))
    async with server.client() as client:
        listing = (await client.get("/sessions/alice")).json()
    assert listing["sessions"][0]["chunk_count"] == 6


async def test_a_watcher_needs_no_format(server: Server, transport: str) -> None:
    url = ws_url(server, transport)
    async with connect(url) as sender:
        await start(sender, "shared")
        await sender.send_message(frame(0))
        first = await receive_type(sender, "ack")
        async with connect(url) as watcher:
            watch = {"type": "start", "user_id": "alice", "session_id": "shared"}
            await watcher.send_message(json.dumps({**watch, "resume_from_seq": 0}))
            started = await receive(watcher)
            assert started["type"] == "started" and started["stored_next_seq"] == 1
            replayed = await receive_type(watcher, "ack")  # what was there before it came
            assert replayed["replayed"] and replayed["chunk_id"] == first["chunk_id"]
            await receive_type(watcher, "metadata")
            await sender.send_message(frame(1))
            second = await receive_type(sender, "ack", skip=("metadata",))
            live = await receive_type(watcher, "metadata")
            assert live["chunk_id"] == second["chunk_id"]
            await watcher.send_message(json.dumps({"type": "keepalive"}))
            await receive_type(watcher, "keepalive")
            await watcher.send_message(json.dumps({"type": "end"}))
            rest, code = await until_closed(watcher)
    assert code == 1000 and rest[-1]["summary"]["stored"] == 0


async def test_started_says_where_the_stored_session_ends(server: Server, transport: str) -> None:
    url = ws_url(server, transport)
    async with connect(url) as ws:
        started = await start(ws)
        assert (started["next_seq"], started["stored_next_seq"]) == (0, 0)
        for n in range(3):
            await ws.send_message(frame(n))
        for n in range(3):
            assert (await receive_type(ws, "ack", skip=("metadata",)))["seq"] == n
    async with connect(url) as ws:  # a client that lost its state: it resends from there
        started = await start(ws)
        assert (started["next_seq"], started["stored_next_seq"]) == (3, 3)
    async with connect(url) as ws:
        started = await start(ws, resume_from_seq=1)
        assert (started["next_seq"], started["stored_next_seq"]) == (1, 3)


@pytest.mark.parametrize("resume_from", [4, 2**40])
async def test_resume_past_the_stored_end_is_refused(
    server: Server, transport: str, resume_from: int
) -> None:
    url = ws_url(server, transport)
    async with connect(url) as ws:
        await start(ws)
        for n in range(3):
            await ws.send_message(frame(n))
        for _ in range(3):
            await receive_type(ws, "ack", skip=("metadata",))
    async with connect(url) as ws:
        message = {"type": "start", "user_id": "alice", "session_id": "live", "format": FORMAT}
        await ws.send_message(json.dumps({**message, "resume_from_seq": resume_from}))
        received, code = await until_closed(ws)
    assert code == 4400
    assert [m["type"] for m in received] == ["error"]
    assert received[0]["code"] == "invalid_field" and "resume from 3" in received[0]["message"]
    async with connect(url) as ws:  # from the stored end is fine: no gap
        assert (await start(ws, resume_from_seq=3))["next_seq"] == 3


async def test_a_full_disk_closes_4507_retryable_and_keeps_what_was_acknowledged(
    start_server: StartServer, transport: str
) -> None:
    files = FaultyFiles()
    server: Server = await start_server(files=files)
    url = ws_url(server, transport)
    acked = {}
    async with connect(url) as ws:
        await start(ws)
        for n in range(3):
            await ws.send_message(frame(n))
            ack = await receive_type(ws, "ack", skip=("metadata",))
            acked[ack["seq"]] = ack["chunk_id"]
        files.full = True  # a short write, then ENOSPC
        await ws.send_message(frame(3))
        received, code = await until_closed(ws)
    assert code == 4507
    error = received[-1]
    assert error["code"] == "insufficient_storage" and error["retryable"] is True
    assert not [m for m in received if m["type"] == "ack"]
    files.full = False  # room again: the client resumes where the store ends
    async with connect(url) as ws:
        started = await start(ws, resume_from_seq=3)
        assert started["stored_next_seq"] == 3
        await ws.send_message(frame(3))
        assert (await receive_type(ws, "ack", skip=("metadata",)))["seq"] == 3
    async with server.client() as client:
        chunks = (await client.get("/sessions/alice")).json()["sessions"][0]["chunks"]
    assert [c["seq"] for c in chunks] == [0, 1, 2, 3]
    assert {c["seq"]: c["chunk_id"] for c in chunks[:3]} == acked


async def test_http_uploads_and_websocket_chunks_share_one_allowance(
    start_server: StartServer, transport: str
) -> None:
    server: Server = await start_server(rate_limit_per_s=0.1, rate_limit_burst=3)
    async with server.client() as client:
        for n in range(2):
            response = await client.post("/upload", params=upload_params(), content=wav(300 + n))
            assert response.status_code == 201
    async with connect(ws_url(server, transport)) as ws:
        await start(ws)
        await ws.send_message(frame(0))  # the third of the user's three
        assert (await receive_type(ws, "ack", skip=("metadata",)))["seq"] == 0
        await ws.send_message(frame(1))
        received, code = await until_closed(ws)
    assert code == 4429 and received[-1]["code"] == "rate_limited"
    async with server.client() as client:  # and the socket's chunk counted over HTTP too
        response = await client.post("/upload", params=upload_params(), content=wav(900))
    assert response.status_code == 429


def host_port(server: Server, transport: str) -> tuple[str, int]:
    url = ws_url(server, transport).removeprefix("ws://").removesuffix("/ws")
    host, port = url.rsplit(":", 1)
    return host, int(port)


async def never_reading(server: Server, transport: str, session: str) -> trio.SocketStream:
    """A raw socket that opens a session, sends audio until the server stops taking it (its
    answers back up) or cuts it off, and never reads a byte after the handshake."""
    return await never_reading_at(*host_port(server, transport), session)


async def never_reading_at(host: str, port: int, session: str) -> trio.SocketStream:
    """``never_reading`` on the WebSocket endpoint at *host*:*port*."""
    sock = trio.socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    await sock.connect((host, port))
    stream = trio.SocketStream(sock)
    ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
    await stream.send_all(ws.send(Request(host=host, target="/ws")))
    while not any(isinstance(event, AcceptConnection) for event in ws.events()):
        ws.receive_data(await stream.receive_some(4096))
    message = {"type": "start", "user_id": session, "session_id": session, "format": FORMAT}
    await stream.send_all(ws.send(TextMessage(json.dumps(message))))
    for n in range(600):  # until the server stops taking audio from it, or cuts it off
        with trio.move_on_after(0.3) as blocked:
            try:
                await stream.send_all(ws.send(BytesMessage(frame(n))))
            except trio.BrokenResourceError:
                break
        if blocked.cancelled_caught:
            break
    return stream


async def test_clients_that_never_read_are_cut_off_and_free_their_slots(
    start_server: StartServer, transport: str
) -> None:
    server: Server = await start_server(
        ws_max_sessions=4, ws_queue=8, ws_send_timeout_s=0.3, drain_timeout_s=3
    )  # the drain: hypercorn holds a cut-off client's connection until it goes (see README)
    url = ws_url(server, transport)
    stuck: list[trio.SocketStream] = []

    async def hold_a_slot(i: int) -> None:
        stuck.append(await never_reading(server, transport, f"u{i}"))

    with trio.fail_after(30):  # without the cut-off they hold every slot for good
        async with trio.open_nursery() as nursery:
            for i in range(4):
                nursery.start_soon(hold_a_slot, i)
        while True:  # a normal client gets in once the slots are freed, and streams
            async with connect(url) as ws:
                message = {"type": "start", "user_id": "bob", "session_id": "s", "format": FORMAT}
                await ws.send_message(json.dumps(message))
                reply = await receive(ws)
                if reply["type"] == "started":
                    for n in range(3):
                        await ws.send_message(frame(n))
                    for n in range(3):
                        assert (await receive_type(ws, "ack", skip=("metadata",)))["seq"] == n
                    break
                assert reply["code"] == "overloaded" and "sessions open" in reply["message"]
            await trio.sleep(0.1)
        # Bob got in once one slot was freed; the other three are cut off in their own time.
        async with server.client() as client:
            for _ in range(200):  # polling the service's own /metrics, as a scraper does
                metrics = (await client.get("/metrics")).text
                if 'trio_audio_failed_total{code="slow_reader"} 4' in metrics:
                    break
                await trio.sleep(0.1)
    assert 'trio_audio_failed_total{code="slow_reader"} 4' in metrics
    for stream in stuck:
        await stream.aclose()


# -- fuzzing both transports of a real server ------------------------------------------------

VALID_START = st.fixed_dictionaries(
    {"type": st.just("start"), "user_id": st.just("fuzz"), "session_id": st.sampled_from("ab")},
    optional={
        "format": st.sampled_from([FORMAT, {"container": "wav"}, {"container": "mp3"}]),
        "resume_from_seq": st.one_of(st.integers(-1, 3), JSON_VALUES),
    },
)
CONTROL = st.fixed_dictionaries(
    {"type": st.one_of(st.sampled_from(["audio", "finalize", "keepalive", "start", "x"]),
                       st.text(max_size=8))},
    optional={
        "data": st.one_of(st.binary(max_size=64).map(lambda b: base64.b64encode(b).decode()),
                          JSON_VALUES),
        "seq": st.one_of(st.integers(-2, 2**60), JSON_VALUES),
        "format": JSON_VALUES,
    },
)  # fmt: skip
FRAMES = st.one_of(
    st.binary(max_size=64), st.just(b""), st.text(max_size=40), st.just(""),
    JSON_VALUES.map(json.dumps), CONTROL.map(json.dumps),
)  # fmt: skip
FIRST = st.one_of(VALID_START.map(json.dumps), start_messages().map(json.dumps), FRAMES)


async def exchange(url: str, frames: list[str | bytes]) -> tuple[list[dict[str, Any]], int | None]:
    """Send *frames* then ``end``; every message up to the close, and the close code."""
    async with connect(url) as ws:
        for message in [*frames, json.dumps({"type": "end"})]:
            try:
                await ws.send_message(message)
            except ConnectionClosed:
                break
        return await until_closed(ws)


@pytest.fixture
def served(spawn: type[Process]) -> Iterator[dict[str, str]]:
    """A real ``trio-audio serve`` process: its WebSocket URL per transport. At the end, its
    log must hold no traceback."""
    process = spawn("--asr-engine", "none")
    http = process.wait_ready()
    assert process.proc.stderr is not None
    while not (found := re.search(r"serving WebSocket on (\S+)", process.proc.stderr.readline())):
        pass
    yield {"listener": found.group(1), "http-port": http.replace("http://", "ws://") + "/ws"}
    code, log = process.stop()
    assert code == 0 and "Traceback" not in log, log


@settings(
    max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(first=FIRST, rest=st.lists(FRAMES, max_size=5))
def test_any_frames_get_a_typed_error_or_normal_processing_on_both_transports(
    served: dict[str, str], first: str | bytes, rest: list[str | bytes]
) -> None:
    for url in served.values():
        received, code = trio.run(exchange, url, [first, *rest])
        assert code == 1000 or (code is not None and 4400 <= code < 4600), (code, received)
        errors = [m for m in received if m["type"] == "error"]
        if code == 1000:
            assert not errors and received[-1]["type"] == "session_end", received
        else:
            error = received[-1]
            assert error["type"] == "error" and errors == [error], received
            assert error["code"] != "internal" and error["message"]
            assert isinstance(error["retryable"], bool)


async def test_deleting_chunks_and_the_session_tells_its_watchers(
    server: Server, transport: str
) -> None:
    async with connect(ws_url(server, transport)) as watcher, server.client() as client:
        watch = {"type": "start", "user_id": "alice", "session_id": "gone"}
        await watcher.send_message(json.dumps(watch))
        assert (await receive(watcher))["type"] == "started"
        ids = []
        for n in range(3):
            params = upload_params(session_id="gone", seq=n)
            response = await client.post("/upload", params=params, content=wav(seconds=0.1))
            assert response.status_code == 201, response.text
            ids.append(response.json()["chunk_id"])
            assert (await receive_type(watcher, "metadata"))["chunk_id"] == ids[-1]
        assert (await client.delete(f"/chunks/{ids[1]}")).status_code == 200
        one = await receive_type(watcher, "deleted")
        assert one == {"type": "deleted", "user_id": "alice", "session_id": "gone",
                       "chunk_ids": [ids[1]], "seqs": [1]}  # fmt: skip
        response = await client.delete("/sessions/alice", params={"session_id": "gone"})
        assert response.status_code == 200, response.text
        rest = await receive_type(watcher, "deleted")
        assert sorted(zip(rest["seqs"], rest["chunk_ids"], strict=True)) == [
            (0, ids[0]),
            (2, ids[2]),
        ]


async def test_seqs_stay_within_0_to_2_53_minus_1(server: Server) -> None:
    """The last seq a session can hold is 2^53-1 (exact in JSON): the server never gives one
    past it, a multipart upload that would run past it is refused whole, and a stream that
    reaches it is told the session is full; resuming at it still replays."""
    last = 2**53 - 1
    audio = {"headers": {"Content-Type": "audio/wav"}}
    async with server.client() as client:
        stored = await client.post("/upload", params=upload_params(session_id="full", seq=last),
                                   content=wav(440, 0.1), **audio)  # fmt: skip
        assert stored.status_code == 201 and stored.json()["seq"] == last
        more = await client.post("/upload", params=upload_params(session_id="full"),
                                 content=wav(450, 0.1), **audio)  # fmt: skip
        assert more.status_code == 400 and more.json()["code"] == "invalid_field", more.text
        assert "is full" in more.json()["detail"]
        files = [("file", (f"{n}.wav", wav(460 + n, 0.1), "audio/wav")) for n in range(2)]
        both = await client.post("/upload", params=upload_params(session_id="f2", seq=last),
                                 files=files)  # fmt: skip
        assert both.status_code == 400 and both.json()["code"] == "invalid_field", both.text
        assert (await client.get("/sessions/alice", params={"session_id": "f2"})).json()[
            "sessions"
        ] == []
    async with connect(ws_url(server, "listener")) as ws:
        started = await start(ws, session="full", resume_from_seq=last)
        assert started["next_seq"] == last
        replayed = await receive_type(ws, "ack", skip=("metadata",))
        assert replayed["seq"] == last and replayed["replayed"]
    async with connect(ws_url(server, "listener")) as ws:
        started = await start(ws, session="full")
        assert started["stored_next_seq"] == last + 1  # one past the end: nothing fits
        await ws.send_message(frame(1))
        received, code = await until_closed(ws)
    errors = [m for m in received if m["type"] == "error"]
    assert code == 4400 and errors and errors[0]["code"] == "invalid_field", received
    assert "is full" in errors[0]["message"]


async def test_started_names_the_missing_seqs_below_stored_next_seq(server: Server) -> None:
    async with server.client() as client:
        for session, seqs in (("holes", [0, 1, 3, 7]), ("far", [0, 1000])):
            for seq in seqs:
                response = await client.post(
                    "/upload", params=upload_params(session_id=session, seq=seq),
                    content=wav(300 + seq, 0.05), headers={"Content-Type": "audio/wav"},
                )  # fmt: skip
                assert response.status_code == 201, response.text
    async with connect(ws_url(server, "listener")) as ws:
        started = await start(ws, session="holes")
        assert started["stored_next_seq"] == 8
        assert started["missing_seqs"] == [2, 4, 5, 6] and started["missing_count"] == 4
    async with connect(ws_url(server, "http-port")) as ws:
        started = await start(ws, session="far")
        assert started["missing_count"] == 999  # named: the highest 100 of them
        assert started["missing_seqs"] == list(range(900, 1000))
    async with connect(ws_url(server, "listener")) as ws:
        started = await start(ws, session="new")
        assert started["missing_seqs"] == [] and started["missing_count"] == 0
