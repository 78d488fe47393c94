"""The acker: it answers the chunks in the order they came (``ack`` + ``metadata``)."""

from __future__ import annotations

from typing import Any

import trio

from ...channels import put
from ...errors import ServiceError
from ...models import Job
from ...store.index import Stored
from ..messages import ack_message, metadata_message
from .state import SessionState


class Acker(SessionState):
    """The acker task: each chunk's answer, once the pipeline has stored it."""

    async def _acker(self, out: trio.MemorySendChannel[str]) -> None:
        """Answer chunks in the order they came: ack + metadata; the first failure ends it."""
        async with self.ack_recv, out:
            async for item in self.ack_recv:
                # The chunks committed together are answered together: the ones waiting
                # behind this one are taken without a trip through the scheduler each, one
                # at a time, so the reader's limit (the channel's room) still counts every
                # unanswered chunk but the one being answered.
                while await self._answer(*item, out):
                    try:
                        item = self.ack_recv.receive_nowait()
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                else:
                    break
        self._drained.set()

    async def _answer(self, seq: int, job: Job, out: trio.MemorySendChannel[str]) -> bool:
        """Queue chunk *seq*'s ack and metadata once it is stored; False if it failed."""
        try:
            results: list[Stored] = job.reply.result() if job.reply.done else await job.reply.wait()
        except ServiceError as exc:
            if exc is not self._not_taken:
                self._end_with(exc)  # the chunks after it stay unanswered
            return False
        finally:
            self.unanswered.popleft()
            self.inflight.give(len(job.parts[0].body))
            self._answered.set()
        result = results[0]
        if result.created:
            self.stored += 1
            if (result.chunk.get("transcript") or {}).get("status") == "pending":
                self.final_due.add(result.chunk["chunk_id"])
        else:
            self.duplicates += 1
        ack = ack_message(seq, result.chunk["chunk_id"], duplicate=not result.created)
        await self._send(out, ack)
        if result.chunk["chunk_id"] not in self.replayed and self._wants_metadata(seq):
            await put(out, metadata_message(self._as_answered(result.chunk)))
        return True

    def _as_answered(self, chunk: dict[str, Any]) -> dict[str, Any]:
        """The chunk JSON as committed, with ``offset_ms`` as the store has it now: the chunks
        before it are all answered by now, so it is final even if they committed after it.
        (Cheaper than reading the record back: no unpacking, no second chunk JSON.)"""
        offset = self.ctx.store.offset_ms(chunk["chunk_id"])
        if offset is None or offset == chunk.get("offset_ms"):
            return chunk
        return {**chunk, "offset_ms": offset}
