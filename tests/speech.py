"""Real speech for the tests: espeak-ng's voice, kept as small FLAC fixtures.

The sentences the tests speak are committed under ``tests/fixtures/speech`` (16 kHz mono),
so the tests need no speech synthesiser and hear the same audio on every machine. They were
made, and are remade after changing a sentence, with::

    python -m tests.speech        # needs espeak-ng (apt-get install espeak-ng)

A sentence with no fixture is spoken by espeak-ng on the spot; without espeak-ng that test
fails (never skips), since it would hide a missing fixture.
"""

from __future__ import annotations

import io
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from trio_audio.audio import vad

RATE = 16000
VOICE = "en-us"
WORDS_PER_MINUTE = 140

# The grammar the exact-sentence tests use, and sentences it allows.
GRAMMAR = """#JSGF V1.0;
grammar lights;
public <command> = [please] (turn on | turn off | dim) the (kitchen | bedroom | hallway) light;
"""
SENTENCE = "turn on the kitchen light"
OTHER_SENTENCE = "please dim the hallway light"


FIXTURES = Path(__file__).parent / "fixtures" / "speech"
FIXTURE_TEXTS = (SENTENCE, OTHER_SENTENCE, "the weather is nice today",
                 "the weather is nice today and the sun is shining")  # fmt: skip


def fixture_path(text: str) -> Path:
    return FIXTURES / (text.replace(" ", "_") + ".flac")


def espeak_ng() -> str:
    path = shutil.which("espeak-ng")
    if path is None:
        pytest.fail(
            "no fixture for this sentence and no espeak-ng to speak it (see tests/speech.py)"
        )
    return path


def synthesize(text: str) -> np.ndarray:
    """*text* spoken by espeak-ng, as 16 kHz mono float32."""
    wav = subprocess.run(
        [espeak_ng(), "-v", VOICE, "-s", str(WORDS_PER_MINUTE), "--stdout", text],
        check=True,
        capture_output=True,
        timeout=30,
    ).stdout
    samples, rate = sf.read(io.BytesIO(wav), dtype="float32")
    return vad.resample(samples, rate, RATE)


def speak(text: str, *, lead_s: float = 0.3, tail_s: float = 1.0) -> np.ndarray:
    """*text* spoken (from its fixture) as 16 kHz mono float32, with silence around it."""
    path = fixture_path(text)
    if path.exists():
        mono, _ = sf.read(path, dtype="float32")
    else:
        mono = synthesize(text)
    lead = np.zeros(int(lead_s * RATE), np.float32)
    tail = np.zeros(int(tail_s * RATE), np.float32)
    return np.concatenate([lead, mono, tail])


def to_wav(samples: np.ndarray, rate: int = RATE) -> bytes:
    out = io.BytesIO()
    sf.write(out, samples, rate, format="WAV", subtype="PCM_16")
    return out.getvalue()


def pieces(samples: np.ndarray, seconds: float) -> list[np.ndarray]:
    step = int(seconds * RATE)
    return [samples[i : i + step] for i in range(0, samples.size, step)]


def grammar_file(directory: Path) -> Path:
    path = directory / "lights.gram"
    path.write_text(GRAMMAR)
    return path


def word_error_rate(reference: str, hypothesis: str) -> tuple[int, int]:
    """(word edits, reference words): Levenshtein distance over words."""
    ref, hyp = reference.split(), hypothesis.split()
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[len(hyp)], len(ref)


if __name__ == "__main__":
    FIXTURES.mkdir(parents=True, exist_ok=True)
    for sentence in FIXTURE_TEXTS:
        sf.write(
            fixture_path(sentence), synthesize(sentence), RATE, format="FLAC", subtype="PCM_16"
        )
        print(fixture_path(sentence))
