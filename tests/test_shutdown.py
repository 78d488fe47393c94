"""Shutdown is prompt and answers everyone.

A real ``trio-audio serve`` process with keep-alive clients in every state when SIGTERM
arrives: requests it has taken get their answers (201, with ``Connection: close``), idle
connections are closed at once, and the process exits 0 in well under two seconds. The
front door's refusal of requests that arrive while draining is checked under hypercorn in
this process, where the test decides when the drain starts. Ctrl-C reaches the ASR worker
processes too: they print nothing and leave when their parent is done with them.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import trio
from quart import request
from quart_trio import QuartTrio
from trio_websocket import ConnectionClosed

from trio_audio.asr.engine import EngineOptions
from trio_audio.asr.protocol import HEADER, decode_body, encode_frame
from trio_audio.web.asgi import FrontDoor

from .processes import Process
from .test_keepalive import BODY, HEALTH, UPLOAD, WAIT_S, RawConnection, head, serve_behind_door
from .test_ws import FORMAT, connect, frame, never_reading_at

PROMPT_S = 2.0  # the whole drain, signal to exit, when nothing is stuck


async def started(spawn: type[Process], *args: str) -> Process:
    server = spawn("--asr-engine", "none", *args)
    await trio.to_thread.run_sync(server.wait_ready)
    return server


async def exited(server: Process, within: float) -> tuple[int, str]:
    """The exit status and the rest of the log, once the process ends within *within* s."""
    with trio.fail_after(within):
        code = await trio.to_thread.run_sync(server.proc.wait, abandon_on_cancel=True)
    _, rest = server.proc.communicate()
    return code, "".join(server.log) + rest


async def keep_alive(url: str, seq: int) -> RawConnection:
    """A connection that has had one upload stored, and stays open."""
    conn = await RawConnection.open(url)
    await conn.send(head("POST", f"{UPLOAD}&seq={seq}", len(BODY), Content_Type="audio/wav"))
    await conn.send(BODY)
    response = await conn.response()
    assert response is not None and response.status == 201, response
    return conn


async def test_sigterm_answers_what_it_took_closes_idle_connections_and_exits_fast(
    spawn: type[Process],
) -> None:
    server = await started(spawn)
    busy = [await keep_alive(server.url, seq) for seq in range(6)]
    idle = [await keep_alive(server.url, seq) for seq in range(6, 9)]
    # The next upload on each busy connection: the server has taken it once it says
    # 100 Continue, and then half its body is on the way when the signal comes.
    half = len(BODY) // 2
    for seq, conn in enumerate(busy, start=100):
        target = f"{UPLOAD}&seq={seq}"
        await conn.send(head("POST", target, len(BODY), Content_Type="audio/wav",
                             Expect="100-continue"))  # fmt: skip
        going_on = await conn.response()
        assert going_on is not None and going_on.status == 100
        await conn.send(BODY[:half])

    signalled = trio.current_time()
    server.proc.send_signal(signal.SIGTERM)
    for conn in idle:
        assert await conn.closed()
    idle_closed = trio.current_time() - signalled
    for conn in busy:
        await conn.send(BODY[half:])
        answer = await conn.response()
        assert answer is not None and answer.status == 201, answer
        assert answer.headers["connection"] == "close"
        assert json.loads(answer.body)["seq"] >= 100
        assert await conn.closed()
    code, log = await exited(server, within=PROMPT_S)
    assert code == 0, log
    assert trio.current_time() - signalled < PROMPT_S
    assert idle_closed < 1.0
    assert "the drain passed" not in log
    assert f"stopped; {9 + 6} chunks stored" in log


async def test_an_idle_keep_alive_connection_does_not_hold_shutdown(spawn: type[Process]) -> None:
    """It used to hold it for the whole drain deadline (15 s)."""
    server = await started(spawn, "--drain-timeout-s", "30")
    conn = await RawConnection.open(server.url)
    await conn.send(HEALTH)
    response = await conn.response()
    assert response is not None and response.status == 200
    signalled = trio.current_time()
    server.proc.send_signal(signal.SIGHUP)
    try:
        assert await conn.closed()
    except trio.TooSlowError:
        server.proc.kill()
        _, log = await exited(server, within=WAIT_S)
        raise AssertionError(f"the idle connection outlived the drain's start:\n{log}") from None
    code, log = await exited(server, within=PROMPT_S)
    assert code == 0, log
    assert "SIGHUP received: draining" in log
    assert trio.current_time() - signalled < PROMPT_S


async def test_a_second_signal_stops_a_stuck_drain_at_once(spawn: type[Process]) -> None:
    server = await started(spawn, "--drain-timeout-s", "30")
    conn = await RawConnection.open(server.url)
    await conn.send(head("POST", UPLOAD, len(BODY), Content_Type="audio/wav",
                         Expect="100-continue"))  # fmt: skip
    going_on = await conn.response()
    assert going_on is not None and going_on.status == 100
    await conn.send(BODY[:100])  # and never the rest: the drain waits for this request
    server.proc.send_signal(signal.SIGTERM)
    with trio.move_on_after(1.0):
        await trio.to_thread.run_sync(server.proc.wait, abandon_on_cancel=True)
    assert server.proc.poll() is None, "the drain did not wait for a request it had taken"
    signalled = trio.current_time()
    server.proc.send_signal(signal.SIGTERM)
    _, log = await exited(server, within=PROMPT_S)
    assert "SIGTERM received again: stopping now" in log
    assert trio.current_time() - signalled < PROMPT_S, log
    await conn.aclose()


async def test_a_body_that_never_ends_holds_exit_only_until_the_drain_deadline(
    spawn: type[Process],
) -> None:
    server = await started(spawn, "--drain-timeout-s", "2")
    conn = await RawConnection.open(server.url)
    await conn.send(head("POST", UPLOAD, len(BODY), Content_Type="audio/wav"))
    await conn.send(BODY[:100])  # and never the rest
    signalled = trio.current_time()
    server.proc.send_signal(signal.SIGTERM)
    code, log = await exited(server, within=2 + PROMPT_S)
    assert code == 0, log
    assert "the drain passed its 2 s deadline" in log
    assert trio.current_time() - signalled < 2 + PROMPT_S
    await conn.aclose()


def address(server: Process) -> tuple[str, int]:
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


async def test_a_websocket_client_on_the_http_port_that_stops_reading_cannot_outlast_the_drain(
    spawn: type[Process],
) -> None:
    """Hypercorn writes to a socket inside a shield: such a client used to hold exit forever
    (past the drain deadline); now the deadline closes its socket."""
    server = await started(spawn, "--drain-timeout-s", "2")
    stuck = await never_reading_at(*address(server), "stuck")
    signalled = trio.current_time()
    server.proc.send_signal(signal.SIGTERM)
    try:
        code, log = await exited(server, within=2 + PROMPT_S)
    except trio.TooSlowError:
        server.proc.kill()
        raise AssertionError("a client that stopped reading held the process") from None
    assert code == 0, log
    assert trio.current_time() - signalled < 2 + PROMPT_S
    await stuck.aclose()


async def test_a_second_signal_exits_at_once_past_a_client_that_stopped_reading(
    spawn: type[Process],
) -> None:
    server = await started(spawn, "--drain-timeout-s", "30")
    stuck = await never_reading_at(*address(server), "stuck")
    server.proc.send_signal(signal.SIGTERM)
    with trio.move_on_after(1.0):
        await trio.to_thread.run_sync(server.proc.wait, abandon_on_cancel=True)
    assert server.proc.poll() is None, "the drain did not wait for the session it had"
    signalled = trio.current_time()
    server.proc.send_signal(signal.SIGTERM)
    try:
        _, log = await exited(server, within=PROMPT_S)
    except trio.TooSlowError:
        server.proc.kill()
        raise AssertionError("the second signal did not stop the process") from None
    assert "SIGTERM received again: stopping now" in log
    assert trio.current_time() - signalled < PROMPT_S, log
    await stuck.aclose()


async def test_under_mixed_load_every_client_is_answered_and_the_process_exits_fast(
    spawn: type[Process],
) -> None:
    """16 HTTP clients uploading on keep-alive connections and 4 WebSocket streams (two on
    each transport) when SIGTERM comes: every request gets its answer (a 503 always with
    ``Connection: close``, then the close) or finds its connection closed cleanly, every
    stream is closed with 1001 (or 1000), and the process is gone within two seconds."""
    server = await started(spawn)
    assert server.proc.stderr is not None
    while not (found := re.search(r"serving WebSocket on (\S+)", server.proc.stderr.readline())):
        pass
    ws_urls = [found.group(1), server.url.replace("http://", "ws://") + "/ws"] * 2
    statuses: Counter[str] = Counter()  # of every answer
    endings: Counter[str] = Counter()  # how each uploader's connection ended
    close_codes: list[int | None] = []
    going = trio.Event()
    warmed = [trio.Event() for _ in range(16 + 4)]

    async def uploader(i: int) -> None:
        conn = await RawConnection.open(server.url)
        for seq in itertools.count():
            target = f"/upload?user_id=h{i}&session_id=s&seq={seq}"
            try:
                await conn.send(head("POST", target, len(BODY), Content_Type="audio/wav") + BODY)
                answer = await conn.response()  # within WAIT_S: no request hangs
            except trio.BrokenResourceError:
                answer = None  # closed under a request not yet taken: clean, nothing stored
            if seq == 1:
                warmed[i].set()
            if answer is None:
                endings["closed"] += 1
                break
            statuses[str(answer.status)] += 1
            assert answer.status in (201, 503), answer
            if answer.status == 503 and not going.is_set():
                continue  # refused for load before the signal: the connection stays usable
            if answer.status == 503 or (going.is_set() and "connection" in answer.headers):
                assert answer.headers["connection"] == "close", answer
                assert await conn.closed()
                endings[f"{answer.status} + close"] += 1
                break
        await conn.aclose()

    async def streamer(i: int, url: str) -> None:
        async with connect(url) as ws:
            await ws.send_message(json.dumps({"type": "start", "user_id": f"w{i}",
                                              "session_id": "s", "format": FORMAT}))  # fmt: skip
            try:
                for n in itertools.count():
                    await ws.send_message(frame(n))
                    with trio.fail_after(WAIT_S):
                        while json.loads(await ws.get_message())["type"] != "ack":
                            pass
                    if n == 2:
                        warmed[16 + i].set()
            except ConnectionClosed as closed:
                close_codes.append(closed.reason.code)

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            for i in range(16):
                nursery.start_soon(uploader, i)
            for i, url in enumerate(ws_urls):
                nursery.start_soon(streamer, i, url)
            for event in warmed:
                await event.wait()
            going.set()
            signalled = trio.current_time()
            server.proc.send_signal(signal.SIGTERM)
            code, log = await exited(server, within=PROMPT_S)
            took = trio.current_time() - signalled
    assert code == 0, log
    assert took < PROMPT_S and "the drain passed" not in log, log
    assert statuses["201"] >= 16 and set(statuses) <= {"201", "503"}, statuses
    assert endings.total() == 16, endings
    assert sorted(close_codes) in ([1001] * 4, [1000] + [1001] * 3), close_codes


async def test_requests_arriving_while_draining_get_503_and_connection_close(
    nursery: trio.Nursery,
) -> None:
    """The front door under hypercorn, a quart-trio app behind it, the drain started by hand."""
    app = QuartTrio("plain")
    entered, release = trio.Event(), trio.Event()

    @app.post("/echo")
    async def echo() -> tuple[dict[str, int], int]:
        return {"bytes": len(await request.get_data())}, 201

    @app.get("/readyz")
    async def readyz() -> tuple[dict[str, str], int]:
        return {"status": "draining" if shutdown.is_set() else "ready"}, 503

    @app.get("/slow")
    async def slow() -> dict[str, str]:
        entered.set()
        await release.wait()
        return {"status": "done"}

    shutdown = trio.Event()
    url = await serve_behind_door(nursery, FrontDoor(app, shutdown, retry_after_s=3))

    taken = await RawConnection.open(url)
    await taken.send(head("GET", "/slow"))
    with trio.fail_after(5):
        await entered.wait()
    later = await RawConnection.open(url)
    await later.send(head("POST", "/echo", len(BODY)) + BODY)
    answer = await later.response()
    assert answer is not None and answer.status == 201

    shutdown.set()
    # A request that arrives now: refused, told to go elsewhere, and its body is read first.
    await later.send(head("POST", "/echo", len(BODY)))
    refused = await later.response()
    assert refused is not None and refused.status == 503
    assert refused.headers["connection"] == "close"
    assert refused.headers["retry-after"] == "3"
    problem = json.loads(refused.body)
    assert problem["code"] == "overloaded" and problem["status"] == 503
    await later.send(BODY)
    assert await later.closed()
    # A probe still reaches the app, so a load balancer sees the drain (and then the close).
    probe = await RawConnection.open(url)
    await probe.send(head("GET", "/readyz"))
    seen = await probe.response()
    assert seen is not None and json.loads(seen.body) == {"status": "draining"}
    assert seen.headers["connection"] == "close"
    # The request taken before is answered, and its connection then closes.
    release.set()
    done = await taken.response()
    assert done is not None and done.status == 200
    assert done.headers["connection"] == "close"
    assert await taken.closed()


def read_exactly(stream: object, n: int) -> bytes:
    data = stream.read(n)  # type: ignore[attr-defined]
    assert isinstance(data, bytes) and len(data) == n
    return data


def test_ctrl_c_leaves_asr_workers_quiet_until_their_parent_closes_them(tmp_path: Path) -> None:
    """SIGINT to the worker's process group (a terminal's Ctrl-C): no traceback, no exit."""
    worker = subprocess.Popen(
        [sys.executable, "-m", "trio_audio.asr.worker"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        start_new_session=True,
    )  # fmt: skip
    assert worker.stdin is not None and worker.stdout is not None
    try:
        init = {"op": "init", "options": EngineOptions().to_dict()}
        worker.stdin.write(encode_frame(init))
        worker.stdin.flush()
        (length,) = HEADER.unpack(read_exactly(worker.stdout, HEADER.size))
        assert decode_body(read_exactly(worker.stdout, length))["ok"]
        os.killpg(worker.pid, signal.SIGINT)
        # Still serving: a request after the interrupt is answered.
        silence = bytes(16000)  # half a second of 16 kHz 16-bit silence
        worker.stdin.write(encode_frame({"op": "decode", "pcm": silence, "offset_ms": 0.0}))
        worker.stdin.flush()
        (length,) = HEADER.unpack(read_exactly(worker.stdout, HEADER.size))
        assert decode_body(read_exactly(worker.stdout, length))["ok"]
        worker.stdin.close()
        assert worker.wait(timeout=30) == 0
    finally:
        if worker.poll() is None:
            worker.kill()
    assert worker.stderr is not None
    err = worker.stderr.read().decode(errors="replace")
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err


BLOCKED_DRAIN = """
import os, signal, time, trio
from trio_audio.service import watch_signals

async def main():
    shutdown = trio.Event()
    async with trio.open_nursery() as root:
        async with trio.open_nursery() as service:
            root.start_soon(watch_signals, shutdown, service.cancel_scope, 30.0)
            await trio.sleep(0.2)
            print("blocking", flush=True)
            await trio.to_thread.run_sync(time.sleep, 60)  # cannot be cancelled
        root.cancel_scope.cancel()

trio.run(main)
"""


def test_a_second_signal_ends_the_process_even_when_something_cannot_be_cancelled() -> None:
    """A thread mid-call is waited for by any cancellation: the second signal gives it
    ``HARD_STOP_S`` (1 s), then the process leaves as a kill would, with 128 + the signal."""
    child = subprocess.Popen([sys.executable, "-c", BLOCKED_DRAIN], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "blocking"
        child.send_signal(signal.SIGTERM)
        with pytest.raises(subprocess.TimeoutExpired):
            child.wait(timeout=0.5)  # draining: waiting for the thread
        child.send_signal(signal.SIGTERM)
        code = child.wait(timeout=PROMPT_S + 1)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert code == 128 + signal.SIGTERM
    assert child.stderr is not None
    assert "still not stopped 1 s after the second signal" in child.stderr.read()
