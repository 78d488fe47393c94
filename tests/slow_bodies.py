"""Slow-body attackers in a process of their own: ``python -m tests.slow_bodies URL N GAP S``.

Each of N connections, again and again for S seconds: an upload that declares a 16 MiB body
and sends 1,000 bytes every GAP seconds until the server answers (as the issue's attackers
did, 1,000 bytes every 5 s), then a new connection. Prints a JSON object: status line ->
count ("reset" for a connection dropped without an answer).
"""

from __future__ import annotations

import json
import sys
from collections import Counter

import trio

HEAD = (b"POST /upload?user_id=slow&session_id=s HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: audio/wav\r\nContent-Length: 16777216\r\n\r\n")  # fmt: skip


async def attacker(host: str, port: int, gap: float, answers: Counter[str]) -> None:
    while True:
        stream = await trio.open_tcp_stream(host, port)
        try:
            await stream.send_all(HEAD)
            answer = b""
            while not answer:
                with trio.move_on_after(gap):
                    answer = await stream.receive_some()
                if not answer:
                    await stream.send_all(bytes(1000))
            answers[answer.split(b"\r\n", 1)[0].decode("latin-1").strip()] += 1
        except trio.BrokenResourceError:
            answers["reset"] += 1
        finally:
            await stream.aclose()


async def main(url: str, count: int, gap: float, seconds: float) -> None:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    answers: Counter[str] = Counter()
    with trio.move_on_after(seconds):
        async with trio.open_nursery() as nursery:
            for _ in range(count):
                nursery.start_soon(attacker, host, int(port), gap, answers)
    print(json.dumps(answers))


if __name__ == "__main__":
    trio.run(main, sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]))
