"""The feeder: delivered chunks -> each session's utterances, queued to be decoded.

In the order the intake delivered them, each chunk's PCM (read back from the log when it
was not kept) and speech segments go to its session's ``Assembler`` (``utterances.py``).
Utterances finished together go to the fair queue in packs of up to ``PACK_MS`` of audio;
every ``asr_partial_interval_s`` the open utterance goes too, to be decoded for live words,
once it holds ``PARTIAL_MIN_SPEECH_MS`` of speech (a decode of less says nothing).

**Early finals.** A live utterance ends after ``vad_gap_ms`` of silence, but its audio is
known half way into that silence (``Assembler.coming``: its tail is ``vad_gap_ms / 2``). It
goes to be decoded then, as a final, so its words are ready about when the silence ends it.
If it does end as foreseen, that decode is its final: the same audio, context and prompt as
if it had been queued at the close. If speech goes on, the early final is taken back from
the queue (``withdrawn``), or its decode shows as a partial (``unused``); ``/metrics``
counts the three outcomes.
``finalize`` ends a session's open utterance now and returns once its words are stored; a
session silent for ``asr_idle_timeout_s`` is finalized and forgotten (``janitor``). The
feeder waits while the PCM held is over ``asr_backlog_bytes``.
"""

from __future__ import annotations

from typing import Final

import attrs
import numpy as np
import trio

from ..errors import ServiceError
from .intake import Intake
from .results import Results
from .state import Board, Early, Item, SessionState
from .utterances import PREROLL_MS, WINDOW_MS, Utterance, packs, single

JANITOR_PERIOD_FRACTION: Final = 0.25  # of the idle timeout
PACK_MS: Final = WINDOW_MS  # audio of utterances decoded together in one 30 s window
PARTIAL_MIN_SPEECH_MS: Final = 500.0  # an open utterance's first partial waits for this much
HEARD_SLACK_S: Final = 0.2  # a frame or two past vad_gap_ms: how late a live close can be


class Feeder:
    """Cuts the sessions' audio into utterances and queues them; ends sessions' speech."""

    def __init__(self, board: Board, intake: Intake, results: Results) -> None:
        self.board = board
        self.intake = intake
        self.results = results

    async def run(self) -> None:
        """Assemble chunks into utterances in the order they were delivered."""
        board = self.board
        while True:
            if not board.feed or board.pcm_bytes > board.config.asr_backlog_bytes:
                await board.wait_change()  # no chunk, or decoded audio must go out first
                continue
            session, item = board.feed.popleft()
            try:
                await self._assemble(session, item)
            finally:
                session.feeding -= 1
                board.drop_pcm(item)
                board.wake()

    async def _assemble(self, session: SessionState, item: Item) -> None:
        try:
            pcm = item.pcm if item.pcm is not None else await self.intake.read_pcm(item.chunk_id)
        except (ServiceError, ValueError, OSError) as exc:
            for span in session.awaiting:
                if span.chunk_id == item.chunk_id:
                    span.failed = f"its audio could not be read back: {exc}"
            await self.results.complete(session)
            return
        segments = [(s["start_ms"], s["end_ms"]) for s in item.segments]
        samples = np.frombuffer(pcm, dtype="<i2")
        # What this chunk closes was last heard in it, if it holds speech (its audio after the
        # speech had been heard by the time the chunk came), else in the last chunk that did;
        # never longer ago than the silence that closes an utterance (and a frame): a chunk
        # taken late (a backlog, pending ones at start-up) is no late final.
        if segments:
            after_ms = item.duration_ms - max(end for _, end in segments)
            session.speech_heard_at = item.since - max(0.0, after_ms) / 1000
        earliest = trio.current_time() - self.board.config.vad_gap_ms / 1000 - HEARD_SLACK_S
        closed = session.assembler.add(item.offset_ms, samples, segments)
        self._queue_finals(session, closed, max(earliest, session.speech_heard_at))
        self._maybe_early(session)
        self._maybe_partial(session)
        await self.results.complete(session)

    def _queue_finals(
        self, session: SessionState, utterances: list[Utterance], heard: float
    ) -> None:
        """Utterances finished together (by one chunk) go to be decoded in packs; *heard*:
        when their speech was last heard (a live final's deadline counts from then, not from
        the ``vad_gap_ms`` of silence later that ended it; one ended on request, from the
        request)."""
        if not utterances:
            return
        session.heard, session.stable = [], 0
        early = session.early
        if early is not None and not early.closed:
            if len(utterances) == 1 and utterances[0].span == early.utterance.span:
                self._early_closed(session, early)
                return
            self._drop_early(session, early)
        if len(utterances) > 1:  # an upload's: each is heard with its neighbours in its pack
            utterances = [u.alone() for u in utterances]
        for utterance in utterances:
            session.finals.append(utterance)
            self.board.pcm_bytes += utterance.held_bytes
        for pack in packs(utterances, PACK_MS):
            self.board.queue.put_final(session.key, attrs.evolve(pack, since=heard))
        self.board.wake()

    def _maybe_early(self, session: SessionState) -> None:
        """Queue the utterance silence is ending, once its audio is known (or take back
        the one queued, when speech went on)."""
        early = session.early
        if early is not None and early.closed:
            return  # the last one's decode is still its final: one at a time
        span = session.assembler.coming_span()  # (every chunk: no copy of its audio)
        if early is not None:
            if span == early.utterance.span:
                return  # queued already
            self._drop_early(session, early)
        coming = session.assembler.coming() if span is not None else None
        if coming is None:
            return
        # As a final's: when its speech was last heard, never longer ago than its tail.
        tail_s = session.assembler.tail_ms / 1000 + HEARD_SLACK_S
        since = max(trio.current_time() - tail_s, session.speech_heard_at)
        pack = attrs.evolve(single(coming), since=since, early=True)
        session.early = Early(pack)  # its PCM is the open utterance's: counted once closed
        self.board.queue.put_final(session.key, pack)
        self.board.wake()

    def _early_closed(self, session: SessionState, early: Early) -> None:
        """The utterance ended as foreseen: its early decode is its final (applied now if
        it is in; ``complete`` then stores it)."""
        self.board.early_counts["used"] += 1
        session.finals.append(early.utterance)
        self.board.pcm_bytes += early.utterance.held_bytes
        if early.answer is None:
            early.closed = True  # the worker applies it
            return
        self.results.apply_early(session, early)
        self.board.wake()

    def _drop_early(self, session: SessionState, early: Early) -> None:
        """Speech went on: the early final is not the utterance's (a decode of it already
        under way shows as a partial)."""
        session.early = None
        waiting = self.board.queue.withdraw(session.key, early.pack)
        self.board.early_counts["withdrawn" if waiting else "unused"] += 1
        self.board.wake()

    def _maybe_partial(self, session: SessionState) -> None:
        interval = self.board.config.asr_partial_interval_s
        now = trio.current_time()
        if interval <= 0 or now - session.partial_at < interval or session.early is not None:
            return  # (an early final's decode shows its words)
        partial = session.assembler.partial()
        if partial is not None and partial.end_ms - partial.start_ms >= (
            PREROLL_MS + PARTIAL_MIN_SPEECH_MS
        ):
            session.partial_at = now
            self.board.queue.put_partial(session.key, single(partial))
            self.board.wake()

    # -- finishing ---------------------------------------------------------------------------

    async def finalize(self, session: SessionState) -> None:
        """End the session's utterance now; returns once its chunks' words are stored (at
        once when transcription is off or stopped)."""
        board = self.board
        self.intake.release_waiting(session)
        board.end_speech(session)
        if not board.enabled:
            return
        while board.running and session.feeding:
            await board.wait_change()
        self._end_utterance(session)
        await self.results.complete(session)
        while board.running and (session.finals or session.awaiting):
            await board.wait_change()

    async def janitor(self) -> None:
        """Finalize and forget sessions idle for ``asr_idle_timeout_s``."""
        board = self.board
        timeout = board.config.asr_idle_timeout_s
        while True:
            await trio.sleep(timeout * JANITOR_PERIOD_FRACTION)
            now = trio.current_time()
            for key, session in list(board.sessions.items()):
                if now - session.last_active < timeout:
                    continue
                board.end_speech(session)
                if session.assembler.open:
                    self._end_utterance(session)
                    await self.results.complete(session)
                    continue  # forgotten on a later round, once its words are stored
                if session.busy:
                    continue
                if board.sessions.get(key) is session:
                    del board.sessions[key]
                    board.queue.forget(key)

    def _end_utterance(self, session: SessionState) -> None:
        """No more audio is coming now: the open utterance goes to be decoded."""
        finished = session.assembler.finish()  # asked for now (finalize, end, idle): from now
        self._queue_finals(session, finished, trio.current_time())
