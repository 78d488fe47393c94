"""The transcriber: stored chunks -> worker processes -> transcript updates and live messages.

::

    Store._commit ──offer()──> lane 0 (bounded) ──> worker process 0  (sessions pinned here)
         (never waits)    └──> lane 1 (bounded) ──> worker process 1
         full lane: the chunk stays ``pending`` in ``deferred`` and is moved in when there is
         room (a session with deferred chunks sends all its later ones there too, in order)

- Each session is pinned to one lane, so its chunks reach one decoder stream in seq order.
  A lane sends one request at a time to its process and applies the answer: partial and final
  ``transcript`` messages go to the session's watchers through the hub; a chunk whose span is
  final gets ``transcript {status: done, text, words}`` as a durable UPDATE record.
- Voice activity needs no worker: ``offer`` joins the chunk's speech segments into the
  session's ``vad {event, at_ms}`` messages at once.
- A session silent for ``asr_idle_timeout_s`` is closed (its utterance ends, its decoder goes
  back to the pool); ``finalize`` does the same on demand and returns once the words are out.
- At start every chunk still ``pending`` in the store (a crash, a full backlog, a shutdown)
  is queued again, in session and seq order.

Resource handling: ``run`` owns the worker processes (started lazily, one per lane) and ends
them when cancelled (stdin closed, then killed after a grace period). Memory is bounded by
the lanes (``asr_backlog`` chunks each), the audio they hold (``asr_backlog_bytes``; past it
audio is re-read from the log when its turn comes) and the decoders per worker.

Error handling: a chunk whose audio cannot be read or decoded, or whose worker died or timed
out, gets ``transcript.status: failed`` with the reason; the worker is restarted for the next
chunk. A store update that fails leaves the chunk ``pending`` (it is retried at start-up).
"""

from __future__ import annotations

import collections
import logging
import os
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any, Final

import attrs
import msgpack
import trio

from .asr.engine import EngineError, EngineOptions, check_options
from .audio import features, vad
from .audio.decode import RawFormat, decode
from .config import Config
from .errors import NotFound, ServiceError
from .hub import Hub
from .metrics import Metrics
from .models import Part
from .store.store import Store

logger = logging.getLogger("trio_audio.transcribe")

HEADER: Final = struct.Struct(">I")
STOP_GRACE_S: Final = 2.0  # a worker gets this long to exit after its stdin closes
REQUEST_BASE_TIMEOUT_S: Final = 30.0  # plus REQUEST_PER_AUDIO_S per second of audio
REQUEST_PER_AUDIO_S: Final = 2.0
JANITOR_PERIOD_FRACTION: Final = 0.25  # of the idle timeout
REORDER_WAIT_S: Final = 1.0  # how long a chunk waits for a missing earlier seq

Key = tuple[str, str]


class WorkerDied(Exception):
    """The worker process exited, broke the protocol or timed out."""


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
    queued: int = 0  # items in a lane or deferred
    deferred: int = 0
    closing: bool = False
    last_seq: int = -1
    awaiting: collections.deque[Span] = attrs.field(factory=collections.deque)
    next_seq: int | None = None  # the seq that may go on; later ones wait in ``held``
    held: dict[int, Item] = attrs.field(factory=dict)
    held_since: float = 0.0


class WorkerProcess:
    """One ``python -m trio_audio.asr.worker`` and its framed request/answer pipe."""

    def __init__(self, index: int, init: dict[str, Any]) -> None:
        self.index = index
        self.init = init
        self.process: trio.Process | None = None
        self._buffer = bytearray()
        self.engine = ""
        self.root = str(Path(__file__).resolve().parent.parent)  # where trio_audio is found

    async def start(self) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (self.root, env.get("PYTHONPATH")) if p)
        self.process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "trio_audio.asr.worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )
        self._buffer.clear()
        answer = await self.request(self.init, timeout_s=REQUEST_BASE_TIMEOUT_S * 4)
        if not answer.get("ok"):
            await self.aclose()
            raise EngineError(answer.get("error", "the worker could not start"))
        self.engine = answer["engine"]
        logger.info("transcription worker %d: pid %d, %s", self.index, self.pid, self.engine)

    @property
    def pid(self) -> int:
        return self.process.pid if self.process is not None else 0

    async def request(self, message: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        process = self.process
        if process is None or process.stdin is None or process.stdout is None:
            raise WorkerDied("the worker is not running")
        body = msgpack.packb(message)
        try:
            with trio.fail_after(timeout_s):
                await process.stdin.send_all(HEADER.pack(len(body)) + body)
                head = await self._read(HEADER.size)
                answer: dict[str, Any] = msgpack.unpackb(await self._read(HEADER.unpack(head)[0]))
        except trio.TooSlowError:
            await self.aclose()
            msg = f"worker {self.index} gave no answer within {timeout_s:g} s"
            raise WorkerDied(msg) from None
        except (trio.BrokenResourceError, trio.ClosedResourceError, ValueError) as exc:
            await self.aclose()
            raise WorkerDied(f"worker {self.index} failed: {exc!r}") from exc
        return answer

    async def _read(self, n: int) -> bytes:
        assert self.process is not None and self.process.stdout is not None
        while len(self._buffer) < n:
            data = await self.process.stdout.receive_some(max(65536, n - len(self._buffer)))
            if not data:
                code = self.process.poll()
                msg = f"worker {self.index} exited (status {code})"
                raise trio.BrokenResourceError(msg)
            self._buffer += data
        out = bytes(self._buffer[:n])
        del self._buffer[:n]
        return out

    async def aclose(self) -> None:
        """Close stdin (the worker exits), wait a little, then kill. Shielded, bounded."""
        process, self.process = self.process, None
        if process is None:
            return
        with trio.CancelScope(shield=True):
            if process.stdin is not None:
                await process.stdin.aclose()
            with trio.move_on_after(STOP_GRACE_S):
                await process.wait()
            if process.poll() is None:
                process.kill()
                await process.wait()
            if process.stdout is not None:
                await process.stdout.aclose()


class Transcriber:
    """Hands stored chunks to worker processes; publishes and stores what comes back.

    Build it in ``serve``, start ``run`` with ``nursery.start``. ``offer`` is the store's
    hook (never blocks); ``finalize`` is for the WebSocket's ``finalize`` and ``end``.
    """

    def __init__(
        self,
        config: Config,
        store: Store,
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
        self.held_bytes = 0
        self.running = False
        self._lanes: list[trio.MemorySendChannel[Item | Finish]] = []
        self._lane_heads: dict[str, Item] = {}  # items sent to a lane, not yet done
        self._holding: set[Key] = set()  # sessions with chunks waiting for an earlier seq
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
                        self._requeue_pending()
                    nursery.start_soon(self._janitor)
                    nursery.start_soon(self._reorder_timer)
                    self.store.on_stored.append(self.offer)
                    task_status.started(self)
        finally:
            self.running = False
            if self.offer in self.store.on_stored:
                self.store.on_stored.remove(self.offer)
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
        oldest += [s.since for s in self._in_lanes]
        return max(0.0, trio.current_time() - min(oldest)) if oldest else 0.0

    @property
    def _in_lanes(self) -> list[Item]:
        return list(self._lane_heads.values())

    # -- taking chunks -----------------------------------------------------------------------

    def offer(self, chunk: dict[str, Any], part: Part | None = None) -> None:
        """A newly stored chunk (the store's hook): put in seq order, then VAD and transcription.

        Pipeline workers run in parallel, so a session's chunks can commit out of seq order;
        a chunk whose predecessor has not arrived waits (at most ``REORDER_WAIT_S``).
        """
        pcm = part.speech_pcm if part is not None else None
        if pcm is not None and self.held_bytes + len(pcm) > self.config.asr_backlog_bytes:
            pcm = None  # read back from the log when its turn comes
        self._arrive(self._item(chunk, pcm))

    def offer_stored(self, chunk_id: str) -> None:
        """Queue a stored chunk (its audio read back from the log when its turn comes)."""
        self._arrive(self._item(self.store.get(chunk_id), None))

    def _item(self, chunk: dict[str, Any], pcm: bytes | None) -> Item:
        transcribe = self.enabled and chunk["transcript"]["status"] == "pending"
        return Item(
            chunk_id=chunk["chunk_id"],
            key=(chunk["user_id"], chunk["session_id"]),
            seq=chunk["seq"],
            offset_ms=float(chunk.get("offset_ms", 0.0)),
            duration_ms=float(chunk["audio"]["duration_ms"]),
            pcm=pcm if transcribe else None,
            since=trio.current_time(),
            segments=chunk.get("features", {}).get("speech_segments", []),
            transcribe=transcribe,
        )

    def _arrive(self, item: Item) -> None:
        session = self._session(item.key)
        session.last_active = trio.current_time()
        if session.next_seq is None:
            session.next_seq = self._first_seq(item.key)
        if item.seq > session.next_seq and len(session.held) < self.config.asr_backlog:
            if not session.held:
                session.held_since = trio.current_time()
            session.held[item.seq] = item
            self._holding.add(item.key)
            return
        self._deliver(session, item)
        self._release_held(session, everything=len(session.held) >= self.config.asr_backlog)

    def _release_held(self, session: SessionState, *, everything: bool) -> None:
        """Deliver the held chunks that are next in line (with *everything*: all, in order)."""
        while session.held:
            assert session.next_seq is not None
            seq = session.next_seq if session.next_seq in session.held else min(session.held)
            if seq != session.next_seq and not everything:
                break
            self._deliver(session, session.held.pop(seq))
        session.held_since = trio.current_time()
        if not session.held:
            self._holding.discard(session.key)

    def _first_seq(self, key: Key) -> int:
        """The seq a session's transcription goes on from: after its last finished chunk."""
        index = self.store.sessions(key[0]).get(key[1])
        first = 0
        if index is not None:
            for seq, chunk_id in index.after(None):
                entry = self.store.chunks.get(chunk_id)
                if entry is not None and entry.meta()["transcript"]["status"] != "pending":
                    first = seq + 1
        return first

    def _deliver(self, session: SessionState, item: Item) -> None:
        """In seq order: the chunk's VAD events, then its transcription."""
        assert session.next_seq is not None
        session.next_seq = max(session.next_seq, item.seq + 1)
        entry = self.store.chunks.get(item.chunk_id)
        if entry is None:
            return  # deleted since
        offset = self.store.get(item.chunk_id)["offset_ms"]  # final now its predecessors are in
        item.offset_ms = float(offset)
        for event, at_ms in session.activity.chunk(offset, item.duration_ms, item.segments):
            self._publish_vad(session.key, event, at_ms)
        if item.transcribe:
            self._queue(session, item)
        elif item.pcm is not None:
            item.pcm = None

    async def _reorder_timer(self) -> None:
        """Stop waiting for a missing seq after ``REORDER_WAIT_S`` (it failed or never came)."""
        while True:
            await trio.sleep(REORDER_WAIT_S / 4)
            now = trio.current_time()
            for key in list(self._holding):
                session = self.sessions.get(key)
                if session is None:
                    self._holding.discard(key)
                elif now - session.held_since >= REORDER_WAIT_S:
                    self._release_held(session, everything=True)

    def _session(self, key: Key) -> SessionState:
        session = self.sessions.get(key)
        if session is None:
            lane = self._lane_sessions.index(min(self._lane_sessions)) if self.enabled else 0
            self._lane_sessions[lane] += 1
            session = self.sessions[key] = SessionState(
                key, lane, vad.SessionActivity(self.config.vad_gap_ms), trio.current_time()
            )
        return session

    def _queue(self, session: SessionState, item: Item) -> None:
        if not self.running:
            return  # stopped: it stays pending, queued again at the next start
        session.queued += 1
        if session.deferred == 0:
            try:
                self._lanes[session.lane].send_nowait(item)
            except trio.WouldBlock:
                pass
            else:
                self._hold(item)
                return
        item.pcm = None
        session.deferred += 1
        self.deferred[item.chunk_id] = item
        self.counts["deferred"] += 1

    def _hold(self, item: Item) -> None:
        self._lane_heads[item.chunk_id] = item
        if item.pcm is not None:
            self.held_bytes += len(item.pcm)

    def _release(self, item: Item) -> None:
        self._lane_heads.pop(item.chunk_id, None)
        if item.pcm is not None:
            self.held_bytes -= len(item.pcm)
            item.pcm = None

    def _requeue_pending(self) -> None:
        """Queue, in session and seq order, every chunk the store holds as ``pending``."""
        pending = []
        for chunk_id, entry in self.store.chunks.items():
            meta = entry.meta()
            if meta.get("transcript", {}).get("status") == "pending":
                pending.append((entry.user_id, entry.session_id, entry.seq, chunk_id))
        for *_, chunk_id in sorted(pending):
            self.offer_stored(chunk_id)
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
                session = self.sessions.get(item.key)
                if session is None:  # pragma: no cover - deferred items keep their session
                    session = self._session(item.key)
                try:
                    self._lanes[session.lane].send_nowait(item)
                except trio.WouldBlock:
                    blocked.add(item.key)
                    continue
                del self.deferred[chunk_id]
                session.deferred -= 1
                self._hold(item)

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
        self._release_held(session, everything=True)
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
            await self._lanes[session.lane].send(command)
            await command.done.wait()
            nursery.cancel_scope.cancel()

    async def _janitor(self) -> None:
        """Close sessions idle for ``asr_idle_timeout_s``: their decoders go back to the pool."""
        timeout = self.config.asr_idle_timeout_s
        while True:
            await trio.sleep(timeout * JANITOR_PERIOD_FRACTION)
            now = trio.current_time()
            for key, session in list(self.sessions.items()):
                busy = session.queued or session.held or session.closing
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
        init = {
            "op": "init",
            "options": self.options.to_dict(),
            "max_streams": self.config.asr_streams_per_worker,
            "vad_mode": self.config.vad_mode,
            "gap_ms": self.config.vad_gap_ms,
            "max_utterance_s": self.config.asr_max_utterance_s,
        }
        worker = WorkerProcess(index, init)
        try:
            async with receive:
                async for command in receive:
                    self._room.set()
                    if isinstance(command, Finish):
                        await self._finish(worker, command)
                    else:
                        try:
                            await self._transcribe(worker, command)
                        finally:
                            self._release(command)
        finally:
            await worker.aclose()

    async def _ensure(self, worker: WorkerProcess) -> None:
        if worker.process is None:
            await worker.start()

    async def _transcribe(self, worker: WorkerProcess, item: Item) -> None:
        session = self.sessions.get(item.key) or self._session(item.key)
        session.queued -= 1
        session.last_active = trio.current_time()
        if item.chunk_id not in self.store.chunks:
            return  # deleted since
        span = Span(item.chunk_id, item.seq, item.offset_ms, item.offset_ms + item.duration_ms,
                    item.since)  # fmt: skip
        try:
            pcm = item.pcm if item.pcm is not None else await self._read_pcm(item.chunk_id)
            await self._ensure(worker)
            timeout = REQUEST_BASE_TIMEOUT_S + REQUEST_PER_AUDIO_S * item.duration_ms / 1000
            message = {"op": "feed", "key": _wire(item.key), "pcm": pcm,
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
            if session is None or worker.process is None:
                return
            op = "close" if command.close else "finish"
            try:
                answer = await worker.request(
                    {"op": op, "key": _wire(command.key)}, REQUEST_BASE_TIMEOUT_S
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
            session = self.sessions.get(_unwire(result["key"]))
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


def _wire(key: Key) -> str:
    return f"{key[0]}/{key[1]}"  # ids never hold '/'


def _unwire(text: str) -> Key:
    user_id, _, session_id = text.partition("/")
    return user_id, session_id
