"""The ``pocketsphinx`` engine: CMU PocketSphinx 5, offline, with the en-US model its wheel ships.

Words come from the decoder's segmentation (``seg()``, 100 frames per second) with fillers
(``<s>``, ``<sil>``, ``[NOISE]``...) left out and alternate pronunciations (``the(2)``)
folded; the confidence is the word's posterior probability. A JSGF grammar
(``asr_grammar``) or a keyphrase list (``asr_keyphrases``) replaces the language model for
constrained vocabularies. The decoder holds the GIL while it works: run it in a process.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Final

from .engine import EMPTY, EngineError, EngineOptions, EngineStream, Hypothesis, Word

FRAME_MS: Final = 10.0  # pocketsphinx's frame rate is 100 per second
_ALTERNATE: Final = re.compile(r"\(\d+\)$")


def _is_filler(word: str) -> bool:
    return word.startswith(("<", "[", "++", "(")) or word in ("", "NULL")


def model_files(model_dir: str) -> dict[str, str]:
    """``hmm``, ``dict`` and ``lm`` paths found in *model_dir* (the layout the wheel ships)."""
    if not model_dir:
        from pocketsphinx import get_model_path

        model_dir = get_model_path("en-us")
    root = Path(model_dir)
    hmm = next((p.parent for p in sorted(root.rglob("mdef"))), None)
    dicts = sorted(root.rglob("*.dict"))
    lms = sorted(p for p in root.rglob("*.lm*") if "phone" not in p.name)
    if hmm is None or not dicts:
        msg = f"no acoustic model (a folder with mdef) and dictionary (*.dict) in {root}"
        raise EngineError(msg)
    files = {"hmm": str(hmm), "dict": str(dicts[0])}
    if lms:
        files["lm"] = str(lms[0])
    return files


class PocketsphinxEngine:
    name = "pocketsphinx"
    sample_rate = 16000

    def __init__(self, options: EngineOptions) -> None:
        self.config: dict[str, Any] = {**model_files(options.model_dir), "loglevel": "FATAL"}
        self.config["samprate"] = self.sample_rate
        if options.grammar:
            self.config.pop("lm", None)
            self.config["jsgf"] = options.grammar
        elif options.keyphrases:
            self.config.pop("lm", None)
            self.config["kws"] = options.keyphrases

    def open_stream(self) -> EngineStream:
        return SphinxStream(self.config)


class SphinxStream:
    """One pocketsphinx ``Decoder``, reused utterance after utterance (of any session).

    The decoder normalises the cepstrum by a mean it learns as it hears (``-cmn batch``)
    and would carry it from one utterance into the next: the words of a session would
    depend on whoever spoke into the decoder before. Each utterance starts from the model's
    own initial mean instead, so the same audio gives the same words whatever ran before.
    """

    def __init__(self, config: dict[str, Any]) -> None:
        from pocketsphinx import Decoder

        try:
            self.decoder = Decoder(**config)
        except (RuntimeError, ValueError) as exc:
            msg = f"pocketsphinx cannot start with {config}: {exc}"
            raise EngineError(msg) from exc
        self.initial_cmn: str = self.decoder.get_cmn(False)
        self.open = False  # an utterance started and not finished (a partial's)

    def start(self, prompt: str = "", window_s: float = 0.0) -> None:
        if self.open:
            self.decoder.end_utt()
        self.decoder.set_cmn(self.initial_cmn)
        self.decoder.start_utt()
        self.open = True

    def feed(self, pcm: bytes) -> None:
        if pcm:
            self.decoder.process_raw(pcm, False, False)

    def _hypothesis(self) -> Hypothesis:
        hyp = self.decoder.hyp()
        if hyp is None:
            return EMPTY
        words = []
        for seg in self.decoder.seg() or ():
            if _is_filler(seg.word):
                continue
            words.append(
                Word(
                    word=_ALTERNATE.sub("", seg.word),
                    start_ms=seg.start_frame * FRAME_MS,
                    end_ms=(seg.end_frame + 1) * FRAME_MS,
                    confidence=min(1.0, max(0.0, float(seg.prob))),
                )
            )
        text = " ".join(w.word for w in words) or _ALTERNATE.sub("", hyp.hypstr.strip())
        return Hypothesis(text, words)

    def partial(self) -> Hypothesis:
        return self._hypothesis()

    def finish(self) -> Hypothesis:
        self.decoder.end_utt()
        self.open = False
        return self._hypothesis()

    def close(self) -> None:
        del self.decoder
