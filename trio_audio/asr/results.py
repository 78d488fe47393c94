"""Results: a decode's words to each chunk's span, and the chunks' transcripts stored.

A final's words go to the chunk each starts in (``place``); a chunk's transcript is stored
once every utterance over it is decoded (``complete``), ``done`` with its words or
``failed`` with the reason. Each new partial hypothesis is published live at once, with
how many of its first words the one before agreed on (LocalAgreement-2's stable prefix).
A store update that fails leaves the chunk
``pending`` (it is queued at start-up).
"""

from __future__ import annotations

import collections
import logging
from typing import Any, Final

import trio

from ..errors import NotFound, ServiceError
from ..live import Partial
from .state import Board, Early, SessionState, Span
from .utterances import Pack, Utterance, without_echo

logger = logging.getLogger("trio_audio.asr")

STORE_AT_ONCE: Final = 64  # chunk transcripts stored together (one group commit)


class Results:
    """Applies decodes to the sessions' chunks and stores their transcripts."""

    def __init__(self, board: Board) -> None:
        self.board = board

    def apply(
        self,
        session: SessionState,
        pack: Pack,
        answer: dict[str, Any],
        *,
        short: bool,
        context_ms: float = 0.0,
    ) -> None:
        """A final decode's words (of *context_ms* of context, then the pack's audio) to
        the pack's chunks, and to the session's previous words (``complete`` stores them)."""
        before = session.previous.of_last()
        owned = pack.own_words(answer["words"], context_ms, before) if answer.get("ok") \
            else None  # fmt: skip
        if owned and context_ms:  # the words of the utterance before, heard again
            owned[0] = without_echo(owned[0], before, pack.utterances[0].speech_ms)
        for i, utterance in enumerate(pack.utterances):
            words = owned[i] if owned is not None else None
            self._apply_utterance(session, utterance, answer, words, short=short)

    def apply_early(self, session: SessionState, early: Early) -> None:
        """An early final decoded, whose utterance closed as foreseen: its words are the
        final's (``apply``); the session has no early final after it."""
        assert early.answer is not None
        session.early = None
        answer, short, context_ms = early.answer
        self.apply(session, early.pack, answer, short=short, context_ms=context_ms)

    def _apply_utterance(
        self,
        session: SessionState,
        utterance: Utterance,
        answer: dict[str, Any],
        words: list[dict[str, Any]] | None,
        *,
        short: bool,
    ) -> None:
        if session.finals and session.finals[0] is utterance:
            session.finals.popleft()
            self.board.pcm_bytes -= utterance.held_bytes
        if words is None:
            session.previous.add([])  # it said nothing: no words of it to leave out of a prompt
            reason = f"the speech engine failed: {answer.get('error')}"
            for span in session.awaiting:
                if span.start_ms < utterance.end_ms and span.end_ms > utterance.start_ms:
                    span.failed = reason
        else:
            session.previous.add(words)
            if short:
                for span in session.awaiting:
                    if span.start_ms < utterance.end_ms and span.end_ms > utterance.start_ms:
                        span.short_window = True
            # Watchers get these words once they are stored (the store's ChunkUpdated).
            for word in words:
                place(session.awaiting, word)

    def apply_partial(
        self, session: SessionState, pack: Pack, answer: dict[str, Any], context_ms: float = 0.0
    ) -> None:
        """Publish the open utterance's hypothesis as soon as it says something new, with
        how many of its first words the one before agreed on (LocalAgreement-2's stable
        prefix): a talker sees words from the first decode, and which of them hold. (An
        early final's decode is one too, heard after *context_ms* of context.)"""
        if not answer.get("ok") or not session.assembler.open:
            return
        if session.finals:  # the utterance it heard has ended meanwhile
            return
        if pack.utterances[-1].start_ms != session.assembler.utt_start_ms:
            return  # ... and another began (its final decoded on another worker)
        words = pack.own_words(answer["words"], context_ms, session.previous.of_last())[0]
        heard = [w["word"] for w in words]
        agreed = 0
        for old, new in zip(session.heard, heard, strict=False):
            if old != new:
                break
            agreed += 1
        if not heard or (heard == session.heard and agreed == session.stable):
            return  # nothing new to show
        session.heard, session.stable = heard, agreed
        user_id, session_id = session.key
        self.board.live.publish(Partial(user_id, session_id, session.last_seq, words,
                                        pack.start_ms, pack.utterances[-1].end_ms,
                                        agreed))  # fmt: skip

    async def complete(self, session: SessionState) -> None:
        """Store the transcript of every chunk all of whose utterances are decoded.

        The chunks an utterance finishes (thirty or more of a live talker's 100 ms frames)
        are stored together, their updates queued in order and committed in one group
        commit, not one commit (and one fsync) after another: the utterance's last final goes
        out a commit after its decode, and the worker that decoded it is free again as soon.
        A chunk leaves ``awaiting`` only once its update is stored, so ``finalize`` returns
        after the words are durable; the session's lock keeps the feeder and a worker from
        storing the same chunk twice."""
        async with session.completing:
            while ready := self._ready(session):
                await self._store(ready)
                for _ in ready:
                    session.awaiting.popleft()
        self.board.wake()

    @staticmethod
    def _ready(session: SessionState) -> list[Span]:
        """The first chunks of ``awaiting`` whose every utterance is decoded (or failed), at
        most ``STORE_AT_ONCE``."""
        limit = session.finals[0].start_ms if session.finals else session.assembler.final_until_ms
        ready: list[Span] = []
        for span in session.awaiting:
            if len(ready) == STORE_AT_ONCE or (span.end_ms > limit + 0.5 and not span.failed):
                break
            ready.append(span)
        return ready

    async def _store(self, spans: list[Span]) -> None:
        """Store *spans*' transcripts (``done`` with their words, or ``failed``); one that
        cannot be stored stays ``pending``, one deleted meanwhile is let go."""
        transcripts = [_failed(span) if span.failed else _done(span) for span in spans]
        updates = [(s.chunk_id, {"transcript": t}) for s, t in zip(spans, transcripts, strict=True)]
        answers = await self.board.store.update_many(updates)
        for span, transcript, answer in zip(spans, transcripts, answers, strict=True):
            if isinstance(answer, NotFound):
                continue  # deleted since
            if isinstance(answer, ServiceError):  # closing, full or failed (a failed fsync
                # stops the service itself)
                logger.warning("transcript of chunk %s not stored (%s); stays pending",
                               span.chunk_id, answer)  # fmt: skip
            elif transcript["status"] == "done":
                self.board.counts["done"] += 1
                self.board.metrics.observe_stage("transcribe", trio.current_time() - span.since)
            else:
                logger.warning("transcription of chunk %s failed: %s", span.chunk_id, span.failed)
                self.board.counts["failed"] += 1


def _done(span: Span) -> dict[str, Any]:
    transcript: dict[str, Any] = {
        "status": "done",
        "text": " ".join(w["word"] for w in span.words),
        "words": span.words,
    }
    if span.words:  # where the chunk started on its session's timeline when its words
        transcript["offset_ms"] = round(span.start_ms, 3)  # were timed (for exports)
    if span.short_window:
        transcript["short_window"] = True
    return transcript


def _failed(span: Span) -> dict[str, Any]:
    return {"status": "failed", "text": "", "words": [], "error": span.failed}


def place(awaiting: collections.deque[Span], word: dict[str, Any]) -> None:
    """Give *word* to the chunk it starts in (the first or last one when outside them all)."""
    if not awaiting:
        return
    target = awaiting[0]
    for span in awaiting:
        if span.start_ms <= word["start_ms"]:
            target = span
        else:
            break
    target.words.append(word)
