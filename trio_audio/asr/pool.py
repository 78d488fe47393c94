"""The worker pool: utterances -> words, in worker processes, fairly across sessions.

Each finished utterance (or pack of them) is decoded once, by whichever worker is free: the
``FairQueue`` (``fair.py``) takes finals round robin across sessions, one in flight per
session, so a long file cannot hold other sessions' words. A partial is decoded only when no
final waits and never on every worker at once (one stays free for the next final, when there
are two or more), greedily in a window as short as its audio allows. A final is decoded in
the engine's window, or the short one when it is late (``context.Deadline``); its words
are stored while the worker goes on to its next decode. Each worker
runs its process in a nursery of its own (``process.py``); a dead one is started again for
the next utterance, and the decode it failed reads as ``{ok: false, error}``.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Final

import trio

from .context import Deadline, prompt
from .engine import EngineError, EngineOptions
from .process import WorkerDied, WorkerProcess
from .results import Results
from .state import Board, SessionState
from .utterances import Pack

logger = logging.getLogger("trio_audio.asr")

REQUEST_BASE_TIMEOUT_S: Final = 30.0  # plus REQUEST_PER_AUDIO_S per second of audio
REQUEST_PER_AUDIO_S: Final = 2.0
PARTIAL_WINDOW_S: Final = 4.0  # a partial's shortest encoder window (~0.15 s of CPU, not 0.2)


def default_workers() -> int:
    """Worker processes when ``asr_workers`` is 0: one per core. They run at a lower CPU
    priority (``worker.NICE``), so ingestion still has a core whenever it needs one."""
    return len(os.sched_getaffinity(0))


class Pool:
    """The worker processes and what each is decoding."""

    def __init__(self, board: Board, results: Results) -> None:
        config = board.config
        self.board = board
        self.results = results
        self.workers = config.asr_workers or default_workers()
        self.options = EngineOptions(
            engine=config.asr_engine,
            model_dir=config.asr_model_dir,
            grammar=config.asr_grammar,
            keyphrases=config.asr_keyphrases,
            window_s=config.asr_window_s,
        )
        self.deadline = Deadline(
            config.asr_final_deadline_s, config.asr_window_s, config.asr_short_window_s
        )
        self._decoding: dict[int, float] = {}  # worker -> when its current decode began
        self.busy_s: dict[str, float] = {"final": 0.0, "partial": 0.0}  # workers' decode time
        self._partials_decoding = 0
        self.partial_slots = max(1, self.workers - 1)  # workers that may decode partials
        # Partials are decoded greedily in a window as short as their audio allows (at least
        # PARTIAL_WINDOW_S): words that may still change, at a third of a final's cost or less.
        self._partial_window_s = min(PARTIAL_WINDOW_S, config.asr_window_s)
        self._started = 0
        self.workers_started = trio.Event()  # every worker has loaded its engine (or failed)

    def backlog_gauge(self) -> dict[str, float]:
        """Utterances being decoded by each worker, waiting, and chunks not yet assembled."""
        out = {f'worker="{i}"': float(i in self._decoding) for i in range(self.workers)}
        out['worker="queued"'] = float(self.board.queue.finals_waiting())
        out['worker="deferred"'] = float(len(self.board.feed))
        return out

    async def worker(self, index: int) -> None:
        """Decode utterances the fair queue hands out, one at a time, in one process."""
        board = self.board
        init = {"op": "init", "options": self.options.to_dict()}
        worker = WorkerProcess(index, init)
        async with trio.open_nursery() as processes:
            try:
                try:  # load the model now, not when the first words are waiting
                    await worker.start(processes)
                except (EngineError, WorkerDied) as exc:
                    logger.warning("transcription worker %d did not start: %s", index, exc)
                self._started += 1
                if self._started == self.workers:
                    self.workers_started.set()
                while True:
                    # Partials never hold every worker: one stays free for the next final.
                    taken = board.queue.take(partials=self._partials_decoding < self.partial_slots)
                    if taken is None:
                        await board.wait_change()
                        continue
                    key, pack, final = taken
                    began = self._decoding[index] = trio.current_time()
                    self._partials_decoding += not final
                    session = board.sessions.get(key)
                    window_s = self._window_s(pack) if final else self._partial_window_s
                    # A final in the full window hears its context (a short one would have
                    # to grow its window for it); the words of the context leave the prompt.
                    pcm, context_ms = pack.audio(context=final and window_s == 0.0)
                    text = "" if session is None else prompt(
                        session.vocabulary,
                        session.previous.before_last() if context_ms
                        else session.previous.before(pack.start_ms),
                    )  # fmt: skip
                    try:
                        answer = await self._decode(worker, processes, pack, pcm, text, window_s)
                    finally:
                        del self._decoding[index]
                        self.busy_s["final" if final else "partial"] += trio.current_time() - began
                        self._partials_decoding -= not final
                        board.queue.done(key)
                        board.wake()
                    session = board.sessions.get(key)
                    if session is None:
                        continue
                    short = window_s > 0
                    if pack.early:
                        applied = self._early_decoded(session, pack, answer, short, context_ms)
                    elif final:
                        self.results.apply(session, pack, answer, short=short,
                                           context_ms=context_ms)  # fmt: skip
                        applied = True
                    else:
                        self.results.apply_partial(session, pack, answer)
                        continue
                    # The words are placed (the session's next decode may go); the worker
                    # goes on while they are stored.
                    alone = len(pack.utterances) == 1  # as a live final is
                    if applied:
                        processes.start_soon(self._store, session, began, window_s, alone)
                    elif alone:  # an early final kept until its utterance closes
                        self.deadline.took(trio.current_time() - began, window_s)
            finally:
                await worker.aclose()

    async def _store(
        self, session: SessionState, began: float, window_s: float, alone: bool
    ) -> None:
        """Store a final's words; a live final's time, from its decode's start until its
        words are stored (and so sent), is what its deadline is reckoned with."""
        await self.results.complete(session)
        if alone:
            self.deadline.took(trio.current_time() - began, window_s)

    def _early_decoded(
        self,
        session: SessionState,
        pack: Pack,
        answer: dict[str, Any],
        short: bool,
        context_ms: float,
    ) -> bool:
        """An early final decoded: the utterance's final if it closed as foreseen (True:
        its words are placed, to be stored), kept for when it does if it is still open (and
        shown as a partial meanwhile); a failed one is let go while it is open."""
        early = session.early
        if early is not None and early.pack is pack:
            if not early.closed and not answer.get("ok"):  # failed while the utterance is
                session.early = None  # open: the close queues it again, as any final
                self.board.early_counts["unused"] += 1
                return False
            early.answer = (answer, short, context_ms)
            if early.closed:
                self.results.apply_early(session, early)
                return True
        self.results.apply_partial(session, pack, answer, context_ms)
        return False

    def _window_s(self, pack: Pack) -> float:
        """The shortest window for a final pack: the engine's, or the short one when it is
        late (``context.Deadline``)."""
        waited = trio.current_time() - pack.since
        return self.deadline.window_s(waited, alone=len(pack.utterances) == 1)

    async def _decode(
        self,
        worker: WorkerProcess,
        processes: trio.Nursery,
        pack: Pack,
        pcm: bytes,
        prompt_text: str,
        window_s: float,
    ) -> dict[str, Any]:
        """The worker's answer for *pack*, whose audio (with its context or not) is *pcm*
        (``{ok: false, error}`` when it failed); word times from the start of *pcm*."""
        seconds = len(pcm) / 2 / 16000
        try:
            if not worker.running:
                await worker.start(processes)
            message = {"op": "decode", "pcm": pcm, "offset_ms": 0.0,
                       "partial": not pack.final, "prompt": prompt_text,
                       "window_s": window_s}  # fmt: skip
            return await worker.request(
                message, REQUEST_BASE_TIMEOUT_S + REQUEST_PER_AUDIO_S * seconds
            )
        except EngineError as exc:
            return {"ok": False, "error": str(exc)}
        except WorkerDied as exc:
            logger.warning("transcription worker %d: %s; restarting it", worker.index, exc)
            self.board.counts["worker_restarts"] += 1
            return {"ok": False, "error": f"the transcription worker failed: {exc}"}
