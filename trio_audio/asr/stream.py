"""Per-session streaming recognition over a bounded pool of engine streams (plain code, no trio).

``Streams`` is what one transcription worker process holds: a ``SessionStream`` per live
session (small: its VAD state and at most a second or so of audio) and a pool of at most
``max_streams`` engine streams (large). A session borrows an engine stream only while it is
inside an utterance:

- a ``vad.Detector`` (Silero) and a ``vad.Segmenter`` watch the session's audio; a confirmed
  speech segment (tones, music and noise are not speech) starts an
  utterance ``PREROLL_MS`` before the speech, so the first word is not clipped;
- the utterance ends (final words) when ``gap_ms`` of silence follow the speech, on
  ``finish`` (the client's ``finalize``, the session's end, or its idle timeout), at a gap in
  the session's timeline, or after ``max_utterance_s``;
- when every engine stream is lent out, the session that fed least recently has its
  utterance ended early and its stream is taken: memory stays bounded, no session waits.

All times are on the session's timeline (the chunks' ``offset_ms``), in ms.
"""

from __future__ import annotations

import itertools
from typing import Any, Final

import attrs
import numpy as np

from ..audio import vad
from .engine import Engine, EngineStream, Hypothesis, Word

PREROLL_MS: Final = 300
WAIT_FOR_DECODER_S: Final = 5.0  # then a session takes the least recently used decoder
RATE: Final = vad.VAD_RATE
SAMPLES_PER_MS: Final = RATE // 1000


@attrs.frozen
class Utterance:
    text: str
    words: list[Word]
    start_ms: float
    end_ms: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "words": [w.to_dict() for w in self.words],
            "start_ms": round(self.start_ms, 1),
            "end_ms": round(self.end_ms, 1),
        }


@attrs.define
class Result:
    """What changed for one session: a new partial, final utterances, how far all is final."""

    key: str
    partial: Hypothesis | None = None
    finals: list[Utterance] = attrs.field(factory=list)
    final_until_ms: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        partial = None
        if self.partial is not None:
            words = [w.to_dict() for w in self.partial.words]
            partial = {"text": self.partial.text, "words": words}
        return {
            "key": self.key,
            "partial": partial,
            "finals": [u.to_dict() for u in self.finals],
            "final_until_ms": round(self.final_until_ms, 1),
        }


class SessionStream:
    """One session's audio position, VAD state and (while speaking) its engine stream."""

    def __init__(self, key: str, owner: Streams, start: int = 0) -> None:
        self.key = key
        self.owner = owner
        self.detector = vad.Detector(owner.vad_mode)
        self.finals: list[Utterance] = []
        self.partial: Hypothesis | None = None
        self.last_partial = ""
        self.used = 0
        self._reset(start)

    def _reset(self, start: int) -> None:
        self.segmenter = vad.Segmenter(self.owner.gap_ms)
        self.detector.reset()
        self.origin = start  # session sample of the segmenter's frame 0
        self.buffer = np.zeros(0, np.int16)  # audio not yet given to an engine
        self.buffer_start = start
        self.position = start  # session sample after the last one received
        self.utt_start: int | None = None
        self.fed = start  # session sample up to which the engine has the audio
        self.stream: EngineStream | None = None

    @property
    def in_utterance(self) -> bool:
        return self.utt_start is not None

    @property
    def final_until_ms(self) -> float:
        """Every word starting before this time is final."""
        if self.utt_start is not None:
            return self.utt_start / SAMPLES_PER_MS
        limit = self.position
        if self.segmenter.start is not None:  # a segment not yet confirmed may become speech
            candidate = self.origin + self.segmenter.start * vad.FRAME_SAMPLES
            limit = min(limit, candidate - PREROLL_MS * SAMPLES_PER_MS)
        return max(limit, 0) / SAMPLES_PER_MS

    def feed(self, pcm: np.ndarray, start: int) -> None:
        if abs(start - self.position) > vad.FRAME_SAMPLES:  # a gap (or overlap) in the timeline
            self.finish()
            self._reset(start)
        self.buffer = np.concatenate([self.buffer, pcm])
        self.position += pcm.size
        frame = vad.FRAME_SAMPLES
        first = self.origin + self.segmenter.frame * frame
        count = (self.position - first) // frame
        lo = first - self.buffer_start
        flags = self.detector.flags(self.buffer[lo : lo + max(count, 0) * frame])
        for speech in flags:  # one call to the VAD for every frame this audio completes
            at = self.origin + self.segmenter.frame * frame
            for kind, index in self.segmenter.push(bool(speech)):
                if kind == "start":
                    self._begin(self.origin + index * frame - PREROLL_MS * SAMPLES_PER_MS)
                else:
                    self._end(at + frame)
            if (
                self.utt_start is not None
                and at + frame - self.utt_start > self.owner.max_utterance_samples
            ):
                self._end(at + frame)
                if self.segmenter.in_speech:
                    self._begin(at + frame)
        if self.utt_start is not None:
            self._feed_engine(self.position)
        if self.stream is not None and self.utt_start is not None:
            hypothesis = self.stream.partial()
            if hypothesis.text and hypothesis.text != self.last_partial:
                self.last_partial = hypothesis.text
                shift = self.utt_start / SAMPLES_PER_MS
                words = [w.shifted(shift) for w in hypothesis.words]
                self.partial = Hypothesis(hypothesis.text, words)
        self._trim()

    def finish(self) -> None:
        """End the current utterance with everything received so far."""
        if self.utt_start is not None:
            self._end()
        self.segmenter = vad.Segmenter(self.owner.gap_ms)  # a new segment must be heard
        self.detector.reset()
        self.origin = self.position
        self._trim()

    def _engine(self, force: bool) -> EngineStream | None:
        """This session's engine stream; without one free, None (the audio waits in the
        buffer) unless *force* or the wait is over ``WAIT_FOR_DECODER_S``."""
        if self.stream is None:
            force = force or self.position - self.fed > WAIT_FOR_DECODER_S * RATE
            self.stream = self.owner.acquire(self, force)
            if self.stream is not None:
                self.stream.start()
        return self.stream

    def _begin(self, start: int) -> None:
        self.utt_start = self.fed = max(start, self.buffer_start)
        self.last_partial = ""

    def _feed_engine(self, until: int, *, force: bool = False) -> None:
        """Give the engine the audio up to session sample *until* (once it has a stream)."""
        stream = self._engine(force)
        if stream is None:
            return
        lo = max(self.fed, self.buffer_start) - self.buffer_start
        hi = until - self.buffer_start
        if hi > lo:
            self.owner.feed_engine(stream, self.buffer[lo:hi])
        self.fed = max(self.fed, until)

    def _end(self, until: int | None = None) -> None:
        assert self.utt_start is not None
        self._feed_engine(self.position if until is None else until, force=True)
        stream = self.stream
        assert stream is not None
        hypothesis = stream.finish()
        shift = self.utt_start / SAMPLES_PER_MS
        if hypothesis.text:
            words = [w.shifted(shift) for w in hypothesis.words]
            end = self.fed / SAMPLES_PER_MS
            self.finals.append(Utterance(hypothesis.text, words, shift, end))
        self.utt_start = None
        self.stream = None
        self.partial = None
        self.owner.release(stream)

    def _trim(self) -> None:
        """Keep only audio the VAD has yet to hear, the engine has yet to get, or a coming
        utterance could start with (its pre-roll)."""
        keep_from = self.origin + self.segmenter.frame * vad.FRAME_SAMPLES
        if self.utt_start is not None:
            keep_from = min(keep_from, self.fed)
        else:
            keep_from = min(keep_from, self.position - PREROLL_MS * SAMPLES_PER_MS)
            if self.segmenter.start is not None:
                candidate = self.origin + self.segmenter.start * vad.FRAME_SAMPLES
                keep_from = min(keep_from, candidate - PREROLL_MS * SAMPLES_PER_MS)
        cut = max(0, keep_from - self.buffer_start)
        if cut:
            self.buffer = self.buffer[cut:]
            self.buffer_start += cut

    def take_result(self) -> Result:
        result = Result(self.key, self.partial, self.finals, self.final_until_ms)
        self.partial = None
        self.finals = []
        return result


class Streams:
    """The sessions of one worker and its pool of engine streams."""

    def __init__(
        self,
        engine: Engine,
        *,
        max_streams: int,
        vad_mode: int,
        gap_ms: float,
        max_utterance_s: float,
    ) -> None:
        self.engine = engine
        self.max_streams = max_streams
        self.vad_mode = vad_mode
        self.gap_ms = gap_ms
        self.max_utterance_samples = int(max_utterance_s * RATE)
        self.sessions: dict[str, SessionStream] = {}
        self._free: list[EngineStream] = []
        self._made = 0
        self._clock = itertools.count(1)
        self._touched: dict[str, SessionStream] = {}

    # -- the pool ----------------------------------------------------------------------------

    def acquire(self, session: SessionStream, force: bool) -> EngineStream | None:
        """A free stream, a new one while under ``max_streams``; else None, or with *force*
        the stream of the session that fed least recently (its utterance ends there)."""
        if not self._free and self._made < self.max_streams:
            self._free.append(self.acquire_new())
        if not self._free and not force:
            return None
        if not self._free:
            speaking = [
                s for s in self.sessions.values() if s.stream is not None and s is not session
            ]
            victim = min(speaking, key=lambda s: s.used)
            victim.finish()
            self._touched[victim.key] = victim
        return self._free.pop()

    def acquire_new(self) -> EngineStream:
        """A stream for the pool made now (loads the model: errors show at start-up)."""
        self._made += 1
        return self.engine.open_stream()

    def release(self, stream: EngineStream) -> None:
        self._free.append(stream)

    def discard(self, key: str) -> None:
        """Forget *key* after an engine error; its engine stream is dropped, not reused."""
        session = self.sessions.pop(key, None)
        self._touched.pop(key, None)
        if session is not None and session.stream is not None:
            session.stream.close()
            self._made -= 1

    def feed_engine(self, stream: EngineStream, pcm: np.ndarray) -> None:
        if self.engine.sample_rate != RATE:
            pcm = vad.to_pcm16(vad.resample(pcm / 32768.0, RATE, self.engine.sample_rate))
        stream.feed(pcm.astype("<i2").tobytes())

    @property
    def streams_in_use(self) -> int:
        return self._made - len(self._free)

    # -- operations (one request of the worker protocol each) -------------------------------

    def _session(self, key: str, start: int) -> SessionStream:
        session = self.sessions.get(key)
        if session is None:
            session = self.sessions[key] = SessionStream(key, self, start)
        session.used = next(self._clock)
        self._touched[key] = session
        return session

    def _results(self) -> list[Result]:
        touched, self._touched = self._touched, {}
        return [s.take_result() for s in touched.values()]

    def feed(self, key: str, pcm: bytes, offset_ms: float) -> list[Result]:
        """Audio of *key* (16 kHz 16-bit mono) that starts at *offset_ms* on its timeline."""
        start = round(offset_ms * SAMPLES_PER_MS)
        samples = np.frombuffer(pcm, dtype="<i2").astype(np.int16)
        self._session(key, start).feed(samples, start)
        return self._results()

    def finish(self, key: str) -> list[Result]:
        """End *key*'s utterance now (``finalize``): its words become final."""
        session = self.sessions.get(key)
        if session is not None:
            session.finish()
            self._touched[key] = session
        return self._results()

    def close(self, key: str) -> list[Result]:
        """Finish *key* and forget it (the session ended or went idle)."""
        results = self.finish(key)
        self.sessions.pop(key, None)
        return results
