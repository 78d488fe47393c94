"""Shutdown is prompt and answers everyone.

A real ``trio-audio serve`` process with keep-alive clients in every state when SIGTERM
arrives: requests it has taken get their answers (201, with ``Connection: close``), idle
connections are closed at once, and the process exits 0 in well under two seconds. The
front door's refusal of requests that arrive while draining is checked under hypercorn in
this process, where the test decides when the drain starts. Ctrl-C reaches the ASR worker
processes too: they print nothing and leave when their parent is done with them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import trio
from quart import request
from quart_trio import QuartTrio

from trio_audio.asr.engine import EngineOptions
from trio_audio.asr.protocol import HEADER, decode_body, encode_frame
from trio_audio.web.asgi import FrontDoor

from .processes import Process
from .test_keepalive import BODY, HEALTH, UPLOAD, WAIT_S, RawConnection, head, serve_behind_door

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
