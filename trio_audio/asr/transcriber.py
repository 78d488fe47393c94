"""The transcriber: stored chunks -> utterances -> worker processes -> transcripts.

::

    fan-out ──offer()──> reorder ──> feeder ──> assembler ──> fair queue ──> worker 0 ─┐
    (never waits)        (per session, seq     (per session:    (finals round  worker 1 ─┤
                          order)               VAD -> utterances) robin)                 │
                                                                                         v
     live port (partials, vad) <── results: words -> each chunk's span ─> store.update
                                                        (its ChunkUpdated is the final)

- The service's fan-out calls ``offer`` with each ``ChunkStored`` event. A session's chunks
  are put back in seq order (``reorder.py``); in that order each gives its ``vad`` events at
  once and goes to the feeder, which hands its 16 kHz PCM (kept from the pipeline within
  ``asr_backlog_bytes``, else read back from the log) and its speech segments to the
  session's ``Assembler`` (``utterances.py``).
- Each finished utterance is decoded once, by whichever worker is free: the ``FairQueue``
  (``fair.py``) takes finals round robin across sessions, one in flight per session, so a
  long file cannot hold other sessions' words. Every ``asr_partial_interval_s`` the open
  utterance is re-decoded for live words, only when no final waits and never on every
  worker at once (one stays free for the next final, when there are two or more); each
  new hypothesis is published at once with its stable prefix (the words the one before
  agreed on: LocalAgreement-2).
- A chunk's transcript is done once every utterance that overlaps it is decoded: its words
  (those that start inside it) go into a durable update through the store.
- ``finalize`` ends the session's open utterance now and returns once its words are stored;
  a session silent for ``asr_idle_timeout_s`` is finalized and forgotten.
- At start every chunk the store replayed as ``pending`` is queued again, in session and seq
  order, a slice at a time.

The parts, by role, each over one shared ``state.Board``: ``intake.py`` (offers, seq
order, VAD events, audio read back), ``feeder.py`` (utterances cut and queued, ``finalize``,
idle sessions), ``pool.py`` (the worker processes and the fair queue), ``results.py`` (words
to chunks, transcripts stored). This class builds them and runs their tasks.

Resource handling: ``run`` owns the feeder and the workers; each worker runs its process in a
nursery of its own (``process.py``). Memory is bounded by ``asr_backlog_bytes`` (PCM kept for
chunks not yet assembled, plus the audio of utterances waiting to be decoded; past it a
chunk's audio is read back from the log in its turn and the feeder waits for the workers),
the reorder buffers (``asr_backlog`` chunks per session) and the open utterances (at most
``asr_max_utterance_s`` each, twice while an early final holds a copy of one's audio).

Error handling: a chunk whose audio cannot be read or decoded, or whose utterance's decode
failed (the worker died, timed out or the engine failed), gets ``transcript.status: failed``
with the reason; a dead worker is started again for the next utterance. A store update that
fails leaves the chunk ``pending`` (it is queued at start-up).
"""

from __future__ import annotations

import collections
from typing import Final

import trio

from ..config import Config
from ..live import LivePort
from ..metrics import Metrics
from ..store.events import ChunkStored
from .engine import check_options
from .feeder import Feeder
from .intake import Intake
from .pool import Pool
from .results import Results
from .state import EARLY_OUTCOMES, Board, ChunkSource, Key, SessionState

__all__ = ["ChunkSource", "Transcriber"]

# How long a cluster's finalize waits for the session's last pending chunk to reach this
# worker before it ends what it has: longer than a work message takes to come again when
# this worker's follower lagged (cluster/take.py's ACK_WAIT_S, 30 s, and its follower wait),
# within the minute the asking node waits (cluster/finalize.py).
ARRIVAL_WAIT_S: Final = 40.0
ARRIVAL_CHECK_S: Final = 0.5  # ... checking this often what this node's log has


class Transcriber:
    """Turns stored chunks into transcripts with a pool of worker processes.

    Build it in ``serve``, start ``run`` with ``nursery.start``. ``offer`` takes the store's
    ``ChunkStored`` events (never blocks); ``finalize`` is for the WebSocket's ``finalize``
    and ``end`` and the HTTP ``POST .../end``.
    """

    def __init__(
        self,
        config: Config,
        store: ChunkSource,
        live: LivePort,
        metrics: Metrics,
        limiter: trio.CapacityLimiter,
    ) -> None:
        self.config = config
        self.board = Board(config, store, live, metrics, limiter)
        self.intake = Intake(self.board)
        self.results = Results(self.board)
        self.feeder = Feeder(self.board, self.intake, self.results)
        self.pool = Pool(self.board, self.results)
        self._scope: trio.CancelScope | None = None

    @property
    def enabled(self) -> bool:
        return self.board.enabled

    @property
    def running(self) -> bool:
        return self.board.running

    @property
    def sessions(self) -> dict[Key, SessionState]:
        return self.board.sessions

    @property
    def counts(self) -> collections.Counter[str]:
        return self.board.counts

    @property
    def pcm_bytes(self) -> int:
        """PCM held: chunks not yet assembled and utterances not decoded."""
        return self.board.pcm_bytes

    @property
    def workers_started(self) -> trio.Event:
        """Set once every worker has loaded its engine (or failed to)."""
        return self.pool.workers_started

    # -- lifecycle -------------------------------------------------------------------------

    async def run(
        self, *, task_status: trio.TaskStatus[Transcriber] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Start the feeder and workers, queue what the store left pending, report ready;
        run until stopped."""
        board = self.board
        if board.enabled:
            check_options(self.pool.options)
        self._register_metrics()
        try:
            with trio.CancelScope() as self._scope:
                async with trio.open_nursery() as nursery:
                    if board.enabled:
                        nursery.start_soon(self.feeder.run)
                        for index in range(self.pool.workers):
                            nursery.start_soon(self.pool.worker, index)
                    board.running = True
                    if board.enabled:
                        nursery.start_soon(self.intake.requeue_pending)
                    nursery.start_soon(self.feeder.janitor)
                    nursery.start_soon(self.intake.reorder_timer)
                    task_status.started(self)
        finally:
            board.running = False
            board.wake()

    def stop(self) -> None:
        """Stop now; chunks not transcribed stay ``pending`` and are queued at the next start."""
        if self._scope is not None:
            self._scope.cancel()

    def _register_metrics(self) -> None:
        metrics, board, deadline = self.board.metrics, self.board, self.pool.deadline
        metrics.gauge("trio_audio_transcribe_backlog", self.pool.backlog_gauge)
        metrics.gauge("trio_audio_transcribe_lag_seconds", lambda: {"": self.lag_s()})
        metrics.gauge(
            "trio_audio_transcribe_sessions", lambda: {'state="live"': len(board.sessions)}
        )
        metrics.gauge(
            "trio_audio_transcripts",
            lambda: {f'status="{k}"': float(v) for k, v in sorted(board.counts.items())},
        )
        metrics.gauge(  # the workers' time decoding finals and partials (wall seconds)
            "trio_audio_transcribe_decode_seconds",
            lambda: {f'kind="{k}"': v for k, v in self.pool.busy_s.items()},
        )
        metrics.gauge(  # early finals: the utterance ended as foreseen, or speech went on (its
            # early final taken back before a worker took it, or decoded for nothing)
            "trio_audio_transcribe_early_finals",
            lambda: {f'outcome="{k}"': float(board.early_counts[k]) for k in EARLY_OUTCOMES},
        )
        metrics.gauge(  # finals decoded in the full window, or shortened for a deadline
            "trio_audio_transcribe_final_decodes",
            lambda: {f'window="{k}"': float(deadline.counts[k]) for k in ("full", "short")},
        )

    def lag_s(self, key: Key | None = None) -> float:
        """Age of the oldest chunk offered but not yet transcribed (0 when none waits): of
        the session *key* (user_id, session_id), or of all sessions when None."""
        board = self.board
        sessions = board.sessions.values() if key is None else [board.sessions.get(key)]
        oldest = [s.awaiting[0].since for s in sessions if s is not None and s.awaiting]
        oldest += [item.since for state, item in board.feed if key is None or state.key == key]
        return max(0.0, trio.current_time() - min(oldest)) if oldest else 0.0

    # -- the public doors --------------------------------------------------------------------

    def offer(self, event: ChunkStored) -> None:
        """A newly stored chunk: put in seq order, then VAD and transcription. Never waits."""
        self.intake.offer(event)

    async def offer_stored(self, chunk_id: str) -> None:
        """Queue a stored chunk (its audio read back from the log when its turn comes);
        ``NotFound`` when it is no longer stored."""
        await self.intake.offer_stored(chunk_id)

    def _arrived(self, key: Key, seq: int) -> bool:
        """Whether the session's chunk *seq* has been handed on to be transcribed here, or
        needs not be (this node's log has it, and not ``pending``)."""
        session = self.board.sessions.get(key)
        if session is not None and session.last_seq >= seq:
            return True
        store = self.board.store
        after = store.chunks_after(*key, seq - 1)[:1]
        return [s for s, _ in after] == [seq] and store.transcript_status(after[0][1]) != "pending"

    def set_vocabulary(self, user_id: str, session_id: str, terms: tuple[str, ...]) -> None:
        """Words and phrases the session expects (checked by ``context.parse_vocabulary``):
        the start of every prompt of its decodes from now on."""
        if self.enabled:
            self.intake.session((user_id, session_id)).vocabulary = terms

    async def finalize(self, user_id: str, session_id: str, *, through: int | None = None) -> None:
        """End the session's utterance now; returns once its chunks' words are stored.

        With *through* (a cluster's finalize: the last seq of the session still pending in
        the log of the node that asked), it first waits, at most ``ARRIVAL_WAIT_S``, until
        that chunk has reached this transcriber (this worker's share of the work may lag):
        ended before, the chunks after the end would wait for the session to go idle.
        Otherwise it returns at once when transcription is off or stopped, or the session
        has nothing in flight."""
        key = (user_id, session_id)
        if through is not None and self.board.running:
            with trio.move_on_after(ARRIVAL_WAIT_S):
                while self.board.running and not self._arrived(key, through):
                    with trio.move_on_after(ARRIVAL_CHECK_S):  # (the log changes unwoken)
                        await self.board.wait_change()
        session = self.board.sessions.get(key)
        if session is not None:
            await self.feeder.finalize(session)
