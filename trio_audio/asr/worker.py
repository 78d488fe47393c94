"""A transcription worker process: ``python -m trio_audio.asr.worker``, spoken to over pipes.

The frames are defined in ``protocol.py``. ``init`` loads the engine and opens its one
stream before it answers, so a bad model or grammar is reported at once; then each
``decode`` request is one utterance, decoded from scratch (no state carries from one
utterance or session to the next: the same audio and prompt always give the same words).

The process holds no session state: any worker can decode any session's utterance, which is
what lets the transcriber share the workers fairly. It exits when its stdin closes. The
engine's C code may print: file descriptor 1 is pointed at stderr so nothing but frames ever
reaches the parent's pipe.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import signal
import sys
from typing import BinaryIO

import numpy as np

from ..audio import vad
from .engine import Engine, EngineError, EngineOptions, Hypothesis, load_engine
from .protocol import read_frame, write_frame

RATE = 16000
NICE = 10


class Decoder:
    """One engine stream, reused for one utterance after another."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.stream = engine.open_stream()
        # An engine written before prompts existed has ``start(self)``: it gets none.
        self.takes_context = len(inspect.signature(self.stream.start).parameters) >= 2

    def decode(
        self,
        pcm: bytes,
        offset_ms: float,
        *,
        partial: bool = False,
        prompt: str = "",
        window_s: float = 0.0,
    ) -> Hypothesis:
        """The words of one utterance (16 kHz 16-bit mono PCM that starts at *offset_ms* on
        the session's timeline), with times on that timeline.

        With *partial* the audio is an utterance still going on: the stream's hypothesis so
        far (its words may change; the next ``start`` ends that utterance). *prompt* and
        *window_s* go to the stream's ``start``."""
        if self.engine.sample_rate != RATE:
            samples = np.frombuffer(pcm, dtype="<i2") / 32768.0
            resampled = vad.resample(samples, RATE, self.engine.sample_rate)
            pcm = vad.to_pcm16(resampled).astype("<i2").tobytes()
        if self.takes_context:
            self.stream.start(prompt, window_s)
        else:
            self.stream.start()
        self.stream.feed(pcm)
        hypothesis = self.stream.partial() if partial else self.stream.finish()
        words = [w.shifted(offset_ms) for w in hypothesis.words]
        return Hypothesis(hypothesis.text, words)

    def close(self) -> None:
        self.stream.close()


def serve(inp: BinaryIO, out: BinaryIO) -> None:
    init = read_frame(inp)
    if init is None or init.get("op") != "init":
        return
    try:
        engine = load_engine(EngineOptions(**init["options"]))
        decoder = Decoder(engine)  # load the model now: fail early
    except (EngineError, RuntimeError, OSError) as exc:
        write_frame(out, {"ok": False, "error": str(exc)})
        return
    write_frame(out, {"ok": True, "engine": engine.name, "sample_rate": engine.sample_rate})
    while (request := read_frame(inp)) is not None:
        if request.get("op") != "decode":
            write_frame(out, {"ok": False, "error": f"unknown op {request.get('op')!r}"})
            continue
        try:
            hypothesis = decoder.decode(
                request["pcm"],
                float(request["offset_ms"]),
                partial=bool(request.get("partial", False)),
                prompt=str(request.get("prompt", "")),
                window_s=float(request.get("window_s", 0.0)),
            )
        except Exception as exc:  # the stream's state is suspect: a fresh one, keep serving
            decoder.close()
            decoder = Decoder(engine)
            write_frame(out, {"ok": False, "error": f"{type(exc).__name__}: {exc}"})
            continue
        words = [w.to_dict() for w in hypothesis.words]
        write_frame(out, {"ok": True, "text": hypothesis.text, "words": words})


def main() -> None:
    # Ctrl-C reaches the whole process group; the parent decides when this worker stops (it
    # closes stdin), so the interrupt is not the worker's to act on, nor to print.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Below the service in CPU priority: ingestion takes a core whenever it needs one, and
    # transcription gets the rest (its backlog is bounded, and it catches up).
    with contextlib.suppress(OSError):
        os.nice(NICE)
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # the engine's prints go to stderr, never into the frames
    serve(sys.stdin.buffer, out)


if __name__ == "__main__":
    main()
