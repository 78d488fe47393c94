"""Interim results (partials, VAD events) between nodes: not durable, best effort.

The transcriber publishes into ``LiveRelay``: this node's watchers at once, and (``run``) a
core NATS subject, ``<stream>_asr_live.<user>.<session>``; every serve node relays what
other nodes publish there to its own watchers (``relay``). Finals are the log's, not these.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Final

import trio

from ..live import Live, LivePort, live_from_dict, live_to_dict
from .bridge import NatsError
from .connect import Nats
from .partitions import Names
from .stream import token

logger = logging.getLogger("trio_audio.cluster.work")

LIVE_QUEUE: Final = 1024  # interim results waiting to be published; then the newest drop


class LiveRelay:
    """The live port the transcriber publishes into: this node's watchers, and (through
    ``run``) the core NATS subject every node relays to its own."""

    def __init__(self, local: LivePort, node: str, names: Names) -> None:
        self._local = local
        self._node = node
        self._names = names
        self._send, self._receive = trio.open_memory_channel[tuple[str, bytes]](LIVE_QUEUE)
        self.dropped = 0

    def publish(self, item: Live) -> None:
        self._local.publish(item)
        body = {"node": self._node, "item": live_to_dict(item)}
        subject = f"{self._names.live}.{token(item.user_id)}.{token(item.session_id)}"
        try:
            self._send.send_nowait((subject, json.dumps(body, separators=(",", ":")).encode()))
        except trio.WouldBlock:
            self.dropped += 1  # interim results are best effort; the log has the finals

    async def run(self, nats: Nats) -> None:
        """Publish what the transcriber sent, in order."""
        async with self._receive:
            async for subject, data in self._receive:
                try:
                    await nats.publish_core(subject, data)
                except NatsError as exc:
                    self.dropped += 1
                    logger.debug("an interim result was not published: %s", exc)

    async def relay(self, inbox: Any) -> None:
        """Other nodes' interim results to this node's watchers."""
        while True:
            for message in await inbox.take(1.0):
                try:
                    body = json.loads(message.data)
                    node, item = body["node"], live_from_dict(dict(body["item"]))
                except (ValueError, KeyError, TypeError):
                    continue  # not ours: core subjects are open to any client
                if node != self._node:  # this node's watchers had it already
                    self._local.publish(item)
