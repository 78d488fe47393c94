"""Slow uploaders in a process of their own: ``python -m tests.slow_clients URL N``.

Each of N clients sends an upload's headers, then trickles its body (256 bytes every 0.1 s)
until the server answers, reads the whole answer and hangs up at once, as a real client does.
A process of its own makes the hang-up race the server's last writes as it does in the field.
Prints a JSON object: status line -> count.
"""

from __future__ import annotations

import json
import sys
from collections import Counter

import trio

from .audio_samples import wav


async def one(host: str, port: int, statuses: Counter[str]) -> None:
    body = wav(440, 0.25)  # 8 KB: trickled over 3.2 s
    head = (b"POST /upload?user_id=alice&session_id=slow HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: audio/wav\r\nContent-Length: %d\r\n\r\n" % len(body))  # fmt: skip
    stream = await trio.open_tcp_stream(host, port)
    response = b""
    async with trio.open_nursery() as nursery:

        async def trickle() -> None:
            try:
                await stream.send_all(head)
                for i in range(0, len(body), 256):
                    await stream.send_all(body[i : i + 256])
                    await trio.sleep(0.1)
            except trio.BrokenResourceError:
                pass

        nursery.start_soon(trickle)
        with trio.move_on_after(20):
            try:
                while not response.endswith(b"}"):  # the whole problem document
                    data = await stream.receive_some()
                    if not data:
                        break
                    response += data
            except trio.BrokenResourceError:
                pass
        nursery.cancel_scope.cancel()
    await stream.aclose()
    statuses[response.split(b"\r\n", 1)[0].decode("latin-1")] += 1


async def main(url: str, count: int) -> None:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    statuses: Counter[str] = Counter()
    async with trio.open_nursery() as nursery:
        for _ in range(count):
            nursery.start_soon(one, host, int(port), statuses)
    print(json.dumps(statuses))


if __name__ == "__main__":
    trio.run(main, sys.argv[1], int(sys.argv[2]))
