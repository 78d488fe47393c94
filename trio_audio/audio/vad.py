"""Voice activity: Silero VAD (its ONNX model, run by onnxruntime on one thread) on 32 ms
frames, and speech segments.

Plain numpy and onnxruntime, no trio: the pipeline calls ``analyze_batch`` for the chunks
waiting in its stage (in a worker thread), which gives each chunk what ``analyze`` gives it;
the transcriber cuts utterances from the segments it finds
and joins them into session-wide ``speech_started``/``speech_stopped`` events.

Silero is a small neural network trained to tell speech from everything else: tones, music
and noise are not speech to it (WebRTC's VAD, which this replaced, called a 440 Hz sine
speech). The model file ``silero_vad_v6.onnx`` ships in this package (Silero VAD v6, MIT
licence, Copyright (c) 2020-present Silero Team; in the form faster-whisper ships it, which
takes a whole sequence of frames in one call); its sha256 is checked when it is loaded.

Definitions (one set for all three uses, so a chunk's segments, the live events and the
utterance ends of the transcriber agree):

- audio is resampled to 16 kHz mono 16-bit (``VAD_RATE``) and cut into 32 ms frames (512
  samples, Silero's window); Silero gives each full frame a speech probability, carrying its
  state from frame to frame. A frame is speech once the probability reaches the threshold
  of ``mode`` (``THRESHOLDS``: 0-3, higher is more reluctant to call audio speech) and stays
  speech until it falls ``HYSTERESIS`` below it;
- a segment starts at a speech frame and is confirmed once it holds ``MIN_SPEECH_FRAMES``
  speech frames (256 ms: Silero's own minimum, which keeps bursts of loud noise out), or
  ``EDGE_SPEECH_FRAMES`` (or every frame of a shorter chunk) when it touches the start or end
  of a chunk (``analyze``), where the speech may go on in the chunk before or after; it ends
  at its last speech frame once ``gap_ms`` of non-speech follow (or at the end of the audio).
  Shorter pauses stay inside the segment;
- ``speech_ratio`` is the share of frames that are speech.
"""

from __future__ import annotations

import functools
import hashlib
import math
from pathlib import Path
from typing import Any, Final, Literal

import attrs
import numpy as np
import numpy.typing as npt

from .features import same_key

VAD_RATE: Final = 16000
FRAME_SAMPLES: Final = 512  # Silero's window at 16 kHz
FRAME_MS: Final = FRAME_SAMPLES * 1000 / VAD_RATE  # 32 ms
CONTEXT_SAMPLES: Final = 64  # each window is given with the 64 samples before it
MIN_SPEECH_FRAMES: Final = 8  # 256 ms of speech frames confirm a segment (Silero: 250)
EDGE_SPEECH_FRAMES: Final = 4  # 128 ms at a chunk's edge (or all of a shorter chunk's frames)
THRESHOLDS: Final = (0.3, 0.4, 0.5, 0.6)  # speech probability per mode (2: Silero's default)
HYSTERESIS: Final = 0.15  # speech goes on until the probability falls this far below
SILENT_PEAK: Final = 33  # a chunk whose samples all stay under -60 dBFS is not run through
LOWPASS_ZERO_CROSSINGS: Final = 8  # half-length of the resampling filter, in input periods
MODEL_PATH: Final = Path(__file__).with_name("silero_vad_v6.onnx")
MODEL_SHA256: Final = "4cbf549b8326f60f80f2536d9eefeb450a9abe83365a098031c89719f1be17d2"
# The same network with a batch dimension (``batch_model.py`` derives it from the one above),
# so the windows of several chunks share one call: row t * B + b is window t of chunk b.
BATCH_MODEL_PATH: Final = Path(__file__).with_name("silero_vad_v6_batch.onnx")
BATCH_MODEL_SHA256: Final = "d08f9a4911c2a7180e9ba24825edd9ebd6b2a6ac2b06365609979d2ed87380e9"
HIDDEN: Final = 128
MAX_BATCH_WINDOWS: Final = 1024  # windows in one batched call (~2.4 MB of input)

Float32Array = npt.NDArray[np.float32]
Int16Array = npt.NDArray[np.int16]
Event = tuple[Literal["start", "stop"], int]  # (what, frame index on the segmenter's clock)


def resample(mono: npt.NDArray[np.floating], rate: int, target: int = VAD_RATE) -> Float32Array:
    """*mono* at *rate* resampled to *target*: a windowed-sinc low-pass, then interpolation.

    Good enough for speech analysis (the pass band ends at 0.45 x the lower rate); not meant
    for high-fidelity audio.
    """
    samples = np.asarray(mono, dtype=np.float32)
    if rate == target or samples.size == 0:
        return samples
    if target < rate:
        cutoff = 0.45 * target / rate  # cycles per input sample
        half = math.ceil(LOWPASS_ZERO_CROSSINGS / (2 * cutoff))
        n = np.arange(-half, half + 1, dtype=np.float64)
        taps = 2 * cutoff * np.sinc(2 * cutoff * n) * np.hamming(n.size)
        taps /= taps.sum()
        samples = np.convolve(samples, taps.astype(np.float32), mode="same")
    frames = round(samples.size * target / rate)
    positions = np.arange(frames, dtype=np.float64) * (rate / target)
    out = np.interp(positions, np.arange(samples.size), samples)
    return out.astype(np.float32)


def to_pcm16(samples: npt.NDArray[np.floating]) -> Int16Array:
    """Float samples in [-1, 1] as 16-bit integers (clipped)."""
    scaled = np.clip(np.asarray(samples, dtype=np.float32) * 32768.0, -32768, 32767)
    out: Int16Array = np.rint(scaled).astype(np.int16)
    return out


def speech_pcm(mono: npt.NDArray[np.floating], rate: int) -> Int16Array:
    """Mono audio at any rate as what VAD and the transcriber take: 16 kHz 16-bit."""
    return to_pcm16(resample(mono, rate))


class VadError(RuntimeError):
    """The VAD model is missing, changed or cannot run."""


@functools.cache
def _batch_session() -> Any:
    """The Silero model with a batch dimension (``BATCH_MODEL_PATH``; with a batch of one it
    is the shipped model exactly), loaded once per process (``run`` is thread-safe)."""
    return _load(BATCH_MODEL_PATH, BATCH_MODEL_SHA256)


def _threshold(mode: int) -> float:
    """The speech probability of VAD *mode* (``ValueError`` for a mode outside 0-3)."""
    if not 0 <= mode < len(THRESHOLDS):
        msg = f"VAD mode must be 0-{len(THRESHOLDS) - 1}, got {mode}"
        raise ValueError(msg)
    return THRESHOLDS[mode]


def hysteresis(
    probs: Float32Array, threshold: float, speaking: bool = False
) -> tuple[npt.NDArray[np.bool_], bool]:
    """Speech or not for each frame's probability (the module doc's hysteresis), starting
    *speaking* or not; the flags and whether speech goes on after the last frame."""
    out: npt.NDArray[np.bool_] = np.zeros(probs.size, np.bool_)
    for i, p in enumerate(probs):
        if p >= threshold:
            speaking = True
        elif p < threshold - HYSTERESIS:
            speaking = False
        out[i] = speaking
    return out, speaking


def _load(path: Path, sha256: str) -> Any:
    import onnxruntime

    try:
        data = path.read_bytes()
    except OSError as exc:
        msg = f"cannot read the VAD model: {exc}"
        raise VadError(msg) from exc
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256:
        msg = f"the VAD model {path} has sha256 {digest}, expected {sha256}"
        raise VadError(msg)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.enable_cpu_mem_arena = False
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(
        data, sess_options=options, providers=["CPUExecutionProvider"]
    )


class Segmenter:
    """Speech segments from a stream of per-frame flags (the definitions in the module doc).

    ``push`` returns ``("start", frame)`` once a segment is confirmed (the frame where it
    began) and ``("stop", frame)`` once it has ended (the frame after its last speech frame).
    """

    def __init__(self, gap_ms: float, min_frames: int = MIN_SPEECH_FRAMES) -> None:
        self.gap_frames = max(1, math.ceil(gap_ms / FRAME_MS))
        self.min_frames = min_frames
        self.frame = 0  # frames seen
        self.start: int | None = None  # first frame of the current (candidate) segment
        self.last_speech = -1
        self.speech_frames = 0
        self.confirmed = False

    @property
    def in_speech(self) -> bool:
        return self.confirmed

    def push(self, speech: bool) -> list[Event]:
        events: list[Event] = []
        index = self.frame
        self.frame += 1
        if speech:
            if self.start is None:
                self.start, self.speech_frames = index, 0
            self.speech_frames += 1
            self.last_speech = index
            if not self.confirmed and self.speech_frames >= self.min_frames:
                self.confirmed = True
                events.append(("start", self.start))
        elif self.start is not None and index - self.last_speech >= self.gap_frames:
            if self.confirmed:
                events.append(("stop", self.last_speech + 1))
            self.start, self.confirmed = None, False
        return events

    def flush(self) -> list[Event]:
        """End an open segment at the end of the audio."""
        events: list[Event] = []
        if self.confirmed:
            events.append(("stop", self.last_speech + 1))
        self.start, self.confirmed = None, False
        return events


@attrs.frozen
class VoiceActivity:
    """The speech in one chunk: the share of speech frames and the segments, in ms."""

    speech_ratio: float
    segments: list[tuple[float, float]]  # [start_ms, end_ms) from the chunk's start

    def to_dict(self) -> dict[str, object]:
        return {
            "speech_ratio": round(self.speech_ratio, 4),
            "speech_segments": [
                {"start_ms": round(s, 1), "end_ms": round(e, 1)} for s, e in self.segments
            ],
        }


def analyze(pcm: Int16Array, mode: int, gap_ms: float) -> VoiceActivity:
    """Voice activity of one chunk of 16 kHz *pcm*, with the threshold of *mode* (0-3).

    Costs about 3 ms of CPU per second of audio (Silero); a silent chunk costs nothing. A
    batch of one (``analyze_batch``).
    """
    return analyze_batch([pcm], mode, gap_ms)[0]


def activity(flags: npt.NDArray[np.bool_], gap_ms: float) -> VoiceActivity:
    """The segments and speech ratio of one chunk from its frames' speech flags."""
    segmenter = Segmenter(gap_ms, max(1, min(EDGE_SPEECH_FRAMES, flags.size)))
    found: list[tuple[int, int, bool]] = []  # (first frame, end frame, open at the end?)
    begin = 0
    for flag in flags:
        for kind, frame in segmenter.push(bool(flag)):
            if kind == "start":
                begin = frame
            else:
                found.append((begin, frame, False))
    # Still open at the chunk's end (fewer than gap_ms of silence after it, even if a few
    # silent frames close the chunk): its speech may go on in the next chunk.
    found += [(begin, frame, True) for _, frame in segmenter.flush()]
    segments = [
        (lo * FRAME_MS, hi * FRAME_MS)
        for lo, hi, open_at_end in found
        if lo == 0 or open_at_end or int(flags[lo:hi].sum()) >= MIN_SPEECH_FRAMES
    ]
    ratio = float(flags.mean()) if flags.size else 0.0
    return VoiceActivity(ratio, segments)


def analyze_batch(pcms: list[Int16Array], mode: int, gap_ms: float) -> list[VoiceActivity]:
    """``analyze`` of each chunk, with the windows of every chunk in one call of the model.

    Each chunk starts from a fresh state, as in ``analyze``: the chunks are the batch rows
    and their windows the time steps. Chunks of one length share a call (at most
    ``MAX_BATCH_WINDOWS`` windows each), so nothing is padded and one long chunk never
    makes the others wait through its length. Results equal ``analyze``'s.
    """
    threshold = _threshold(mode)
    counts = [
        0 if pcm.size == 0 or int(np.abs(pcm.astype(np.int32)).max()) < SILENT_PEAK
        else pcm.size // FRAME_SAMPLES
        for pcm in pcms
    ]  # fmt: skip
    probs: dict[int, Float32Array] = {}
    for members in same_key(counts):
        count = counts[members[0]]
        if count == 0:
            continue
        per_call = max(1, MAX_BATCH_WINDOWS // count)
        for first in range(0, len(members), per_call):
            call = members[first : first + per_call]
            probs.update(zip(call, _batch_probabilities([pcms[i] for i in call]), strict=True))
    out = []
    for index, count in enumerate(counts):
        if count == 0:  # silent, or shorter than a window
            out.append(VoiceActivity(0.0, []))
            continue
        out.append(activity(hysteresis(probs[index], threshold)[0], gap_ms))
    return out


def _batch_probabilities(pcms: list[Int16Array]) -> list[Float32Array]:
    """Speech probabilities of the full frames of chunks with as many frames each, every
    chunk a batch row of one model call, from a fresh state."""
    count = pcms[0].size // FRAME_SAMPLES
    batch = len(pcms)
    frames = np.stack([pcm[: count * FRAME_SAMPLES] for pcm in pcms]).astype(np.float32)
    frames = (frames / 32768.0).reshape(batch, count, FRAME_SAMPLES).transpose(1, 0, 2)
    rows = np.zeros((count, batch, CONTEXT_SAMPLES + FRAME_SAMPLES), np.float32)
    rows[:, :, CONTEXT_SAMPLES:] = frames  # time-major: row t * batch + b
    rows[1:, :, :CONTEXT_SAMPLES] = frames[:-1, :, -CONTEXT_SAMPLES:]
    state = np.zeros((1, batch, HIDDEN), np.float32)
    probs, _, _ = _batch_session().run(
        None, {"input": rows.reshape(count * batch, -1), "h": state, "c": state}
    )
    table = np.asarray(probs, np.float32).reshape(batch, count)
    return list(table)


class SessionActivity:
    """Joins chunks' speech segments into session-wide ``speech_started/stopped`` events.

    A segment that begins within ``gap_ms`` of the previous one's end (for instance across a
    chunk boundary) continues it. Times are on the session's timeline, in ms.
    """

    def __init__(self, gap_ms: float) -> None:
        self.gap_ms = gap_ms
        self.speaking = False
        self.last_end = 0.0

    def chunk(
        self, offset_ms: float, duration_ms: float, segments: list[dict[str, float]]
    ) -> list[tuple[str, float]]:
        events: list[tuple[str, float]] = []
        for segment in segments:
            start = offset_ms + segment["start_ms"]
            end = offset_ms + segment["end_ms"]
            if self.speaking and start - self.last_end > self.gap_ms:
                events.append(("speech_stopped", self.last_end))
                self.speaking = False
            if not self.speaking:
                events.append(("speech_started", start))
                self.speaking = True
            self.last_end = end
        if self.speaking and offset_ms + duration_ms - self.last_end >= self.gap_ms:
            events.append(("speech_stopped", self.last_end))
            self.speaking = False
        return events

    def end(self) -> list[tuple[str, float]]:
        """The session ended (or was finalized): close an open segment."""
        if not self.speaking:
            return []
        self.speaking = False
        return [("speech_stopped", self.last_end)]
