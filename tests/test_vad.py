"""Voice activity: resampling, Silero's frames, segments, and session-wide events."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from trio_audio.asr.utterances import Assembler, Utterance
from trio_audio.audio import vad

from .audio_samples import sine
from .speech import FIXTURE_TEXTS, RATE, pieces, speak


def music(seconds: float = 4.0) -> np.ndarray:
    """Something like music: four chords a second of harmonic tones with plucked attacks
    and a noisy beat on each."""
    rng = np.random.default_rng(7)
    out = np.zeros(int(seconds * RATE))
    step = RATE // 4
    t = np.arange(step) / RATE
    notes = [220.0, 261.6, 329.6, 392.0, 440.0, 523.3]
    for start in range(0, out.size - step + 1, step):
        for f in rng.choice(notes, 3, replace=False):
            for h in range(1, 5):
                out[start : start + step] += (
                    0.08 / h * np.sin(2 * np.pi * f * h * t) * np.exp(-3 * t)
                )
        out[start : start + 400] += 0.3 * rng.standard_normal(400) * np.exp(-np.arange(400) / 80)
    return out.astype(np.float32)


def not_speech() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    t = np.arange(4 * RATE) / RATE
    return {
        "440 Hz sine": sine(440.0, 4.0, RATE)[:, 0],
        "white noise": (0.1 * rng.standard_normal(t.size)).astype(np.float32),
        "loud white noise": np.clip(0.5 * rng.standard_normal(t.size), -1, 1).astype(np.float32),
        "sweep": (0.5 * np.sin(2 * np.pi * (200 + 600 * t) * t)).astype(np.float32),
        "music": music(),
    }


def test_resample_keeps_the_pitch_and_the_length() -> None:
    for rate in (8000, 22050, 44100, 48000):
        tone = sine(440.0, 1.0, rate)[:, 0]
        out = vad.resample(tone, rate)
        assert out.dtype == np.float32 and out.size == RATE
        spectrum = np.abs(np.fft.rfft(out))
        assert abs(np.argmax(spectrum) - 440) <= 1  # 1 Hz bins
    assert vad.resample(np.ones(10, np.float32), RATE).size == 10


def test_an_alias_above_the_new_nyquist_is_filtered_out() -> None:
    tone = sine(12000.0, 1.0, 48000, amplitude=0.5)[:, 0]
    out = vad.resample(tone, 48000)
    assert np.sqrt(np.mean(out[200:-200] ** 2)) < 0.01  # 12 kHz would alias to 4 kHz


def test_tones_noise_and_music_are_not_speech() -> None:
    for name, audio in not_speech().items():
        activity = vad.analyze(vad.to_pcm16(audio), mode=2, gap_ms=300)
        assert activity.speech_ratio < 0.05, name
        assert activity.segments == [], name


def test_every_speech_fixture_is_speech() -> None:
    for text in FIXTURE_TEXTS:
        speech = speak(text, lead_s=0.5, tail_s=1.0)
        activity = vad.analyze(vad.to_pcm16(speech), mode=2, gap_ms=500)
        assert len(activity.segments) == 1, text
        voiced = np.flatnonzero(np.abs(speech) > 0.02).size / speech.size
        assert activity.speech_ratio > 0.7 * voiced, text


class Detector:
    """Silero's speech flags for one stream of 16 kHz audio, frame after frame: the reference
    the batched path is checked against (one stream, the state carried from call to call).

    Keeps the network's state and the last samples between calls, so a stream fed in pieces
    gets the flags it would get fed whole. ``reset`` starts a new stream.
    """

    def __init__(self, mode: int = 2) -> None:
        self.threshold = vad._threshold(mode)
        self.session = vad._batch_session()
        self.reset()

    def reset(self) -> None:
        self.h = np.zeros((1, 1, vad.HIDDEN), np.float32)
        self.c = np.zeros((1, 1, vad.HIDDEN), np.float32)
        self.context = np.zeros(vad.CONTEXT_SAMPLES, np.float32)
        self.speaking = False

    def probabilities(self, pcm: vad.Int16Array) -> vad.Float32Array:
        """Speech probability of each full frame of *pcm* (a partial tail is left out)."""
        count = pcm.size // vad.FRAME_SAMPLES
        if count == 0:
            return np.zeros(0, np.float32)
        audio = pcm[: count * vad.FRAME_SAMPLES].astype(np.float32) / 32768.0
        frames = audio.reshape(count, vad.FRAME_SAMPLES)
        contexts = np.empty((count, vad.CONTEXT_SAMPLES), np.float32)
        contexts[0] = self.context
        contexts[1:] = frames[:-1, -vad.CONTEXT_SAMPLES :]
        batch = np.concatenate([contexts, frames], axis=1)
        probs, self.h, self.c = self.session.run(None, {"input": batch, "h": self.h, "c": self.c})
        self.context = frames[-1, -vad.CONTEXT_SAMPLES :].copy()
        out: vad.Float32Array = np.asarray(probs, np.float32).reshape(count)
        return out

    def flags(self, pcm: vad.Int16Array) -> npt.NDArray[np.bool_]:
        """Speech or not for each full frame of *pcm*, with the module doc's hysteresis."""
        out, self.speaking = vad.hysteresis(self.probabilities(pcm), self.threshold, self.speaking)
        return out


def test_a_stream_fed_in_pieces_gets_the_flags_it_gets_fed_whole() -> None:
    pcm = vad.to_pcm16(np.concatenate([speak(FIXTURE_TEXTS[0]), music(1.0)]))
    whole = Detector(2).flags(pcm)
    detector = Detector(2)
    fed = np.concatenate(
        [detector.flags(pcm[i : i + 10 * 512]) for i in range(0, pcm.size, 10 * 512)]
    )
    assert whole.any() and not whole.all()
    assert np.array_equal(fed, whole)
    detector.reset()
    assert np.array_equal(detector.flags(pcm), whole)
    with pytest.raises(ValueError, match="mode must be 0-3"):
        Detector(4)


def utterances_of(audio: np.ndarray, piece_s: float) -> list[Utterance]:
    """What the service cuts *audio* into: the pipeline's VAD per chunk, then the assembler."""
    assembler = Assembler(gap_ms=500, max_ms=30_000)
    out: list[Utterance] = []
    offset = 0.0
    for piece in pieces(audio, piece_s):
        pcm = vad.to_pcm16(piece)
        out += assembler.add(offset, pcm, vad.analyze(pcm, mode=2, gap_ms=500).segments)
        offset += piece.size / RATE * 1000
    return out + assembler.finish()


def test_no_utterance_without_speech_and_one_per_sentence_whatever_the_chunk_size() -> None:
    # The engine would make up words for anything it is given: it must be given no sound.
    for piece_s in (0.1, 0.25, 1.0):
        for name, audio in not_speech().items():
            assert utterances_of(audio, piece_s) == [], (name, piece_s)
        for text in FIXTURE_TEXTS:
            speech = speak(text, lead_s=0.5, tail_s=1.0)
            (utterance,) = utterances_of(speech, piece_s)
            loud = np.flatnonzero(np.abs(speech) > 0.02) / RATE * 1000
            assert utterance.start_ms <= loud[0] and utterance.end_ms >= loud[-1], (text, piece_s)


def test_segmenter_confirms_joins_short_pauses_and_ends_after_the_gap() -> None:
    seg = vad.Segmenter(gap_ms=90, min_frames=3)  # 3 frames
    flags = [0, 1, 0, 0, 0, 0, 1, 1, 0, 1, 0, 0, 0, 0, 1, 1, 1, 1]
    events = [e for f in flags for e in seg.push(bool(f))]
    # A lone speech frame is not confirmed; the 2-frame pause stays inside the segment.
    assert events == [("start", 6), ("stop", 10), ("start", 14)]
    assert seg.flush() == [("stop", 18)]


def test_silence_has_no_speech_and_speech_has_segments() -> None:
    silence = vad.analyze(np.zeros(RATE, np.int16), mode=2, gap_ms=300)
    assert silence.speech_ratio == 0.0 and silence.segments == []
    speech = speak("the weather is nice today", lead_s=0.5, tail_s=1.0)
    activity = vad.analyze(vad.to_pcm16(speech), mode=2, gap_ms=300)
    assert 0.3 < activity.speech_ratio < 0.9
    assert activity.segments
    first, last = activity.segments[0], activity.segments[-1]
    loud = np.flatnonzero(np.abs(speech) > 0.02) / RATE * 1000  # where the voice is
    assert loud[0] - 200 <= first[0] <= loud[0] + 200
    assert loud[-1] - 300 <= last[1] <= loud[-1] + 200
    assert all(s < e for s, e in activity.segments)
    as_dict = activity.to_dict()
    assert as_dict["speech_segments"][0]["start_ms"] == first[0]


def test_session_activity_joins_segments_across_chunks() -> None:
    activity = vad.SessionActivity(gap_ms=300)
    seg = [{"start_ms": 600.0, "end_ms": 1000.0}]  # speech to the end of chunk 0
    assert activity.chunk(0, 1000, seg) == [("speech_started", 600.0)]
    # Chunk 1 goes on speaking from its start: one segment, no stop/start in between.
    assert activity.chunk(1000, 1000, [{"start_ms": 0.0, "end_ms": 400.0}]) == [
        ("speech_stopped", 1400.0)
    ]
    assert activity.chunk(2000, 1000, []) == []
    assert activity.chunk(3000, 1000, [{"start_ms": 800.0, "end_ms": 1000.0}]) == [
        ("speech_started", 3800.0)
    ]
    assert activity.end() == [("speech_stopped", 4000.0)]
    assert activity.end() == []


def test_a_batch_of_chunks_gets_what_each_chunk_gets_alone() -> None:
    """Speech, tones, noise, music and silence, cut into chunks of unequal lengths (those of
    one length share a model call), analysed in one batch and one at a time: same results."""
    signals = [speak(text) for text in FIXTURE_TEXTS] + list(not_speech().values())
    chunks = []
    for n, signal in enumerate(signals):
        pcm = vad.to_pcm16(signal)
        size = (1600, 16000, 8000 + 37 * n, 300)[n % 4]  # 100 ms, 1 s, odd, under a window
        chunks += [pcm[i : i + size] for i in range(0, min(pcm.size, 4 * size), size)]
    chunks += [np.zeros(RATE, np.int16), np.zeros(0, np.int16)]
    alone = [vad.analyze(pcm, mode=2, gap_ms=300) for pcm in chunks]
    together = vad.analyze_batch(chunks, mode=2, gap_ms=300)
    assert len(together) == len(alone)
    assert any(a.segments for a in alone) and any(not a.segments for a in alone)
    for one, batched in zip(alone, together, strict=True):
        assert batched.speech_ratio == pytest.approx(one.speech_ratio, abs=1e-9)
        assert len(batched.segments) == len(one.segments)
        for got, want in zip(batched.segments, one.segments, strict=True):
            assert got == pytest.approx(want)
        assert batched.to_dict() == one.to_dict()


def test_the_batch_model_gives_the_shipped_models_probabilities() -> None:
    # The service runs only the derived batch model: it must hear what Silero's own does.
    shipped = vad._load(vad.MODEL_PATH, vad.MODEL_SHA256)
    pcms = [vad.to_pcm16(speak(text))[: 512 * 40] for text in FIXTURE_TEXTS]
    batched = vad._batch_probabilities(pcms)
    for pcm, probs in zip(pcms, batched, strict=True):
        detector = Detector(2)
        detector.session = shipped
        np.testing.assert_allclose(probs, detector.probabilities(pcm), atol=1e-5)


def test_a_batch_rejects_a_bad_mode() -> None:
    with pytest.raises(ValueError, match="VAD mode"):
        vad.analyze_batch([np.zeros(RATE, np.int16)], mode=7, gap_ms=300)


def test_a_batch_larger_than_one_call_is_split_and_still_equal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[int] = []
    batch_probabilities = vad._batch_probabilities

    def counted(pcms: list[np.ndarray]) -> list[np.ndarray]:
        calls.append(len(pcms))
        return batch_probabilities(pcms)

    monkeypatch.setattr(vad, "MAX_BATCH_WINDOWS", 8)
    monkeypatch.setattr(vad, "_batch_probabilities", counted)
    pcm = vad.to_pcm16(speak(FIXTURE_TEXTS[1], lead_s=0.0))
    chunks = [pcm[i : i + 1600] for i in range(0, 1600 * 5, 1600)]  # 3 windows each
    chunks.append(pcm[: 512 * 20])  # one longer than a call: alone
    assert all(np.abs(c).max() > 1000 for c in chunks)  # none is skipped as silent
    together = vad.analyze_batch(chunks, mode=2, gap_ms=300)
    assert sorted(calls) == [1, 1, 2, 2]
    assert [a.to_dict() for a in together] == [
        vad.analyze(c, mode=2, gap_ms=300).to_dict() for c in chunks
    ]


def test_speech_still_going_at_a_chunks_end_is_a_segment_even_after_a_few_silent_frames() -> None:
    # 5 speech frames (160 ms) near the end, then 3 silent ones: fewer than the 500 ms gap,
    # so the word may go on in the next chunk, and it is kept, as it would be with no
    # silent frame after it.
    gap_ms = 500.0
    tail = np.array([False] * 20 + [True] * 5 + [False] * 3)
    assert vad.activity(tail, gap_ms).segments == [(20 * vad.FRAME_MS, 25 * vad.FRAME_MS)]
    flush = np.array([False] * 20 + [True] * 5)
    assert vad.activity(flush, gap_ms).segments == [(20 * vad.FRAME_MS, 25 * vad.FRAME_MS)]
    # The same blip with the whole gap after it inside the chunk is over: too short to count.
    closed = np.array([False] * 20 + [True] * 5 + [False] * 20)
    assert vad.activity(closed, gap_ms).segments == []
