"""Voice activity: resampling, WebRTC's frames, segments, and session-wide events."""

from __future__ import annotations

import numpy as np

from trio_audio.audio import vad

from .audio_samples import sine
from .speech import RATE, speak


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
