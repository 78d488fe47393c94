"""Publishes that wait for their PubAck, sent and answered without a hop per publish.

nats-py's ``js.publish`` and ``request`` each make an asyncio future, a reply inbox token and
a ``wait_for`` timer, and every caller from trio adds a hop into the loop (an asyncio task
and its wake-ups, each a trip through trio-asyncio's queue). A node publishes for every
write, so that per-publish overhead is much of what a cluster node spends beyond the local
log. Here instead:

- one subscription, made once, takes every PubAck on ``<inbox>.<n>`` (a shared reply
  subject, ``n`` a counter) and wakes the trio task that waits for ``n`` directly (trio-asyncio
  runs the loop's callbacks in trio's thread, inside a trio task);
- one sender task in the loop takes what trio queued (a list of messages, the last one
  carrying the reply subject) and publishes everything queued at once, so the client's
  flusher writes them together;
- the waiting, and its timeout, are trio's (``trio.move_on_after``).

What a caller sees is the reply's body (the PubAck's JSON) or a ``bridge`` error: no answer
in time is ``Unavailable``, as is a publish that fails (disconnected) or no stream for the
subject (a "no responders" status).
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import secrets
from typing import Any

import trio
from nats.aio.client import Client
from nats.aio.msg import Msg

from .bridge import NatsError, Unavailable, _call, _translate

Outgoing = list[tuple[str, bytes, dict[str, str]]]  # subject, body, headers


class Sent:
    """One request in flight: the reply's body once it came, or the error that came
    instead (see ``Acks.send``)."""

    __slots__ = ("answered", "answered_at", "data", "error", "gone", "token")

    def __init__(self, token: str) -> None:
        self.token = token
        self.answered = trio.Event()
        self.answered_at = 0.0  # trio time the reply came
        self.data = b""
        self.error: NatsError | None = None
        self.gone = False  # its caller stopped waiting

    def fail(self, error: NatsError) -> None:
        self.error = error
        self.answered.set()


class Acks:
    """Requests over one connection that share a reply subscription (see the module
    docstring)."""

    def __init__(self, loop: Any, client: Client) -> None:
        self._loop = loop
        self._nc = client
        self._prefix = ""  # "<inbox>." once started
        self._numbers = itertools.count(1)
        self._ids = itertools.count(1)
        self._id_prefix = secrets.token_hex(8)
        self._waiting: dict[str, Sent] = {}
        self._queued: collections.deque[tuple[Sent, str, Outgoing]] = collections.deque()
        self._wake: asyncio.Event | None = None
        self._sender: asyncio.Task[None] | None = None
        self._starting = trio.Lock()  # the first callers start it once

    def unique(self) -> str:
        """An id no other call of this or any other connection gets (a batch's id)."""
        return f"{self._id_prefix}{next(self._ids)}"

    async def request(self, messages: Outgoing, wait_s: float) -> bytes:
        """Publish *messages* in order, the last one with the shared reply subject; the
        reply's body, once it came within *wait_s*."""
        return await self.answer(await self.send(messages), wait_s)

    async def send(self, messages: Outgoing) -> Sent:
        """Queue *messages* for the sender, the last one with the shared reply subject, and
        return at once: requests go out in the order they were queued (one task's sends,
        one after another, reach the server in that order). Each is waited for with
        ``answer``."""
        if not self._prefix:
            async with self._starting:
                if not self._prefix:
                    await _call(self._loop, self._start)
        sent = Sent(str(next(self._numbers)))
        self._waiting[sent.token] = sent
        self._queued.append((sent, self._prefix + sent.token, messages))
        assert self._wake is not None
        self._wake.set()  # (an asyncio event set from trio: the loop's call_soon wakes it)
        return sent

    async def answer(self, sent: Sent, wait_s: float) -> bytes:
        """The reply's body of *sent*, once it came within *wait_s* (see ``result``)."""
        try:
            with trio.move_on_after(wait_s):
                await sent.answered.wait()
        finally:
            self.forget(sent)
        return self.result(sent, wait_s)

    @staticmethod
    def result(sent: Sent, waited_s: float) -> bytes:
        """The reply's body of *sent* as it stands, without waiting (forget it first).
        Raises the error that came instead, or ``Unavailable`` when nothing came (in the
        *waited_s* seconds its caller waited)."""
        if sent.error is not None:
            raise sent.error
        if not sent.answered.is_set():
            msg = f"TimeoutError: no PubAck within {waited_s:.2f} s"
            raise Unavailable(msg)
        return sent.data

    def forget(self, sent: Sent) -> None:
        """Stop waiting for *sent* (not sent at all, if it is still queued)."""
        self._waiting.pop(sent.token, None)
        sent.gone = True

    async def _start(self) -> None:
        """(In the loop.) Subscribe to the replies and start the sender, once."""
        if self._prefix:
            return
        prefix = self._nc.new_inbox() + "."
        await self._nc.subscribe(prefix + "*", cb=self._on_reply)
        self._wake = asyncio.Event()
        self._sender = asyncio.ensure_future(self._send())
        self._prefix = prefix

    async def _on_reply(self, msg: Msg) -> None:
        sent = self._waiting.get(msg.subject[len(self._prefix) :])
        if sent is None or sent.answered.is_set():
            return  # answered too late: its caller has given up
        sent.answered_at = trio.current_time()
        if not msg.data and msg.headers and msg.headers.get("Status") == "503":
            sent.fail(Unavailable("NoRespondersError: no stream takes this subject"))
            return
        sent.data = msg.data
        sent.answered.set()

    async def _send(self) -> None:
        """(In the loop.) Publish whatever is queued, everything at once, for ever."""
        assert self._wake is not None
        while True:
            if not self._queued:
                self._wake.clear()
                await self._wake.wait()
            while self._queued:
                sent, reply, messages = self._queued.popleft()
                if sent.gone:
                    continue  # its caller gave up before it was sent: not sent late
                try:
                    for n, (subject, body, headers) in enumerate(messages, 1):
                        last = n == len(messages)
                        await self._nc.publish(
                            subject, body, reply=reply if last else "", headers=headers
                        )
                except Exception as exc:  # the caller hears it; the sender goes on
                    sent.fail(_translate(exc))

    async def close(self) -> None:
        """Stop the sender (what is still queued is never sent; its callers time out)."""
        if self._sender is not None:
            self._sender.cancel()
