"""The load generator: HTTP uploads or WebSocket streams against a running server.

Run as its own process (``python -m trio_audio.bench.loadgen SPEC.json OUT.json``) so that it
does not share a GIL with the orchestrator that samples the server; ``runner`` starts it.

- HTTP, closed loop: ``concurrency`` workers, each on its own keep-alive connection, upload
  back to back until the time is up.
- HTTP, open loop: a pacer issues ``rate`` requests/s on a fixed schedule to ``concurrency``
  workers; a tick that finds no worker free is counted ``not_sent`` (the generator, not the
  server, was short), and latency runs from the scheduled time, so a slow server cannot hide
  its queueing (no coordinated omission).
- WebSocket: ``concurrency`` connections streaming ``frame_ms`` frames of 16 kHz PCM, at most
  ``window`` unacknowledged per connection (closed loop), or ``rate`` frames/s per connection
  (open loop). Latency is frame sent (or scheduled) to ``ack``.

Every outcome is a record ``[t, latency_s, status, chunk_id, body]``: ``t`` seconds from the
start, ``status`` 201/200 acknowledged, 503 refused (``overloaded``), 0 failed (connection
error, timeout, or a frame never answered), anything else as the server said; ``body`` indexes
the list of bodies whose SHA-256 is in the output, so every acknowledgement can be checked.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import attrs
import trio
from trio_websocket import ConnectionClosed, HandshakeError, open_websocket_url

from . import audio
from .http1 import Connection, HttpError, field, request_bytes

Record = tuple[float, float, int, str, int]


@attrs.frozen(kw_only=True)
class Spec:
    """One load: what to send, to where, how hard, for how long."""

    kind: str = "http"  # http | ws
    url: str = ""  # http://host:port (http) or ws://host:port/ws (ws)
    mode: str = "closed"  # closed | open
    concurrency: int = 32  # workers (http) or connections (ws)
    rate: float = 0.0  # open loop: requests/s (http, in all) or frames/s per connection (ws)
    duration_s: float = 5.0
    chunk_s: float = 1.0  # seconds of audio per HTTP upload
    frame_ms: float = 100.0  # per WebSocket frame
    window: int = 32  # unacknowledged frames per WebSocket (closed loop)
    metadata_every: int = 1  # WebSocket: ask for the metadata of every Nth seq (start message)
    bodies: int = 32  # distinct bodies, sent round robin
    users: int = 64  # spread uploads over this many user ids (per-user rate limits)
    run_id: str = "bench"
    timeout_s: float = 30.0

    def to_json(self) -> dict[str, Any]:
        return attrs.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Spec:
        return cls(**data)


@attrs.define
class Outcome:
    """What a load did, as the client saw it."""

    spec: Spec
    records: list[Record] = attrs.field(factory=list)
    checksums: list[str] = attrs.field(factory=list)
    elapsed_s: float = 0.0
    not_sent: int = 0
    connections: int = 0
    cpu_s: float = 0.0  # the generator's own CPU time
    errors: dict[str, int] = attrs.field(factory=dict)

    def error(self, what: str) -> None:
        self.errors[what] = self.errors.get(what, 0) + 1

    def to_json(self) -> dict[str, Any]:
        return {"spec": self.spec.to_json(), "records": self.records,
                "checksums": self.checksums, "elapsed_s": self.elapsed_s,
                "not_sent": self.not_sent, "connections": self.connections,
                "cpu_s": self.cpu_s, "errors": self.errors}  # fmt: skip

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Outcome:
        records = [tuple(r) for r in data["records"]]
        return cls(Spec.from_json(data["spec"]), records, data["checksums"],
                   data["elapsed_s"], data["not_sent"], data["connections"],
                   data["cpu_s"], data["errors"])  # fmt: skip


# -- HTTP ------------------------------------------------------------------------------------


async def run_http(spec: Spec) -> Outcome:
    bodies = [audio.wav(spec.chunk_s, i) for i in range(spec.bodies)]
    out = Outcome(spec, checksums=[audio.checksum(b) for b in bodies])
    url = urlsplit(spec.url)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    hostport = f"{host}:{port}"
    heads = []
    for worker in range(spec.concurrency):
        target = (f"/upload?user_id=bench{worker % spec.users}"
                  f"&session_id={spec.run_id}-{worker}")  # fmt: skip
        heads.append(request_bytes("POST", target, hostport, b"", "audio/wav")[:-4])
    lengths = [f"\r\nContent-Length: {len(b)}\r\n\r\n".encode() for b in bodies]
    # Head minus its empty Content-Length, then the body's own: one bytes object per request.
    heads = [h[: h.rfind(b"\r\nContent-Length")] for h in heads]
    start = trio.current_time()
    deadline = start + spec.duration_s
    connections = [Connection(host, port) for _ in range(spec.concurrency)]

    async def once(worker: int, n: int, scheduled: float) -> None:
        index = n % spec.bodies
        data = heads[worker] + lengths[index] + bodies[index]
        status, chunk_id = 0, ""
        with trio.move_on_after(spec.timeout_s) as scope:
            try:
                response = await connections[worker].request(data)
            except HttpError as exc:
                out.error(str(exc).split(":")[0])
            else:
                status = response.status
                if status in (200, 201):
                    chunk_id = field(response.body, b"chunk_id") or ""
        if scope.cancelled_caught:
            await connections[worker].aclose()
            out.error("timeout")
        now = trio.current_time()
        out.records.append((scheduled - start, now - scheduled, status, chunk_id, index))

    async with trio.open_nursery() as nursery:
        if spec.mode == "closed":

            async def closed(worker: int) -> None:
                n = worker
                while (now := trio.current_time()) < deadline:
                    await once(worker, n, now)
                    n += spec.concurrency

            for worker in range(spec.concurrency):
                nursery.start_soon(closed, worker)
        else:
            ticks_send, ticks = trio.open_memory_channel[tuple[int, float]](0)

            async def open_worker(worker: int, ticks: trio.MemoryReceiveChannel[Any]) -> None:
                async with ticks:
                    async for n, scheduled in ticks:
                        await once(worker, n, scheduled)

            async with ticks:
                for worker in range(spec.concurrency):
                    nursery.start_soon(open_worker, worker, ticks.clone())
            async with ticks_send:
                await pace(spec, start, deadline, ticks_send.send_nowait, out)
    out.elapsed_s = trio.current_time() - start
    out.connections = sum(c.opened for c in connections)
    for connection in connections:
        await connection.aclose()
    return out


async def pace(
    spec: Spec, start: float, deadline: float, issue: Callable[[tuple[int, float]], None],
    out: Outcome,
) -> None:  # fmt: skip
    """Issue tick n at ``start + n / rate`` until *deadline*; a tick no one takes is not sent."""
    total = math.floor(spec.duration_s * spec.rate)
    for n in range(total):
        scheduled = start + n / spec.rate
        await trio.sleep_until(scheduled)
        if scheduled >= deadline:
            break
        try:
            issue((n, scheduled))
        except trio.WouldBlock:
            out.not_sent += 1


# -- WebSocket -------------------------------------------------------------------------------


async def run_ws(spec: Spec) -> Outcome:
    frames = [audio.pcm16(spec.frame_ms / 1000, i) for i in range(spec.bodies)]
    out = Outcome(spec, checksums=[audio.checksum(f) for f in frames])
    start = trio.current_time()
    deadline = start + spec.duration_s

    async def connection(index: int) -> None:
        sent: dict[int, tuple[float, int]] = {}  # seq -> (sent or scheduled time, body)
        try:
            with trio.fail_after(spec.duration_s + spec.timeout_s):
                await stream(index, sent)
        except (ConnectionClosed, HandshakeError, OSError, trio.TooSlowError) as exc:
            out.error(type(exc).__name__)
        now = trio.current_time()
        for seq in sorted(sent):  # never answered: the sender knows it was not stored
            when, body = sent.pop(seq)
            out.records.append((when - start, now - when, 0, "", body))

    async def stream(index: int, sent: dict[int, tuple[float, int]]) -> None:
        session = f"{spec.run_id}-ws{index}"
        start_message: dict[str, Any] = {"type": "start", "user_id": f"bench{index % spec.users}",
                         "session_id": session, "format": {"encoding": "pcm_s16le",
                         "sample_rate": audio.RATE, "channels": 1}}  # fmt: skip
        if spec.metadata_every != 1:
            start_message["metadata_every"] = spec.metadata_every
        async with open_websocket_url(spec.url, max_message_size=2**24) as ws:
            out.connections += 1
            await ws.send_message(json.dumps(start_message))
            started = json.loads(await ws.get_message())
            if started.get("type") != "started":
                out.error(f"start: {started.get('code', started.get('type'))}")
                return
            first_seq: int = started["next_seq"]
            room = trio.Semaphore(spec.window)
            finished = trio.Event()

            def settle(seq: int, status: int, chunk_id: str = "") -> None:
                when, body = sent.pop(seq)
                now = trio.current_time()
                out.records.append((when - start, now - when, status, chunk_id, body))
                if spec.mode == "closed":
                    room.release()

            async def receive() -> None:
                while True:
                    message = json.loads(await ws.get_message())
                    kind = message.get("type")
                    if kind == "ack" and message["seq"] in sent:
                        status = 200 if message.get("duplicate") else 201
                        settle(message["seq"], status, message["chunk_id"])
                    elif kind == "error":
                        status = 503 if message.get("code") == "overloaded" else 0
                        out.error(f"ws {message.get('code')}")
                        for seq in sorted(sent):
                            settle(seq, status)
                        return
                    elif kind == "session_end":
                        finished.set()
                        return

            async with trio.open_nursery() as nursery:
                nursery.start_soon(receive)
                n = 0
                while True:
                    if spec.mode == "closed":
                        await room.acquire()
                        when = trio.current_time()
                    else:
                        when = start + n / spec.rate
                        await trio.sleep_until(when)
                    if when >= deadline:
                        break
                    body = (index + n) % spec.bodies
                    sent[first_seq + n] = (when, body)
                    await ws.send_message(frames[body])
                    n += 1
                await ws.send_message(json.dumps({"type": "end"}))
                with trio.move_on_after(spec.timeout_s):
                    await finished.wait()
                nursery.cancel_scope.cancel()

    async with trio.open_nursery() as nursery:
        for index in range(spec.concurrency):
            nursery.start_soon(connection, index)
    out.elapsed_s = trio.current_time() - start
    return out


async def run(spec: Spec) -> Outcome:
    cpu = time.process_time()
    out = await (run_http(spec) if spec.kind == "http" else run_ws(spec))
    out.cpu_s = time.process_time() - cpu
    return out


def main(argv: list[str]) -> int:
    spec_path, out_path = argv
    with open(spec_path) as f:
        spec = Spec.from_json(json.load(f))
    outcome = trio.run(run, spec)
    with open(out_path, "w") as f:
        json.dump(outcome.to_json(), f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
