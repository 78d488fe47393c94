"""The transcriber: stored chunks -> worker processes -> transcript updates and live messages.

::

    fan-out ──offer()──> reorder (per session) ──> lane 0 (bounded) ──> worker process 0
    (never waits)                              └──> lane 1 (bounded) ──> worker process 1
         full lane: the chunk stays ``pending`` in ``deferred`` and is moved in when there is
         room (a session with deferred chunks sends all its later ones there too, in order)

- The service's fan-out calls ``offer`` with each ``ChunkStored`` event; a session's chunks
  are put back in seq order (``reorder.py``) and then pinned to one lane, so they reach one
  decoder stream in order. A lane sends one request at a time to its process and applies the
  answer: partial and final ``transcript`` messages go to the session's watchers through the
  hub; a chunk whose span is final gets ``transcript {status: done, text, words}`` as a
  durable update through the store.
- Voice activity needs no worker: a chunk's speech segments become the session's
  ``vad {event, at_ms}`` messages as soon as it is in order.
- A session silent for ``asr_idle_timeout_s`` is closed (its utterance ends, its decoder goes
  back to the pool); ``finalize`` does the same on demand and returns once the words are out.
- At start every chunk the store replayed as ``pending`` is queued again, in session and seq
  order, a slice at a time.

Resource handling: ``run`` owns the lanes and their worker processes (each lane runs its
process in its own nursery: ``process.py``) and ends them when cancelled (``stop``). Memory is
bounded by the lanes (``asr_backlog`` chunks each), the reorder buffers (``asr_backlog`` per
session) and the PCM they hold (``asr_backlog_bytes`` in all, counted from ``offer`` until
the chunk is done; past it audio is re-read from the log when its turn comes).

Error handling: a chunk whose audio cannot be read or decoded, or whose worker died or timed
out, gets ``transcript.status: failed`` with the reason; the worker is restarted for the next
chunk. A store update that fails leaves the chunk ``pending`` (it is queued at start-up).
"""

from __future__ import annotations

import collections
import logging
from typing import Any, Final, Protocol

import attrs
import trio

from ..audio import features, vad
from ..audio.decode import RawFormat, decode
from ..config import Config
from ..errors import NotFound, ServiceError
from ..hub import Hub
from ..metrics import Metrics
from ..store.events import ChunkStored
from .engine import EngineError, EngineOptions, check_options
from .process import WorkerDied, WorkerProcess
from .protocol import Key, unwire_key, wire_key
from .reorder import Reorder

logger = logging.getLogger("trio_audio.asr")

REQUEST_BASE_TIMEOUT_S: Final = 30.0  # plus REQUEST_PER_AUDIO_S per second of audio
REQUEST_PER_AUDIO_S: Final = 2.0
JANITOR_PERIOD_FRACTION: Final = 0.25  # of the idle timeout
REORDER_WAIT_S: Final = 1.0  # how long a chunk waits for a missing earlier seq
REQUEUE_SLICE: Final = 256  # pending chunks queued at start-up between checkpoints


class ChunkSource(Protocol):
    """What the transcriber reads of the store, and its one write."""

    def get(self, chunk_id: str) -> dict[str, Any]: ...

    def has(self, chunk_id: str) -> bool: ...

    def chunks_after(
        self, user_id: str, session_id: str, seq: int | None
    ) -> list[tuple[int, str]]: ...

    def pending_transcripts(self) -> list[str]: ...

    async def read_audio(self, chunk_id: str) -> tuple[bytes, str]: ...

    async def update(self, chunk_id: str, fields: dict[str, Any]) -> dict[str, Any]: ...


@attrs.define(eq=False)
class Item:
    """A stored chunk waiting for its turn."""

    chunk_id: str
    key: Key
    seq: int
    offset_ms: float
    duration_ms: float
    pcm: bytes | None
    since: float  # trio time it was offered
    segments: list[dict[str, float]] = attrs.field(factory=list)  # its speech, for VAD events
    transcribe: bool = True  # False: its status is not pending (VAD events only)


@attrs.define(eq=False)
class Finish:
    """End a session's utterance (``close``: and forget the session); ``done`` when out."""

    key: Key
    close: bool
    done: trio.Event = attrs.field(factory=trio.Event)


@attrs.define(eq=False)
class Span:
    """A chunk fed to its decoder whose transcript is not final yet."""

    chunk_id: str
    seq: int
    start_ms: float
    end_ms: float
    since: float
    words: list[dict[str, Any]] = attrs.field(factory=list)


@attrs.define(eq=False)
class SessionState:
    key: Key
    lane: int
    activity: vad.SessionActivity
    last_active: float
    order: Reorder[Item]
    queued: int = 0  # items in a lane or deferred
    deferred: int = 0
    closing: bool = False
    last_seq: int = -1
    awaiting: collections.deque[Span] = attrs.field(factory=collections.deque)


class Transcriber:
    """Hands stored chunks to worker processes; publishes and stores what comes back.

    Build it in ``serve``, start ``run`` with ``nursery.start``. ``offer`` takes the store's
    ``ChunkStored`` events (never blocks); ``finalize`` is for the WebSocket's ``finalize``
    and ``end``.
    """

    def __init__(
        self,
        config: Config,
        store: ChunkSource,
        hub: Hub,
        metrics: Metrics,
        limiter: trio.CapacityLimiter,
    ) -> None:
        self.config = config
        self.store = store
        self.hub = hub
        self.metrics = metrics
        self.limiter = limiter
        self.enabled = config.asr_engine != "none"
        self.options = EngineOptions(
            engine=config.asr_engine,
            model_dir=config.asr_model_dir,
            grammar=config.asr_grammar,
            keyphrases=config.asr_keyphrases,
        )
        self.sessions: dict[Key, SessionState] = {}
        self.deferred: dict[str, Item] = {}  # chunk_id -> item, in the order offered
        self.counts: collections.Counter[str] = collections.Counter()
        self.pcm_bytes = 0  # PCM kept in memory for chunks offered and not yet done
        self.running = False
        self._lanes: list[trio.MemorySendChannel[Item | Finish]] = []
        self._in_lanes: dict[str, Item] = {}  # items sent to a lane, not yet done
        self._reordering: set[Key] = set()  # sessions with chunks waiting for an earlier seq
        self._lane_sessions = [0] * config.asr_workers
        self._room = trio.Event()
        self._stopped = trio.Event()
        self._scope: trio.CancelScope | None = None

    # -- lifecycle -------------------------------------------------------------------------

    async def run(
        self, *, task_status: trio.TaskStatus[Transcriber] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Start the lanes, queue what the store left pending, report ready; run until stopped."""
        if self.enabled:
            check_options(self.options)
        self._register_metrics()
        try:
            with trio.CancelScope() as self._scope:
                async with trio.open_nursery() as nursery:
                    if self.enabled:
                        for index in range(self.config.asr_workers):
                            send, receive = trio.open_memory_channel[Item | Finish](
                                self.config.asr_backlog
                            )
                            self._lanes.append(send)
                            nursery.start_soon(self._lane, index, receive)
                        nursery.start_soon(self._feed_deferred)
                    self.running = True
                    if self.enabled:
                        nursery.start_soon(self._requeue_pending)
                    nursery.start_soon(self._janitor)
                    nursery.start_soon(self._reorder_timer)
                    task_status.started(self)
        finally:
            self.running = False
            for lane in self._lanes:  # the transcriber owns the lanes' send ends
                lane.close()
            self._stopped.set()

    def stop(self) -> None:
        """Stop now; chunks not transcribed stay ``pending`` and are queued at the next start."""
        if self._scope is not None:
            self._scope.cancel()

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

    def _backlog_gauge(self) -> dict[str, float]:
        """Chunks queued in each worker's lane, and those deferred outside the lanes."""
        out = {
            f'worker="{i}"': float(lane.statistics().current_buffer_used)
            for i, lane in enumerate(self._lanes)
        }
        out['worker="deferred"'] = float(len(self.deferred))
        return out

    def lag_s(self) -> float:
        """Age of the oldest chunk offered but not yet transcribed (0 when none waits)."""
        oldest = [i.since for i in self.deferred.values()]
        oldest += [s.awaiting[0].since for s in self.sessions.values() if s.awaiting]
        oldest += [i.since for i in self._in_lanes.values()]
        return max(0.0, trio.current_time() - min(oldest)) if oldest else 0.0

    # -- taking chunks -----------------------------------------------------------------------

    def offer(self, event: ChunkStored) -> None:
        """A newly stored chunk: put in seq order, then VAD and transcription. Never waits."""
        self._arrive(self._item(event.chunk, event.speech_pcm))

    def offer_stored(self, chunk_id: str) -> None:
        """Queue a stored chunk (its audio read back from the log when its turn comes)."""
        self._arrive(self._item(self.store.get(chunk_id), None))

    def _item(self, chunk: dict[str, Any], pcm: bytes | None) -> Item:
        transcribe = self.enabled and self.running and chunk["transcript"]["status"] == "pending"
        if not transcribe or (
            pcm is not None and self.pcm_bytes + len(pcm) > self.config.asr_backlog_bytes
        ):
            pcm = None  # not needed, or over the budget: read back from the log in its turn
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
        first = 0
        for seq, chunk_id in self.store.chunks_after(key[0], key[1], None):
            if self.store.get(chunk_id)["transcript"]["status"] != "pending":
                first = seq + 1
        return first

    def _deliver(self, session: SessionState, item: Item) -> None:
        """In seq order: the chunk's VAD events, then its transcription."""
        if not self.store.has(item.chunk_id):
            self._drop_pcm(item)
            return  # deleted since
        offset = self.store.get(item.chunk_id)["offset_ms"]  # final now its predecessors are in
        item.offset_ms = float(offset)
        for event, at_ms in session.activity.chunk(offset, item.duration_ms, item.segments):
            self._publish_vad(session.key, event, at_ms)
        if item.transcribe:
            self._queue(session, item)
        else:
            self._drop_pcm(item)

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
            lane = self._lane_sessions.index(min(self._lane_sessions)) if self.enabled else 0
            self._lane_sessions[lane] += 1
            session = self.sessions[key] = SessionState(
                key,
                lane,
                vad.SessionActivity(self.config.vad_gap_ms),
                trio.current_time(),
                Reorder(self._first_seq(key), self.config.asr_backlog),
            )
        return session

    def _queue(self, session: SessionState, item: Item) -> None:
        if not self.running:
            self._drop_pcm(item)
            return  # stopped: it stays pending, queued again at the next start
        session.queued += 1
        if session.deferred == 0:
            try:
                self._lanes[session.lane].send_nowait(item)
            except trio.WouldBlock:
                pass
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._drop_pcm(item)  # stopping: it stays pending, queued at the next start
                return
            else:
                self._in_lanes[item.chunk_id] = item
                return
        self._drop_pcm(item)
        session.deferred += 1
        self.deferred[item.chunk_id] = item
        self.counts["deferred"] += 1

    async def _requeue_pending(self) -> None:
        """Queue, in session and seq order, every chunk the store replayed as ``pending``."""
        pending = self.store.pending_transcripts()
        for n, chunk_id in enumerate(pending):
            if self.store.has(chunk_id):
                self.offer_stored(chunk_id)
            if n % REQUEUE_SLICE == REQUEUE_SLICE - 1:
                await trio.lowlevel.checkpoint()  # a long list never stalls the event loop
        if pending:
            logger.info("queued %d chunks left pending for transcription", len(pending))

    async def _feed_deferred(self) -> None:
        """Move deferred chunks into their lanes as room appears, each session in order."""
        while True:
            await self._room.wait()
            self._room = trio.Event()
            blocked: set[Key] = set()
            for chunk_id, item in list(self.deferred.items()):
                if item.key in blocked:
                    continue
                session = self.sessions.get(item.key) or self._session(item.key)
                try:
                    self._lanes[session.lane].send_nowait(item)
                except trio.WouldBlock:
                    blocked.add(item.key)
                    continue
                del self.deferred[chunk_id]
                session.deferred -= 1
                self._in_lanes[chunk_id] = item

    # -- finishing ---------------------------------------------------------------------------

    async def finalize(self, user_id: str, session_id: str) -> None:
        """End the session's utterance now; returns once its final words are out.

        Chunks still queued for it are transcribed first. Returns at once when transcription
        is off or stopped, or the session has nothing in flight.
        """
        key = (user_id, session_id)
        session = self.sessions.get(key)
        if session is None:
            return
        self._release_waiting(session)
        for event, at_ms in session.activity.end():
            self._publish_vad(key, event, at_ms)
        if not self.enabled or not self.running:
            return
        while session.deferred and self.running:
            await self._room.wait()
        command = Finish(key, close=False)
        async with trio.open_nursery() as nursery:

            async def wait_stopped() -> None:
                await self._stopped.wait()
                nursery.cancel_scope.cancel()

            nursery.start_soon(wait_stopped)
            try:
                await self._lanes[session.lane].send(command)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return  # stopping
            await command.done.wait()
            nursery.cancel_scope.cancel()

    async def _janitor(self) -> None:
        """Close sessions idle for ``asr_idle_timeout_s``: their decoders go back to the pool."""
        timeout = self.config.asr_idle_timeout_s
        while True:
            await trio.sleep(timeout * JANITOR_PERIOD_FRACTION)
            now = trio.current_time()
            for key, session in list(self.sessions.items()):
                busy = session.queued or session.order.waiting or session.closing
                if busy or now - session.last_active < timeout:
                    continue
                for event, at_ms in session.activity.end():
                    self._publish_vad(key, event, at_ms)
                if not self.enabled:
                    self._forget(session)
                    continue
                try:
                    self._lanes[session.lane].send_nowait(Finish(key, close=True))
                except trio.WouldBlock:
                    continue  # the lane is busy: try on the next round
                session.closing = True

    def _forget(self, session: SessionState) -> None:
        if self.sessions.get(session.key) is session:
            del self.sessions[session.key]
            self._lane_sessions[session.lane] -= 1

    # -- a lane: one worker process --------------------------------------------------------

    async def _lane(self, index: int, receive: trio.MemoryReceiveChannel[Item | Finish]) -> None:
        """Feed one worker process, one request at a time; owns its lane's receive end."""
        init = {
            "op": "init",
            "options": self.options.to_dict(),
            "max_streams": self.config.asr_streams_per_worker,
            "vad_mode": self.config.vad_mode,
            "gap_ms": self.config.vad_gap_ms,
            "max_utterance_s": self.config.asr_max_utterance_s,
        }
        worker = WorkerProcess(index, init)
        async with receive, trio.open_nursery() as processes:
            try:
                async for command in receive:
                    self._room.set()
                    if isinstance(command, Finish):
                        await self._finish(worker, command)
                        continue
                    try:
                        await self._transcribe(worker, processes, command)
                    finally:
                        self._in_lanes.pop(command.chunk_id, None)
                        self._drop_pcm(command)
            finally:
                await worker.aclose()

    async def _transcribe(self, worker: WorkerProcess, processes: trio.Nursery, item: Item) -> None:
        session = self.sessions.get(item.key) or self._session(item.key)
        session.queued -= 1
        session.last_active = trio.current_time()
        if not self.store.has(item.chunk_id):
            return  # deleted since
        span = Span(item.chunk_id, item.seq, item.offset_ms, item.offset_ms + item.duration_ms,
                    item.since)  # fmt: skip
        try:
            pcm = item.pcm if item.pcm is not None else await self._read_pcm(item.chunk_id)
            if not worker.running:
                await worker.start(processes)
            timeout = REQUEST_BASE_TIMEOUT_S + REQUEST_PER_AUDIO_S * item.duration_ms / 1000
            message = {"op": "feed", "key": wire_key(item.key), "pcm": pcm,
                       "offset_ms": item.offset_ms}  # fmt: skip
            session.awaiting.append(span)
            session.last_seq = max(session.last_seq, item.seq)
            answer = await worker.request(message, timeout)
        except (ServiceError, EngineError) as exc:
            if span in session.awaiting:
                session.awaiting.remove(span)
            await self._fail([span], f"{exc}")
            return
        except WorkerDied as exc:
            await self._worker_died(worker, str(exc))
            return
        await self._apply(answer, session)

    async def _finish(self, worker: WorkerProcess, command: Finish) -> None:
        try:
            session = self.sessions.get(command.key)
            if session is None or not worker.running:
                return
            op = "close" if command.close else "finish"
            try:
                answer = await worker.request(
                    {"op": op, "key": wire_key(command.key)}, REQUEST_BASE_TIMEOUT_S
                )
            except WorkerDied as exc:
                await self._worker_died(worker, str(exc))
                return
            await self._apply(answer, session)
            if command.close:
                session.closing = False
                if session.queued == 0:
                    self._forget(session)
        finally:
            command.done.set()

    async def _worker_died(self, worker: WorkerProcess, reason: str) -> None:
        """Every session of this worker lost its decoder state: fail its chunks in flight."""
        logger.error("transcription worker %d: %s; restarting it", worker.index, reason)
        self.counts["worker_restarts"] += 1
        await worker.aclose()
        for session in list(self.sessions.values()):
            if session.lane == worker.index and session.awaiting:
                spans = list(session.awaiting)
                session.awaiting.clear()
                await self._fail(spans, f"the transcription worker failed: {reason}")

    async def _read_pcm(self, chunk_id: str) -> bytes:
        """A stored chunk's audio as 16 kHz 16-bit mono, decoded again from the log."""
        data, content_type = await self.store.read_audio(chunk_id)
        info = self.store.get(chunk_id)["audio"]
        raw = None
        if info["container"] == "raw":
            raw = RawFormat(info["encoding"], info["sample_rate"], info["channels"])

        def convert() -> bytes:
            decoded = decode(data, content_type=content_type, raw=raw)
            mono = features.downmix(decoded.samples)
            return vad.speech_pcm(mono, decoded.sample_rate).tobytes()

        return await trio.to_thread.run_sync(convert, limiter=self.limiter)

    # -- results -----------------------------------------------------------------------------

    async def _apply(self, answer: dict[str, Any], fed: SessionState) -> None:
        if not answer.get("ok"):
            spans = list(fed.awaiting)
            fed.awaiting.clear()
            await self._fail(spans, f"the speech engine failed: {answer.get('error')}")
            return
        for result in answer["results"]:
            session = self.sessions.get(unwire_key(result["key"]))
            if session is not None:
                await self._apply_result(result, session)

    async def _apply_result(self, result: dict[str, Any], session: SessionState) -> None:
        user_id, session_id = session.key
        partial = result.get("partial")
        if partial is not None:
            message = {"type": "transcript", "seq": session.last_seq, "is_final": False,
                       "text": partial["text"], "words": partial["words"]}  # fmt: skip
            self.hub.publish(user_id, session_id, message)
        for utterance in result["finals"]:
            message = {
                "type": "transcript",
                "seq": session.last_seq,
                "is_final": True,
                "text": utterance["text"],
                "words": utterance["words"],
                "start_ms": utterance["start_ms"],
                "end_ms": utterance["end_ms"],
            }
            self.hub.publish(user_id, session_id, message)
            for word in utterance["words"]:
                _place(session.awaiting, word)
        final_until = result["final_until_ms"]
        while session.awaiting and session.awaiting[0].end_ms <= final_until + 0.5:
            span = session.awaiting.popleft()
            await self._done(span)

    async def _done(self, span: Span) -> None:
        transcript = {
            "status": "done",
            "text": " ".join(w["word"] for w in span.words),
            "words": span.words,
        }
        if await self._update(span.chunk_id, transcript):
            self.counts["done"] += 1
            self.metrics.observe_stage("transcribe", trio.current_time() - span.since)

    async def _fail(self, spans: list[Span], reason: str) -> None:
        for span in spans:
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
        message = {"type": "vad", "event": event, "at_ms": round(at_ms, 1)}
        self.hub.publish(key[0], key[1], message)


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
