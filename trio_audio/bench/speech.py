"""Speech benchmark: real-time factor, live sessions per machine, word error rate.

    python -m trio_audio.bench.speech      (or: nox -s bench_speech; needs espeak-ng)

Audio is made by espeak-ng (voice en-us, 140 words per minute), resampled to 16 kHz, and
fed in 250 ms chunks as a live client would send it. Numbers go to stdout; the README quotes
them. Not a test: nothing here asserts.
"""

from __future__ import annotations

import io
import multiprocessing
import os
import shutil
import subprocess
import time

import numpy as np
import soundfile as sf

from ..asr.engine import EngineOptions, load_engine
from ..asr.utterances import Assembler
from ..asr.worker import Decoder
from ..audio import vad

RATE = 16000
VOICE = "en-us"
WORDS_PER_MINUTE = 140


def synthesize(text: str) -> np.ndarray:
    """*text* spoken by espeak-ng (``apt-get install espeak-ng``), as 16 kHz mono float32."""
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        msg = "espeak-ng is not installed (apt-get install espeak-ng)"
        raise RuntimeError(msg)
    wav = subprocess.run(
        [espeak, "-v", VOICE, "-s", str(WORDS_PER_MINUTE), "--stdout", text],
        check=True,
        capture_output=True,
        timeout=30,
    ).stdout
    samples, rate = sf.read(io.BytesIO(wav), dtype="float32")
    return vad.resample(samples, rate, RATE)


def padded(mono: np.ndarray, lead_s: float, tail_s: float) -> np.ndarray:
    """*mono* with silence before and after."""
    lead = np.zeros(int(lead_s * RATE), np.float32)
    tail = np.zeros(int(tail_s * RATE), np.float32)
    return np.concatenate([lead, mono, tail])


def speak(text: str, *, lead_s: float = 0.3, tail_s: float = 1.0) -> np.ndarray:
    return padded(synthesize(text), lead_s, tail_s)


def pieces(samples: np.ndarray, seconds: float) -> list[np.ndarray]:
    step = int(seconds * RATE)
    return [samples[i : i + step] for i in range(0, samples.size, step)]


def word_error_rate(reference: str, hypothesis: str) -> tuple[int, int]:
    """(word edits, reference words): Levenshtein distance over words."""
    ref, hyp = reference.split(), hypothesis.split()
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[len(hyp)], len(ref)


# The WER set: ten everyday sentences, every word in the model's dictionary.
SENTENCES = [
    "the weather is nice today",
    "please call me back tomorrow morning",
    "i would like a cup of coffee",
    "the meeting starts at ten o'clock",
    "we need to buy some milk and bread",
    "can you send me the report",
    "my flight was delayed by two hours",
    "turn left at the next street",
    "she is reading a book in the garden",
    "thank you very much for your help",
]
CHUNK_S = 0.25


def new_decoder() -> Decoder:
    return Decoder(load_engine(EngineOptions()))


def session_audio() -> np.ndarray:
    """All ten sentences with the silence espeak-ng and we put between them (~55% speech)."""
    return np.concatenate([speak(s, lead_s=0.3, tail_s=0.7) for s in SENTENCES])


def transcribe(decoder: Decoder, audio: np.ndarray) -> str:
    """What the service does with a session: VAD per chunk, utterances, one decode each."""
    assembler = Assembler(gap_ms=500, max_ms=30_000)
    utterances = []
    offset = 0.0
    for piece in pieces(audio, CHUNK_S):
        pcm = vad.to_pcm16(piece)
        segments = vad.analyze(pcm, 2, 500).segments
        utterances += assembler.add(offset, pcm, segments)
        offset += piece.size / RATE * 1000
    utterances += assembler.finish()
    texts = [decoder.decode(u.pcm, u.start_ms).text for u in utterances]
    return " ".join(t for t in texts if t)


def rtf_and_wer() -> None:
    decoder = new_decoder()  # load the model before timing
    edits = total = 0
    decode_s = audio_s = 0.0
    for sentence in SENTENCES:
        audio = speak(sentence)
        started = time.process_time()
        text = transcribe(decoder, audio)
        decode_s += time.process_time() - started
        audio_s += audio.size / RATE
        e, n = word_error_rate(sentence, text)
        edits, total = edits + e, total + n
        print(f"  ref: {sentence}\n  hyp: {text}")
    print(f"WER (default model): {edits}/{total} = {edits / total:.1%}")
    print(f"real-time factor per core (CPU s per audio s): {decode_s / audio_s:.3f}")


def _live(args: tuple[int, np.ndarray]) -> float:
    """Transcribe *sessions* sessions' audio in one process; CPU seconds per audio second."""
    sessions, audio = args
    decoder = new_decoder()
    started = time.process_time()
    for _ in range(sessions):
        transcribe(decoder, audio)
    return (time.process_time() - started) / (audio.size / RATE)


def live_sessions() -> None:
    cores = os.cpu_count() or 1
    audio = session_audio()
    print(f"live-session audio: {audio.size / RATE:.1f} s, 250 ms chunks, {cores} cores")
    with multiprocessing.get_context("spawn").Pool(cores) as pool:
        for sessions in (1, 2, 4, 6, 8, 12):
            load = pool.map(_live, [(sessions, audio)] * cores)
            busy = max(load)
            verdict = "real time" if busy < 1.0 else "falls behind"
            print(f"  {sessions} sessions per worker x {cores} workers: "
                  f"{busy:.2f} CPU s per audio s ({verdict})")  # fmt: skip


if __name__ == "__main__":
    rtf_and_wer()
    live_sessions()
