"""The speech-recognition engine interface, the engine registry and the ``none`` engine.

An engine turns 16-bit mono PCM at its ``sample_rate`` into words. It hands out streams; a
stream decodes one utterance at a time (``start``, ``feed`` as audio comes, ``partial`` for
the hypothesis so far, ``finish`` for the final words) and can then start the next one.
Streams are expensive (pocketsphinx: ~90 MB with its default language model), so the
transcription worker keeps a bounded pool of them and lends one to a session only while it
is inside an utterance.

Built in: ``whisper`` (the default: CTranslate2's Whisper, whole utterances), ``pocketsphinx``
(small, streams partials, grammars) and ``none``. Adding an engine (Vosk, another runtime)
touches neither the pipeline nor the transcriber: write a class with this interface and name
it with ``--asr-engine package.module:Class``.
The class is called with the ``EngineOptions``. Plain code, no trio: engines run inside the
worker processes.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Final, Protocol

import attrs

BUILTIN_ENGINES: Final = {
    "whisper": "trio_audio.asr.whisper:WhisperEngine",
    "pocketsphinx": "trio_audio.asr.sphinx:PocketsphinxEngine",
    "none": "trio_audio.asr.engine:NoEngine",
}


class EngineError(ValueError):
    """The engine cannot be made from its options (unknown name, missing model, bad grammar)."""


@attrs.frozen
class Word:
    """One recognised word; times in ms (from the utterance start inside an engine)."""

    word: str
    start_ms: float
    end_ms: float
    confidence: float

    def shifted(self, ms: float) -> Word:
        return attrs.evolve(self, start_ms=self.start_ms + ms, end_ms=self.end_ms + ms)

    def to_dict(self) -> dict[str, Any]:
        return {
            "word": self.word,
            "start_ms": round(self.start_ms, 1),
            "end_ms": round(self.end_ms, 1),
            "confidence": round(self.confidence, 4),
        }


def same_words(said: list[str], again: list[str]) -> bool:
    """Whether two runs of words say the same, case and punctuation aside ("Please" and
    "please,"): how an echo of words already said is known."""
    return len(said) == len(again) and all(
        plain(a) == plain(b) for a, b in zip(said, again, strict=True)
    )


def plain(word: str) -> str:
    """*word* with case and punctuation aside: how two sayings of it compare."""
    return "".join(c for c in word.lower() if c.isalnum())


@attrs.frozen
class Hypothesis:
    text: str
    words: list[Word]


EMPTY: Final = Hypothesis("", [])


@attrs.frozen
class EngineOptions:
    """What configures an engine (from ``Config``'s ``asr_*`` fields)."""

    engine: str = "whisper"
    model_dir: str = ""  # empty: the model the engine ships
    grammar: str = ""  # a JSGF file: only its sentences are recognised
    keyphrases: str = ""  # a keyphrase list file (one phrase per line, ``/threshold/``)
    window_s: float = 30.0  # whisper: the shortest encoder window (30: always the full one)

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


class EngineStream(Protocol):
    def start(self, prompt: str = "", window_s: float = 0.0) -> None:
        """Begin an utterance. *prompt*: the text said before it and words to expect (an
        engine that cannot use it ignores it); *window_s*: the shortest audio window to
        decode it in, for an engine that has one (0: its own choice)."""

    def feed(self, pcm: bytes) -> None:
        """16-bit little-endian mono PCM at the engine's sample rate."""

    def partial(self) -> Hypothesis:
        """The hypothesis of the utterance so far (words may still change). The utterance
        may be left open: the next ``start`` ends it."""

    def finish(self) -> Hypothesis:
        """End the utterance; its final words, times from the utterance start."""

    def close(self) -> None: ...


class Engine(Protocol):
    name: str
    sample_rate: int

    def open_stream(self) -> EngineStream: ...


def check_options(options: EngineOptions) -> None:
    """Raise ``EngineError`` for options that cannot work, cheaply (no model is loaded)."""
    if options.engine not in BUILTIN_ENGINES and ":" not in options.engine:
        names = ", ".join(BUILTIN_ENGINES)
        msg = f"asr_engine must be one of {names} or package.module:Class, got {options.engine!r}"
        raise EngineError(msg)
    for name in ("model_dir", "grammar", "keyphrases"):
        value = getattr(options, name)
        if value and not Path(value).exists():
            msg = f"asr_{name} {value!r} does not exist"
            raise EngineError(msg)
    if not 1 <= options.window_s <= 30:
        msg = f"asr_window_s must be from 1 to 30 (seconds), got {options.window_s}"
        raise EngineError(msg)
    if options.grammar and options.keyphrases:
        msg = "give asr_grammar or asr_keyphrases, not both"
        raise EngineError(msg)
    if options.engine == "whisper" and (options.grammar or options.keyphrases):
        msg = "asr_grammar and asr_keyphrases need --asr-engine pocketsphinx (not whisper)"
        raise EngineError(msg)


def load_engine(options: EngineOptions) -> Engine:
    """The engine *options* name, made (this loads its model)."""
    check_options(options)
    target = BUILTIN_ENGINES.get(options.engine, options.engine)
    module_name, _, attr = target.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        msg = f"cannot load the speech engine {target!r}: {exc}"
        raise EngineError(msg) from exc
    engine: Engine = factory(options)
    return engine


class NoEngine:
    """Recognises nothing (``asr_engine=none``: transcripts stay ``disabled``)."""

    name = "none"
    sample_rate = 16000

    def __init__(self, options: EngineOptions) -> None:
        self.options = options

    def open_stream(self) -> EngineStream:
        return _NoStream()


class _NoStream:
    def start(self, prompt: str = "", window_s: float = 0.0) -> None:
        pass

    def feed(self, pcm: bytes) -> None:
        pass

    def partial(self) -> Hypothesis:
        return EMPTY

    def finish(self) -> Hypothesis:
        return EMPTY

    def close(self) -> None:
        pass
