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
  worker at once (one stays free for the next final, when there are two or more); a
  partial's words are published once two consecutive hypotheses agree on them
  (LocalAgreement-2).
- A chunk's transcript is done once every utterance that overlaps it is decoded: its words
  (those that start inside it) go into a durable update through the store.
- ``finalize`` ends the session's open utterance now and returns once its words are stored;
  a session silent for ``asr_idle_timeout_s`` is finalized and forgotten.
- At start every chunk the store replayed as ``pending`` is queued again, in session and seq
  order, a slice at a time.

Resource handling: ``run`` owns the feeder and the workers; each worker runs its process in a
nursery of its own (``process.py``). Memory is bounded by ``asr_backlog_bytes`` (PCM kept for
chunks not yet assembled, plus the audio of utterances waiting to be decoded; past it a
chunk's audio is read back from the log in its turn and the feeder waits for the workers),
the reorder buffers (``asr_backlog`` chunks per session) and the open utterances (at most
``asr_max_utterance_s`` each).

Error handling: a chunk whose audio cannot be read or decoded, or whose utterance's decode
failed (the worker died, timed out or the engine failed), gets ``transcript.status: failed``
with the reason; a dead worker is started again for the next utterance. A store update that
fails leaves the chunk ``pending`` (it is queued at start-up).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
from typing import Any, Final, Protocol

import attrs
import numpy as np
import trio

from ..audio import features, vad
from ..audio.decode import RawFormat, decode
from ..config import Config
from ..errors import NotFound, ServiceError
from ..live import LivePort, Partial, SpeechChange
from ..metrics import Metrics
from ..store.events import ChunkStored
from .context import Deadline, PreviousWords, prompt
from .engine import EngineError, EngineOptions, check_options
from .fair import FairQueue
from .process import WorkerDied, WorkerProcess
from .reorder import Reorder
from .utterances import Assembler, Pack, Utterance, packs, single

logger = logging.getLogger("trio_audio.asr")

REQUEST_BASE_TIMEOUT_S: Final = 30.0  # plus REQUEST_PER_AUDIO_S per second of audio
REQUEST_PER_AUDIO_S: Final = 2.0
JANITOR_PERIOD_FRACTION: Final = 0.25  # of the idle timeout
REORDER_WAIT_S: Final = 1.0  # how long a chunk waits for a missing earlier seq
REQUEUE_SLICE: Final = 256  # pending chunks queued at start-up between checkpoints
PACK_MS: Final = 29_500.0  # audio of utterances decoded together in one 30 s window

Key = tuple[str, str]


class ChunkSource(Protocol):
    """What the transcriber reads of the store, and its one write."""

    async def get(self, chunk_id: str) -> dict[str, Any]: ...

    def has(self, chunk_id: str) -> bool: ...

    def transcript_status(self, chunk_id: str) -> str | None: ...

    def offset_ms(self, chunk_id: str) -> float | None: ...

    def chunks_after(
        self, user_id: str, session_id: str, seq: int | None
    ) -> list[tuple[int, str]]: ...

    def pending_transcripts(self) -> list[str]: ...

    async def read_audio(self, chunk_id: str) -> tuple[bytes, str]: ...

    async def update(self, chunk_id: str, fields: dict[str, Any]) -> dict[str, Any]: ...


def default_workers() -> int:
    """Worker processes when ``asr_workers`` is 0: one per core. They run at a lower CPU
    priority (``worker.NICE``), so ingestion still has a core whenever it needs one."""
    return len(os.sched_getaffinity(0))


@attrs.define(eq=False)
class Item:
    """A stored chunk on its way to the assembler."""

    chunk_id: str
    key: Key
    seq: int
    offset_ms: float
    duration_ms: float
    pcm: bytes | None
    since: float  # trio time it was offered
    segments: list[dict[str, float]] = attrs.field(factory=list)  # its speech
    transcribe: bool = True  # False: its status is not pending (VAD events only)


@attrs.define(eq=False)
class Span:
    """A chunk whose transcript is not final yet: the words that start inside it."""

    chunk_id: str
    seq: int
    start_ms: float
    end_ms: float
    since: float
    words: list[dict[str, Any]] = attrs.field(factory=list)
    failed: str | None = None  # why, when an utterance over it could not be decoded
    short_window: bool = False  # an utterance over it was decoded in the short window


@attrs.define(eq=False)
class SessionState:
    key: Key
    activity: vad.SessionActivity
    last_active: float
    order: Reorder[Item]
    assembler: Assembler
    awaiting: collections.deque[Span] = attrs.field(factory=collections.deque)
    finals: collections.deque[Utterance] = attrs.field(factory=collections.deque)  # undecoded
    feeding: int = 0  # chunks handed to the feeder, not yet assembled
    last_seq: int = -1
    partial_at: float = -1e9
    heard: list[str] = attrs.field(factory=list)  # the last partial hypothesis' words
    stable: int = 0  # words of the open utterance published as agreed
    completing: trio.Lock = attrs.field(factory=trio.Lock)
    previous: PreviousWords = attrs.field(factory=PreviousWords)  # for the next prompt
    vocabulary: tuple[str, ...] = ()  # words the session expects

    @property
    def busy(self) -> bool:
        return bool(self.order.waiting or self.feeding or self.finals or self.awaiting)


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
        self.store = store
        self.live = live
        self.metrics = metrics
        self.limiter = limiter
        self.enabled = config.asr_engine != "none"
        self.workers = config.asr_workers or default_workers()
        self.options = EngineOptions(
            engine=config.asr_engine,
            model_dir=config.asr_model_dir,
            grammar=config.asr_grammar,
            keyphrases=config.asr_keyphrases,
            window_s=config.asr_window_s,
        )
        self.sessions: dict[Key, SessionState] = {}
        self.counts: collections.Counter[str] = collections.Counter()
        self.pcm_bytes = 0  # PCM held: chunks not yet assembled and utterances not decoded
        self.running = False
        self.queue: FairQueue[Key, Pack] = FairQueue()
        self.deadline = Deadline(
            config.asr_final_deadline_s, config.asr_window_s, config.asr_short_window_s
        )
        self._feed: collections.deque[tuple[SessionState, Item]] = collections.deque()
        self._decoding: dict[int, float] = {}  # worker -> when its current decode began
        self._partials_decoding = 0
        self.partial_slots = max(1, self.workers - 1)  # workers that may decode partials
        # Partials are decoded greedily in a window as short as their audio allows.
        self._partial_window_s = min(config.asr_short_window_s, config.asr_window_s)
        self._reordering: set[Key] = set()  # sessions with chunks waiting for an earlier seq
        self._changed = trio.Event()  # set whenever work is added or done
        self._stopped = trio.Event()
        self._scope: trio.CancelScope | None = None
        self._started = 0
        self.workers_started = trio.Event()  # every worker has loaded its engine (or failed)

    # -- lifecycle -------------------------------------------------------------------------

    async def run(
        self, *, task_status: trio.TaskStatus[Transcriber] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Start the feeder and workers, queue what the store left pending, report ready;
        run until stopped."""
        if self.enabled:
            check_options(self.options)
        self._register_metrics()
        try:
            with trio.CancelScope() as self._scope:
                async with trio.open_nursery() as nursery:
                    if self.enabled:
                        nursery.start_soon(self._feeder)
                        for index in range(self.workers):
                            nursery.start_soon(self._worker, index)
                    self.running = True
                    if self.enabled:
                        nursery.start_soon(self._requeue_pending)
                    nursery.start_soon(self._janitor)
                    nursery.start_soon(self._reorder_timer)
                    task_status.started(self)
        finally:
            self.running = False
            self._stopped.set()
            self._wake()

    def stop(self) -> None:
        """Stop now; chunks not transcribed stay ``pending`` and are queued at the next start."""
        if self._scope is not None:
            self._scope.cancel()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def _wait_change(self) -> None:
        await self._changed.wait()

    def _register_metrics(self) -> None:
        self.metrics.gauge("trio_audio_transcribe_backlog", self._backlog_gauge)
        self.metrics.gauge("trio_audio_transcribe_lag_seconds", lambda: {"": self.lag_s()})
        self.metrics.gauge(
            "trio_audio_transcribe_sessions", lambda: {'state="live"': len(self.sessions)}
        )
        self.metrics.gauge(
            "trio_audio_transcripts",
            lambda: {f'status="{k}"': float(v) for k, v in sorted(self.counts.items())},
        )
        self.metrics.gauge(  # finals decoded in the full window, or shortened for a deadline
            "trio_audio_transcribe_final_decodes",
            lambda: {f'window="{k}"': float(self.deadline.counts[k]) for k in ("full", "short")},
        )

    def _backlog_gauge(self) -> dict[str, float]:
        """Utterances being decoded by each worker, waiting, and chunks not yet assembled."""
        out = {f'worker="{i}"': float(i in self._decoding) for i in range(self.workers)}
        out['worker="queued"'] = float(self.queue.finals_waiting())
        out['worker="deferred"'] = float(len(self._feed))
        return out

    def lag_s(self, key: Key | None = None) -> float:
        """Age of the oldest chunk offered but not yet transcribed (0 when none waits): of
        the session *key* (user_id, session_id), or of all sessions when None."""
        sessions = self.sessions.values() if key is None else [self.sessions.get(key)]
        oldest = [s.awaiting[0].since for s in sessions if s is not None and s.awaiting]
        oldest += [item.since for state, item in self._feed if key is None or state.key == key]
        return max(0.0, trio.current_time() - min(oldest)) if oldest else 0.0

    # -- taking chunks -----------------------------------------------------------------------

    def offer(self, event: ChunkStored) -> None:
        """A newly stored chunk: put in seq order, then VAD and transcription. Never waits."""
        self._arrive(self._item(event.chunk, event.speech_pcm))

    async def offer_stored(self, chunk_id: str) -> None:
        """Queue a stored chunk (its audio read back from the log when its turn comes);
        ``NotFound`` when it is no longer stored."""
        self._arrive(self._item(await self.store.get(chunk_id), None))

    def _item(self, chunk: dict[str, Any], pcm: bytes | None) -> Item:
        transcribe = self.enabled and self.running and chunk["transcript"]["status"] == "pending"
        if not transcribe or (
            pcm is not None and self.pcm_bytes + len(pcm) > self.config.asr_backlog_bytes
        ):
            if transcribe and pcm is not None:
                self.counts["deferred"] += 1  # over the budget: read back from the log
            pcm = None
        if pcm is not None:
            self.pcm_bytes += len(pcm)
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

    def _drop_pcm(self, item: Item) -> None:
        if item.pcm is not None:
            self.pcm_bytes -= len(item.pcm)
            item.pcm = None

    def _arrive(self, item: Item) -> None:
        session = self._session(item.key)
        now = session.last_active = trio.current_time()
        for ready in session.order.add(item.seq, item, now):
            self._deliver(session, ready)
        self._note_reordering(session)

    def _release_waiting(self, session: SessionState) -> None:
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
        for seq, chunk_id in reversed(self.store.chunks_after(key[0], key[1], None)):
            if self.store.transcript_status(chunk_id) not in ("pending", None):
                return seq + 1
        return 0

    def _deliver(self, session: SessionState, item: Item) -> None:
        """In seq order: the chunk's VAD events, then (transcribed) to the feeder."""
        offset = self.store.offset_ms(item.chunk_id)  # final now its predecessors are in
        if offset is None:
            self._drop_pcm(item)
            return  # deleted since
        item.offset_ms = offset
        for event, at_ms in session.activity.chunk(offset, item.duration_ms, item.segments):
            self._publish_vad(session.key, event, at_ms)
        if not item.transcribe or not self.running:
            self._drop_pcm(item)
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
        self._feed.append((session, item))
        self._wake()

    async def _reorder_timer(self) -> None:
        """Stop waiting for a missing seq after ``REORDER_WAIT_S`` (it failed or never came)."""
        while True:
            await trio.sleep(REORDER_WAIT_S / 4)
            now = trio.current_time()
            for key in list(self._reordering):
                session = self.sessions.get(key)
                if session is None:
                    self._reordering.discard(key)
                elif session.order.overdue(now, REORDER_WAIT_S):
                    self._release_waiting(session)

    def _session(self, key: Key) -> SessionState:
        session = self.sessions.get(key)
        if session is None:
            session = self.sessions[key] = SessionState(
                key,
                vad.SessionActivity(self.config.vad_gap_ms),
                trio.current_time(),
                Reorder(self._first_seq(key), self.config.asr_backlog),
                Assembler(self.config.vad_gap_ms, self.config.asr_max_utterance_s * 1000),
            )
        return session

    async def _requeue_pending(self) -> None:
        """Queue, in session and seq order, every chunk the store replayed as ``pending``."""
        pending = self.store.pending_transcripts()
        for n, chunk_id in enumerate(pending):
            if self.store.has(chunk_id):
                with contextlib.suppress(NotFound):
                    await self.offer_stored(chunk_id)
            if n % REQUEUE_SLICE == REQUEUE_SLICE - 1:
                await trio.lowlevel.checkpoint()  # a long list never stalls the event loop
        if pending:
            logger.info("queued %d chunks left pending for transcription", len(pending))

    # -- the feeder: chunks -> utterances ----------------------------------------------------

    async def _feeder(self) -> None:
        """Assemble chunks into utterances in the order they were delivered."""
        while True:
            if not self._feed or self.pcm_bytes > self.config.asr_backlog_bytes:
                await self._wait_change()  # no chunk, or decoded audio must go out first
                continue
            session, item = self._feed.popleft()
            try:
                await self._assemble(session, item)
            finally:
                session.feeding -= 1
                self._drop_pcm(item)
                self._wake()

    async def _assemble(self, session: SessionState, item: Item) -> None:
        try:
            pcm = item.pcm if item.pcm is not None else await self._read_pcm(item.chunk_id)
        except (ServiceError, ValueError, OSError) as exc:
            for span in session.awaiting:
                if span.chunk_id == item.chunk_id:
                    span.failed = f"its audio could not be read back: {exc}"
            await self._complete(session)
            return
        segments = [(s["start_ms"], s["end_ms"]) for s in item.segments]
        samples = np.frombuffer(pcm, dtype="<i2")
        self._queue_finals(session, session.assembler.add(item.offset_ms, samples, segments))
        self._maybe_partial(session)
        await self._complete(session)

    def _queue_finals(self, session: SessionState, utterances: list[Utterance]) -> None:
        """Utterances finished together (by one chunk) go to be decoded in packs."""
        if not utterances:
            return
        for utterance in utterances:
            session.finals.append(utterance)
            self.pcm_bytes += len(utterance.pcm)
        now = trio.current_time()
        for pack in packs(utterances, PACK_MS):
            self.queue.put_final(session.key, attrs.evolve(pack, since=now))
        session.heard, session.stable = [], 0
        self._wake()

    def set_vocabulary(self, user_id: str, session_id: str, terms: tuple[str, ...]) -> None:
        """Words and phrases the session expects (checked by ``context.parse_vocabulary``):
        the start of every prompt of its decodes from now on."""
        if self.enabled:
            self._session((user_id, session_id)).vocabulary = terms

    def _maybe_partial(self, session: SessionState) -> None:
        interval = self.config.asr_partial_interval_s
        now = trio.current_time()
        if interval <= 0 or now - session.partial_at < interval:
            return
        partial = session.assembler.partial()
        if partial is not None:
            session.partial_at = now
            self.queue.put_partial(session.key, single(partial))
            self._wake()

    # -- workers: utterances -> words --------------------------------------------------------

    async def _worker(self, index: int) -> None:
        """Decode utterances the fair queue hands out, one at a time, in one process."""
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
                    taken = self.queue.take(partials=self._partials_decoding < self.partial_slots)
                    if taken is None:
                        await self._wait_change()
                        continue
                    key, pack, final = taken
                    began = self._decoding[index] = trio.current_time()
                    self._partials_decoding += not final
                    session = self.sessions.get(key)
                    window_s = self._window_s(pack) if final else self._partial_window_s
                    text = prompt(session.vocabulary, session.previous.words) if session else ""
                    try:
                        answer = await self._decode(worker, processes, pack, text, window_s)
                        if final and len(pack.utterances) == 1:  # as a live final is
                            self.deadline.took(trio.current_time() - began, window_s)
                    finally:
                        del self._decoding[index]
                        self._partials_decoding -= not final
                        self.queue.done(key)
                        self._wake()
                    session = self.sessions.get(key)
                    if session is None:
                        continue
                    if final:
                        await self._apply_final(session, pack, answer, short=window_s > 0)
                    else:
                        self._apply_partial(session, pack, answer)
            finally:
                await worker.aclose()

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
        prompt_text: str,
        window_s: float,
    ) -> dict[str, Any]:
        """The worker's answer for *pack* (``{ok: false, error}`` when it failed); word
        times from the start of its audio."""
        seconds = pack.seconds
        try:
            if not worker.running:
                await worker.start(processes)
            message = {"op": "decode", "pcm": pack.pcm, "offset_ms": 0.0,
                       "partial": not pack.final, "prompt": prompt_text,
                       "window_s": window_s}  # fmt: skip
            return await worker.request(
                message, REQUEST_BASE_TIMEOUT_S + REQUEST_PER_AUDIO_S * seconds
            )
        except EngineError as exc:
            return {"ok": False, "error": str(exc)}
        except WorkerDied as exc:
            logger.warning("transcription worker %d: %s; restarting it", worker.index, exc)
            self.counts["worker_restarts"] += 1
            return {"ok": False, "error": f"the transcription worker failed: {exc}"}

    async def _apply_final(
        self, session: SessionState, pack: Pack, answer: dict[str, Any], *, short: bool
    ) -> None:
        owned = pack.own_words(answer["words"]) if answer.get("ok") else None
        for i, utterance in enumerate(pack.utterances):
            words = owned[i] if owned is not None else None
            self._apply_utterance(session, utterance, answer, words, short=short)
        await self._complete(session)

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
            self.pcm_bytes -= len(utterance.pcm)
        if words is None:
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
                _place(session.awaiting, word)

    def _apply_partial(self, session: SessionState, pack: Pack, answer: dict[str, Any]) -> None:
        """LocalAgreement-2: publish the words two consecutive hypotheses agree on."""
        if not answer.get("ok") or not session.assembler.open:
            return
        if session.finals:  # the utterance it heard has ended meanwhile
            return
        words = pack.own_words(answer["words"])[0]
        heard = [w["word"] for w in words]
        agreed = 0
        for old, new in zip(session.heard, heard, strict=False):
            if old != new:
                break
            agreed += 1
        session.heard = heard
        if agreed > session.stable:
            session.stable = agreed
            user_id, session_id = session.key
            self.live.publish(Partial(user_id, session_id, session.last_seq, words[:agreed],
                                      pack.start_ms, pack.utterances[-1].end_ms))  # fmt: skip

    async def _complete(self, session: SessionState) -> None:
        """Store the transcript of every chunk all of whose utterances are decoded.

        A chunk leaves ``awaiting`` only once its update is stored, so ``finalize`` returns
        after the words are durable; the session's lock keeps the feeder and a worker from
        storing the same chunk twice."""
        async with session.completing:
            while session.awaiting:
                span = session.awaiting[0]
                limit = (
                    session.finals[0].start_ms
                    if session.finals
                    else session.assembler.final_until_ms
                )
                if span.end_ms > limit + 0.5 and not span.failed:
                    break
                if span.failed:
                    await self._fail(span, span.failed)
                else:
                    await self._done(span)
                session.awaiting.popleft()
        self._wake()

    # -- finishing ---------------------------------------------------------------------------

    async def finalize(self, user_id: str, session_id: str) -> None:
        """End the session's utterance now; returns once its chunks' words are stored.

        Returns at once when transcription is off or stopped, or the session has nothing in
        flight."""
        key = (user_id, session_id)
        session = self.sessions.get(key)
        if session is None:
            return
        self._release_waiting(session)
        self._end_speech(session)
        if not self.enabled:
            return
        while self.running and session.feeding:
            await self._wait_change()
        self._end_utterance(session)
        await self._complete(session)
        while self.running and (session.finals or session.awaiting):
            await self._wait_change()

    async def _janitor(self) -> None:
        """Finalize and forget sessions idle for ``asr_idle_timeout_s``."""
        timeout = self.config.asr_idle_timeout_s
        while True:
            await trio.sleep(timeout * JANITOR_PERIOD_FRACTION)
            now = trio.current_time()
            for key, session in list(self.sessions.items()):
                if now - session.last_active < timeout:
                    continue
                self._end_speech(session)
                if session.assembler.open:
                    self._end_utterance(session)
                    continue  # forgotten on a later round, once its words are stored
                if session.busy:
                    continue
                if self.sessions.get(key) is session:
                    del self.sessions[key]
                    self.queue.forget(key)

    def _end_speech(self, session: SessionState) -> None:
        """The session's speech is over for now: its ``speech_stopped``, if it was speaking."""
        for event, at_ms in session.activity.end():
            self._publish_vad(session.key, event, at_ms)

    def _end_utterance(self, session: SessionState) -> None:
        """No more audio is coming now: the open utterance goes to be decoded."""
        self._queue_finals(session, session.assembler.finish())

    # -- results -----------------------------------------------------------------------------

    async def _read_pcm(self, chunk_id: str) -> bytes:
        """A stored chunk's audio as 16 kHz 16-bit mono, decoded again from the log."""
        data, content_type = await self.store.read_audio(chunk_id)
        info = (await self.store.get(chunk_id))["audio"]
        raw = None
        if info["container"] == "raw":
            raw = RawFormat(info["encoding"], info["sample_rate"], info["channels"])

        def convert() -> bytes:
            decoded = decode(data, content_type=content_type, raw=raw)
            mono = features.downmix(decoded.samples)
            return vad.speech_pcm(mono, decoded.sample_rate).tobytes()

        return await trio.to_thread.run_sync(convert, limiter=self.limiter)

    async def _done(self, span: Span) -> None:
        transcript: dict[str, Any] = {
            "status": "done",
            "text": " ".join(w["word"] for w in span.words),
            "words": span.words,
        }
        if span.words:  # where the chunk started on its session's timeline when its words
            transcript["offset_ms"] = round(span.start_ms, 3)  # were timed (for exports)
        if span.short_window:
            transcript["short_window"] = True
        if await self._update(span.chunk_id, transcript):
            self.counts["done"] += 1
            self.metrics.observe_stage("transcribe", trio.current_time() - span.since)

    async def _fail(self, span: Span, reason: str) -> None:
        logger.warning("transcription of chunk %s failed: %s", span.chunk_id, reason)
        transcript = {"status": "failed", "text": "", "words": [], "error": reason}
        if await self._update(span.chunk_id, transcript):
            self.counts["failed"] += 1

    async def _update(self, chunk_id: str, transcript: dict[str, Any]) -> bool:
        try:
            await self.store.update(chunk_id, {"transcript": transcript})
        except NotFound:
            return False  # deleted since
        except (OSError, ServiceError) as exc:  # the store is closing, full or failed (if an
            # fsync failed, the store itself stops the service): the chunk stays pending
            logger.warning("transcript of chunk %s not stored (%s); stays pending", chunk_id, exc)
            return False
        return True

    def _publish_vad(self, key: Key, event: str, at_ms: float) -> None:
        self.live.publish(SpeechChange(key[0], key[1], event, at_ms))


def _place(awaiting: collections.deque[Span], word: dict[str, Any]) -> None:
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
