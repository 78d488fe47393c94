"""The writer (the only task that sends) and its watchdog, which cuts off a client that reads
nothing.
"""

from __future__ import annotations

from typing import Final

import trio

from ...channels import waiting
from ...errors import SlowReader
from .state import SessionState

# One write holds at most this much: the watchdog times a write, and a client that reads
# slowly but steadily is not cut off for a batch it is reading.
WRITE_BATCH: Final = 64  # messages
WRITE_BATCH_BYTES: Final = 16 * 1024  # characters (past it, the next message starts a write)


class Writer(SessionState):
    """The writer and watchdog tasks."""

    async def _writer(self, out_recv: trio.MemoryReceiveChannel[str]) -> None:
        """The only task that sends: each message in order, until every sender is done; the
        messages waiting together go out in one write (an ack and its metadata, at least).

        Once the client is found not reading (``_watchdog``), what is still queued is dropped:
        the chunks it answers stay stored, and a resume replays their answers.
        """
        async with out_recv:
            async for first in out_recv:
                # It and what waits behind it, sent as one write.
                texts = waiting(first, out_recv, WRITE_BATCH, len, WRITE_BATCH_BYTES)
                if self.jammed:
                    continue
                with self._sending:
                    self._send_started = trio.current_time()
                    await self.transport.send_many(texts)
                self._send_started = None
                self._sending = trio.CancelScope()
        self._watching.cancel()  # all sent: nothing more to watch

    async def _watchdog(self) -> None:
        """Cut off a client that takes nothing the writer sends for ``ws_send_timeout_s``.

        It ends the session with ``slow_reader`` (4429) and frees its slot at once. This task
        does it, not a timeout around the send, because a send cannot always be cancelled:
        hypercorn (``/ws`` on the HTTP port) shields its socket writes, so there the stuck send
        (and the connection) lasts until the client goes away, but holds no slot.
        """
        timeout = self.config.ws_send_timeout_s
        with self._watching:
            while True:
                await trio.sleep(timeout / 4)
                since = self._send_started
                if since is not None and trio.current_time() - since >= timeout:
                    break
        if not self._watching.cancelled_caught:
            self.jammed = True
            self._end_with(SlowReader(f"the client read nothing for {timeout:g} s"))
            self._sending.cancel()
            self._release()
