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
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from trio_audio.bench.speech import RATE, padded, pieces, synthesize

__all__ = ["RATE", "pieces"]  # re-exported for the speech tests

# The grammar the exact-sentence tests use, and sentences it allows.
GRAMMAR = """#JSGF V1.0;
grammar lights;
public <command> = [please] (turn on | turn off | dim) the (kitchen | bedroom | hallway) light;
"""
SENTENCE = "turn on the kitchen light"
OTHER_SENTENCE = "please dim the hallway light"


FIXTURES = Path(__file__).parent / "fixtures" / "speech"
# A name tiny.en writes as other words ("Cuba needs") unless it is told to expect it.
NAME = "Kubernetes"
NAME_SENTENCE = "please send the report to kubernetes before lunch"
FIXTURE_TEXTS = (SENTENCE, OTHER_SENTENCE, "the weather is nice today",
                 "the weather is nice today and the sun is shining", NAME_SENTENCE,
                 "front")  # fmt: skip


def fixture_path(text: str) -> Path:
    return FIXTURES / (text.replace(" ", "_") + ".flac")


def speak(text: str, *, lead_s: float = 0.3, tail_s: float = 1.0) -> np.ndarray:
    """*text* spoken (from its fixture) as 16 kHz mono float32, with silence around it."""
    path = fixture_path(text)
    if path.exists():
        mono, _ = sf.read(path, dtype="float32")
        return padded(mono, lead_s, tail_s)
    try:
        return padded(synthesize(text), lead_s, tail_s)
    except RuntimeError as exc:
        pytest.fail(f"no fixture for {text!r}, and {exc}")


def to_wav(samples: np.ndarray, rate: int = RATE) -> bytes:
    out = io.BytesIO()
    sf.write(out, samples, rate, format="WAV", subtype="PCM_16")
    return out.getvalue()


def grammar_file(directory: Path) -> Path:
    path = directory / "lights.gram"
    path.write_text(GRAMMAR)
    return path


if __name__ == "__main__":
    FIXTURES.mkdir(parents=True, exist_ok=True)
    for sentence in FIXTURE_TEXTS:
        sf.write(
            fixture_path(sentence), synthesize(sentence), RATE, format="FLAC", subtype="PCM_16"
        )
        print(fixture_path(sentence))
