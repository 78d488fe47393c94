"""Intake: stored chunks taken in, put back in seq order, delivered; audio read back.

The service's fan-out offers each ``ChunkStored`` event (``offer``, never waits); a stored
chunk can be queued again by id (``offer_stored``), and at start every chunk the store
replayed as ``pending`` is, in session and seq order, a slice at a time. A session's chunks
are put back in seq order (``reorder.py``; a missing seq is waited for ``REORDER_WAIT_S``);
in that order each gives its ``vad`` events at once and, when it is to be transcribed, gets
a span in the session's ``awaiting`` and goes on to the feeder with its 16 kHz PCM (kept
from the pipeline within ``asr_backlog_bytes``, else read back from the log, ``read_pcm``).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, Final

import trio

from ..audio import features, vad
from ..audio.decode import RawFormat, decode
from ..errors import NotFound
from ..store.events import ChunkStored
from .reorder import Reorder
from .state import Board, Item, Key, SessionState, Span
from .utterances import Assembler

logger = logging.getLogger("trio_audio.asr")

REORDER_WAIT_S: Final = 1.0  # how long a chunk waits for a missing earlier seq
REQUEUE_SLICE: Final = 256  # pending chunks queued at start-up between checkpoints


class Intake:
    """Takes stored chunks in and hands them, in seq order, to the feeder."""

    def __init__(self, board: Board) -> None:
        self.board = board
        self._reordering: set[Key] = set()  # sessions with chunks waiting for an earlier seq

    def offer(self, event: ChunkStored) -> None:
        """A newly stored chunk: put in seq order, then VAD and transcription. Never waits."""
        self._arrive(self._item(event.chunk, event.speech_pcm))

    async def offer_stored(self, chunk_id: str) -> None:
        """Queue a stored chunk (its audio read back from the log when its turn comes);
        ``NotFound`` when it is no longer stored."""
        self._arrive(self._item(await self.board.store.get(chunk_id), None))

    def _item(self, chunk: dict[str, Any], pcm: bytes | None) -> Item:
        board = self.board
        transcribe = board.enabled and board.running and chunk["transcript"]["status"] == "pending"
        if not transcribe or (
            pcm is not None and board.pcm_bytes + len(pcm) > board.config.asr_backlog_bytes
        ):
            if transcribe and pcm is not None:
                board.counts["deferred"] += 1  # over the budget: read back from the log
            pcm = None
        if pcm is not None:
            board.pcm_bytes += len(pcm)
        return Item(
            chunk_id=chunk["chunk_id"],
            key=(chunk["user_id"], chunk["session_id"]),
            seq=chunk["seq"],
            offset_ms=float(chunk.get("offset_ms", 0.0)),
            duration_ms=float(chunk["audio"]["duration_ms"]),
            pcm=pcm,
            since=trio.current_time(),
            segments=chunk.get("features", {}).get("speech_segments", []),
            transcribe=transcribe,
        )

    def _arrive(self, item: Item) -> None:
        session = self.session(item.key)
        now = session.last_active = trio.current_time()
        for ready in session.order.add(item.seq, item, now):
            self._deliver(session, ready)
        self._note_reordering(session)

    def release_waiting(self, session: SessionState) -> None:
        """Stop waiting for missing seqs: everything waiting goes on, in order."""
        for ready in session.order.release(trio.current_time(), everything=True):
            self._deliver(session, ready)
        self._note_reordering(session)

    def _note_reordering(self, session: SessionState) -> None:
        if session.order.waiting:
            self._reordering.add(session.key)
        else:
            self._reordering.discard(session.key)

    def _first_seq(self, key: Key) -> int:
        """The seq a session's transcription goes on from: after its last finished chunk."""
        store = self.board.store
        for seq, chunk_id in reversed(store.chunks_after(key[0], key[1], None)):
            if store.transcript_status(chunk_id) not in ("pending", None):
                return seq + 1
        return 0

    def _deliver(self, session: SessionState, item: Item) -> None:
        """In seq order: the chunk's VAD events, then (transcribed) to the feeder."""
        board = self.board
        offset = board.store.offset_ms(item.chunk_id)  # final now its predecessors are in
        if offset is None:
            board.drop_pcm(item)
            return  # deleted since
        item.offset_ms = offset
        for event, at_ms in session.activity.chunk(offset, item.duration_ms, item.segments):
            board.publish_vad(session.key, event, at_ms)
        if not item.transcribe or not board.running:
            board.drop_pcm(item)
            return  # not transcribed (or stopping: it stays pending)
        session.last_seq = max(session.last_seq, item.seq)
        session.awaiting.append(
            Span(
                item.chunk_id,
                item.seq,
                item.offset_ms,
                item.offset_ms + item.duration_ms,
                item.since,
            )
        )
        session.feeding += 1
        board.feed.append((session, item))
        board.wake()

    async def reorder_timer(self) -> None:
        """Stop waiting for a missing seq after ``REORDER_WAIT_S`` (it failed or never came)."""
        while True:
            await trio.sleep(REORDER_WAIT_S / 4)
            now = trio.current_time()
            for key in list(self._reordering):
                session = self.board.sessions.get(key)
                if session is None:
                    self._reordering.discard(key)
                elif session.order.overdue(now, REORDER_WAIT_S):
                    self.release_waiting(session)

    def session(self, key: Key) -> SessionState:
        """The session's state, made when it has none."""
        board = self.board
        session = board.sessions.get(key)
        if session is None:
            config = board.config
            session = board.sessions[key] = SessionState(
                key,
                vad.SessionActivity(config.vad_gap_ms),
                trio.current_time(),
                Reorder(self._first_seq(key), config.asr_backlog),
                Assembler(config.vad_gap_ms, config.asr_max_utterance_s * 1000),
            )
        return session

    async def requeue_pending(self) -> None:
        """Queue, in session and seq order, every chunk the store replayed as ``pending``."""
        store = self.board.store
        pending = store.pending_transcripts()
        for n, chunk_id in enumerate(pending):
            if store.has(chunk_id):
                with contextlib.suppress(NotFound):
                    await self.offer_stored(chunk_id)
            if n % REQUEUE_SLICE == REQUEUE_SLICE - 1:
                await trio.lowlevel.checkpoint()  # a long list never stalls the event loop
        if pending:
            logger.info("queued %d chunks left pending for transcription", len(pending))

    async def read_pcm(self, chunk_id: str) -> bytes:
        """A stored chunk's audio as 16 kHz 16-bit mono, decoded again from the log."""
        store = self.board.store
        data, content_type = await store.read_audio(chunk_id)
        info = (await store.get(chunk_id))["audio"]
        raw = None
        if info["container"] == "raw":
            raw = RawFormat(info["encoding"], info["sample_rate"], info["channels"])

        def convert() -> bytes:
            decoded = decode(data, content_type=content_type, raw=raw)
            mono = features.downmix(decoded.samples)
            return vad.speech_pcm(mono, decoded.sample_rate).tobytes()

        return await trio.to_thread.run_sync(convert, limiter=self.board.limiter)
