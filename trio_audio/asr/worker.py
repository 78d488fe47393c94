"""A transcription worker process: ``python -m trio_audio.asr.worker``, spoken to over pipes.

The frames are defined in ``protocol.py``; ``init`` loads one decoder before it answers, so
a bad model or grammar is reported at once.

The process holds its sessions' decoder state, which is why the parent pins each session to
one worker. It exits when its stdin closes. The engine's C code may print: file descriptor 1
is pointed at stderr so nothing but frames ever reaches the parent's pipe.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import BinaryIO

from .engine import EngineError, EngineOptions, load_engine
from .protocol import read_frame, write_frame
from .stream import Streams


def serve(inp: BinaryIO, out: BinaryIO) -> None:
    init = read_frame(inp)
    if init is None or init.get("op") != "init":
        return
    try:
        engine = load_engine(EngineOptions(**init["options"]))
        streams = Streams(
            engine,
            max_streams=init["max_streams"],
            vad_mode=init["vad_mode"],
            gap_ms=init["gap_ms"],
            max_utterance_s=init["max_utterance_s"],
        )
        streams.release(streams.acquire_new())  # load one decoder now: fail early
    except (EngineError, RuntimeError, OSError) as exc:
        write_frame(out, {"ok": False, "error": str(exc)})
        return
    write_frame(out, {"ok": True, "engine": engine.name, "sample_rate": engine.sample_rate})
    while (request := read_frame(inp)) is not None:
        key = request.get("key", "")
        try:
            match request.get("op"):
                case "feed":
                    results = streams.feed(key, request["pcm"], request["offset_ms"])
                case "finish":
                    results = streams.finish(key)
                case "close":
                    results = streams.close(key)
                case op:
                    write_frame(out, {"ok": False, "error": f"unknown op {op!r}"})
                    continue
        except Exception as exc:  # the session's state is suspect: drop it, keep serving
            streams.discard(key)
            write_frame(out, {"ok": False, "error": f"{type(exc).__name__}: {exc}"})
            continue
        write_frame(out, {"ok": True, "results": [r.to_dict() for r in results]})


def main() -> None:
    # Ctrl-C reaches the whole process group; the parent decides when this worker stops (it
    # closes stdin), so the interrupt is not the worker's to act on, nor to print.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # the engine's prints go to stderr, never into the frames
    serve(sys.stdin.buffer, out)


if __name__ == "__main__":
    main()
