"""CPU per chunk of the analysis, one chunk at a time against a group in one step.

The analysis the analyse stage runs on each chunk (features, band spectrum, voice activity)
is timed with the process's CPU clock, so other work on the machine moves it little:

- ``one at a time``: ``power_spectrum``, ``analyze_spectrum`` and ``vad.analyze`` per chunk,
  which are now groups of one through the same code (so this is what a chunk costs when it
  arrives alone, not the code before groups: for that, run this against an older checkout);
- ``grouped``: ``power_spectra``, ``analyze_spectra`` and ``vad.analyze_batch`` over the
  group, as the stages run a group of chunks that arrived together.

Run: ``python -m trio_audio.bench.analysis [--rounds N]``; prints a table of microseconds of
CPU per chunk for 100 ms and 1 s chunks of 16 kHz audio (speech-like tones with noise) in
groups of 1, 8 and 32, and the grouped/one-at-a-time ratio.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

import numpy as np

from ..audio import features, vad
from .audio import RATE, pcm16


def chunks(seconds: float, count: int) -> list[np.ndarray]:
    return [
        np.frombuffer(pcm16(seconds, i), "<i2").astype(np.float32) / 32768.0 for i in range(count)
    ]


def one_at_a_time(monos: list[np.ndarray]) -> None:
    for mono in monos:
        spectrum = features.power_spectrum(mono, RATE)
        features.analyze_spectrum(mono, mono, spectrum).to_dict()
        vad.analyze(vad.speech_pcm(mono, RATE), 2, 500.0)


def grouped(monos: list[np.ndarray]) -> None:
    spectra = features.power_spectra(monos, [RATE] * len(monos))
    for analysis in features.analyze_spectra(monos, monos, spectra):
        analysis.to_dict()
    vad.analyze_batch([vad.speech_pcm(mono, RATE) for mono in monos], 2, 500.0)


def cpu_per_chunk(
    run: Callable[[list[np.ndarray]], None], monos: list[np.ndarray], rounds: int
) -> float:
    """Median over *rounds* of CPU seconds per chunk."""
    run(monos)  # warm caches and the model
    samples = []
    for _ in range(rounds):
        started = time.process_time()
        run(monos)
        samples.append((time.process_time() - started) / len(monos))
    return float(np.median(samples))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trio_audio.bench.analysis")
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args(argv)
    print("chunk  group  one at a time us  grouped us  ratio")
    for seconds in (0.1, 1.0):
        for size in (1, 8, 32):
            monos = chunks(seconds, size)
            rounds = max(3, args.rounds * 8 // size if seconds < 1 else args.rounds // 4)
            alone = cpu_per_chunk(one_at_a_time, monos, rounds)
            together = cpu_per_chunk(grouped, monos, rounds)
            print(f"{seconds * 1000:4.0f}ms  {size:5d}  {alone * 1e6:16.0f}  "
                  f"{together * 1e6:10.0f}  {together / alone:5.2f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
