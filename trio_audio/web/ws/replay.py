"""``started``, and on resume the answers of the chunks stored from ``resume_from_seq`` on."""

from __future__ import annotations

import trio

from ...errors import InvalidField, NotFound
from ..messages import (
    Start,
    ack_message,
    metadata_message,
    started_message,
    transcript_message,
)
from ..session_events import missing_seqs
from .base import SessionError
from .state import SessionState


class Replay(SessionState):
    """What a session says first: ``started``, then what a resume replays."""

    async def _started_and_replay(self, start: Start, out: trio.MemorySendChannel[str]) -> None:
        """``started``, then (on resume) the answers of the chunks stored from there on."""
        store = self.ctx.store
        session = store.summary(start.user_id, start.session_id)
        stored_next_seq = session.next_seq if session else 0
        resume = start.resume_from_seq
        if resume is not None and resume > stored_next_seq:
            msg = (
                f"resume_from_seq {resume} is past the end of this session, which has "
                f"chunks up to seq {stored_next_seq - 1}: resume from {stored_next_seq} or before"
            )
            raise SessionError(InvalidField(msg))
        self.next_seq = resume if resume is not None else stored_next_seq
        missing, missing_count = missing_seqs(store, start.user_id, start.session_id)
        limits = {
            "max_message_bytes": self.config.max_body_bytes,
            "max_inflight": self.config.ws_max_inflight,
            "idle_timeout_s": self.config.ws_idle_timeout_s,
        }
        started = started_message(
            start, self.next_seq, stored_next_seq, missing, missing_count, limits
        )
        await self._send(out, started)
        if resume is None or session is None:
            return
        for seq, chunk_id in store.chunks_after(start.user_id, start.session_id, resume - 1):
            try:
                chunk = await store.get(chunk_id)
            except NotFound:
                continue  # deleted meanwhile
            self.replayed.add(chunk_id)
            await self._send(out, ack_message(seq, chunk_id, replayed=True))
            if self._wants_metadata(seq):
                await out.send(metadata_message(chunk))
            final = transcript_message(chunk)  # as a live watcher gets it
            if final is not None:
                self.replayed_final.add(chunk_id)
                await self._send(out, final)
