"""Recognition in-process: utterances cut by the VAD, decoded by the real pocketsphinx engine."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import trio

from trio_audio.asr.engine import (
    EngineError,
    EngineOptions,
    Hypothesis,
    Word,
    check_options,
    load_engine,
)
from trio_audio.asr.process import WorkerProcess
from trio_audio.asr.utterances import Assembler, Utterance
from trio_audio.asr.worker import NICE, Decoder
from trio_audio.audio import vad

from .speech import OTHER_SENTENCE, RATE, SENTENCE, grammar_file, pieces, speak


def utterances_of(audio: np.ndarray, start_ms: float = 0.0, piece_s: float = 0.25,
                  finish: bool = True) -> list[Utterance]:  # fmt: skip
    """What the transcriber cuts *audio* into: per-chunk VAD, then the assembler."""
    assembler = Assembler(gap_ms=500, max_ms=30_000, start_ms=start_ms)
    out: list[Utterance] = []
    offset = start_ms
    for piece in pieces(audio, piece_s):
        pcm = vad.to_pcm16(piece)
        out += assembler.add(offset, pcm, vad.analyze(pcm, 2, 500).segments)
        offset += piece.size / RATE * 1000
    return out + (assembler.finish() if finish else [])


@pytest.fixture(scope="module")
def grammar(tmp_path_factory: pytest.TempPathFactory) -> EngineOptions:
    path = grammar_file(tmp_path_factory.mktemp("grammar"))
    return EngineOptions(engine="pocketsphinx", grammar=str(path))


def check_words(words: list, lo_ms: float, hi_ms: float) -> None:
    starts = [w.start_ms for w in words]
    assert starts == sorted(starts)
    for w in words:
        assert lo_ms <= w.start_ms < w.end_ms <= hi_ms
        assert 0.0 <= w.confidence <= 1.0


def test_a_grammar_gives_the_exact_sentence_on_the_session_timeline(
    grammar: EngineOptions,
) -> None:
    decoder = Decoder(load_engine(grammar))
    audio = speak(SENTENCE, lead_s=0.5, tail_s=1.0)
    (utterance,) = utterances_of(audio, start_ms=2000.0)
    hypothesis = decoder.decode(utterance.pcm, utterance.start_ms)
    assert hypothesis.text == SENTENCE
    assert [w.word for w in hypothesis.words] == SENTENCE.split()
    loud = np.flatnonzero(np.abs(audio) > 0.02) / RATE * 1000 + 2000.0  # session timeline
    check_words(hypothesis.words, loud[0] - 150, loud[-1] + 150)


def test_the_same_audio_gives_the_same_words_whatever_was_decoded_before(
    grammar: EngineOptions,
) -> None:
    decoder = Decoder(load_engine(grammar))
    (first,) = utterances_of(speak(SENTENCE))
    before = decoder.decode(first.pcm, 0.0)
    for other in utterances_of(speak(OTHER_SENTENCE)) + utterances_of(
        np.random.default_rng(1).normal(0, 0.3, 3 * RATE).astype(np.float32)
    ):
        decoder.decode(other.pcm, 0.0)
        decoder.decode(other.pcm, 0.0, partial=True)  # leaves its utterance open
    assert decoder.decode(first.pcm, 0.0, partial=True).text == SENTENCE
    after = decoder.decode(first.pcm, 0.0)
    assert after.text == before.text == SENTENCE  # the text is a function of the audio alone
    for a, b in zip(after.words, before.words, strict=True):
        assert (a.word, round(a.start_ms, -2)) == (b.word, round(b.start_ms, -2))


def test_the_default_model_finds_words_in_speech_and_none_in_silence() -> None:
    decoder = Decoder(load_engine(EngineOptions(engine="pocketsphinx")))
    assert utterances_of(np.zeros(3 * RATE, np.float32)) == []  # silence: nothing to decode
    audio = speak("the weather is nice today and the sun is shining")
    words = [w for u in utterances_of(audio) for w in decoder.decode(u.pcm, u.start_ms).words]
    assert words, "speech must give words"
    check_words(words, 0.0, audio.size / 16)


def test_utterances_end_on_silence_and_on_finish(grammar: EngineOptions) -> None:
    decoder = Decoder(load_engine(grammar))
    other = speak(OTHER_SENTENCE, tail_s=0.0)
    other = other[: np.flatnonzero(np.abs(other) > 0.01)[-1] + RATE // 10]  # ends as it speaks
    audio = np.concatenate([speak(SENTENCE), other])
    ended = utterances_of(audio, finish=False)
    assert [decoder.decode(u.pcm, u.start_ms).text for u in ended] == [SENTENCE]
    everything = utterances_of(audio)
    texts = [decoder.decode(u.pcm, u.start_ms).text for u in everything]
    assert texts == [SENTENCE, OTHER_SENTENCE]
    assert everything[-1].end_ms == pytest.approx(audio.size / 16, abs=1)


def test_engines_are_found_by_name_or_by_path(tmp_path: Path) -> None:
    assert load_engine(EngineOptions(engine="none")).name == "none"
    assert load_engine(EngineOptions(engine="trio_audio.asr.engine:NoEngine")).name == "none"
    with pytest.raises(EngineError, match="asr_engine must be one of"):
        check_options(EngineOptions(engine="vosk"))
    with pytest.raises(EngineError, match="does not exist"):
        check_options(EngineOptions(engine="pocketsphinx", grammar=str(tmp_path / "missing.gram")))
    with pytest.raises(EngineError, match="cannot load"):
        load_engine(EngineOptions(engine="no_such_module:Engine"))
    bad = tmp_path / "bad.gram"
    bad.write_text("this is not JSGF")
    with pytest.raises(EngineError):
        load_engine(EngineOptions(engine="pocketsphinx", grammar=str(bad))).open_stream()


async def test_a_worker_process_runs_below_the_service_in_cpu_priority() -> None:
    # Ingestion answers clients; transcription catches up: the kernel should favour the first.
    worker = WorkerProcess(0, {"op": "init", "options": EngineOptions(engine="none").to_dict()})
    async with trio.open_nursery() as nursery:
        await worker.start(nursery)
        ours = os.getpriority(os.PRIO_PROCESS, 0)
        assert os.getpriority(os.PRIO_PROCESS, worker.pid) == min(19, ours + NICE)
        await worker.aclose()


class _OldStream:
    """An engine stream written before prompts: ``start`` takes nothing."""

    def __init__(self) -> None:
        self.fed = 0

    def start(self) -> None:
        self.fed = 0

    def feed(self, pcm: bytes) -> None:
        self.fed += len(pcm)

    def partial(self) -> Hypothesis:
        return self.finish()

    def finish(self) -> Hypothesis:
        return Hypothesis(f"{self.fed} bytes", [Word("bytes", 0.0, 10.0, 1.0)])

    def close(self) -> None:
        pass


class _OldEngine:
    name = "old"
    sample_rate = 16000

    def open_stream(self) -> _OldStream:
        return _OldStream()


def test_an_engine_without_prompts_still_decodes_with_them() -> None:
    decoder = Decoder(_OldEngine())  # type: ignore[arg-type]
    hypothesis = decoder.decode(b"\0\0" * 1600, 500.0, prompt="words said before", window_s=10)
    assert hypothesis.text == "3200 bytes" and hypothesis.words[0].start_ms == 500.0
