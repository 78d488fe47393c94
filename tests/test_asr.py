"""Streaming recognition in-process: the real pocketsphinx engine, real espeak-ng speech."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from trio_audio.asr.engine import EngineError, EngineOptions, check_options, load_engine
from trio_audio.asr.stream import Result, Streams
from trio_audio.audio import vad

from .speech import OTHER_SENTENCE, RATE, SENTENCE, grammar_file, pieces, speak


def streams(options: EngineOptions, max_streams: int = 2) -> Streams:
    return Streams(
        load_engine(options), max_streams=max_streams, vad_mode=2, gap_ms=500,
        max_utterance_s=30,
    )  # fmt: skip


def feed_all(s: Streams, key: str, audio: np.ndarray, start_ms: float = 0.0,
             piece_s: float = 0.1) -> list[Result]:  # fmt: skip
    """Feed *audio* in pieces (words cross their boundaries); every result, in order."""
    out: list[Result] = []
    offset = start_ms
    for piece in pieces(audio, piece_s):
        out += s.feed(key, vad.to_pcm16(piece).tobytes(), offset)
        offset += piece.size / RATE * 1000
    return out


@pytest.fixture(scope="module")
def grammar(tmp_path_factory: pytest.TempPathFactory) -> EngineOptions:
    path = grammar_file(tmp_path_factory.mktemp("grammar"))
    return EngineOptions(engine="pocketsphinx", grammar=str(path))


def check_words(words: list[dict[str, float]] | list, lo_ms: float, hi_ms: float) -> None:
    starts = [w.start_ms for w in words]
    assert starts == sorted(starts)
    for w in words:
        assert lo_ms <= w.start_ms < w.end_ms <= hi_ms
        assert 0.0 <= w.confidence <= 1.0


def test_a_grammar_gives_the_exact_sentence_with_partials_first(grammar: EngineOptions) -> None:
    s = streams(grammar)
    audio = speak(SENTENCE, lead_s=0.5, tail_s=1.0)
    results = feed_all(s, "u/s", audio, start_ms=2000.0)
    finals = [u for r in results for u in r.finals]
    assert [u.text for u in finals] == [SENTENCE]
    words = finals[0].words
    assert [w.word for w in words] == SENTENCE.split()
    loud = np.flatnonzero(np.abs(audio) > 0.02) / RATE * 1000 + 2000.0  # session timeline
    check_words(words, loud[0] - 150, loud[-1] + 150)
    first_final = next(i for i, r in enumerate(results) if r.finals)
    partials = [r.partial for r in results[:first_final] if r.partial is not None]
    assert partials and partials[-1].text.split()[0] == "turn"
    assert results[-1].final_until_ms == pytest.approx(2000 + audio.size / 16, abs=1)


def test_the_pocketsphinx_model_finds_words_in_speech_and_none_in_silence() -> None:
    s = streams(EngineOptions(engine="pocketsphinx"))
    silent = feed_all(s, "u/quiet", np.zeros(3 * RATE, np.float32))
    assert not any(r.finals or r.partial for r in silent)
    assert silent[-1].final_until_ms == pytest.approx(3000, abs=1)
    audio = speak("the weather is nice today and the sun is shining")
    results = feed_all(s, "u/talk", audio)
    results += s.close("u/talk")
    finals = [u for r in results for u in r.finals]
    words = [w for u in finals for w in u.words]
    assert words, "speech must give words"
    check_words(words, 0.0, audio.size / 16)
    assert s.close("u/quiet")[0].finals == []


def test_utterances_end_on_silence_and_on_finish(grammar: EngineOptions) -> None:
    s = streams(grammar)
    audio = np.concatenate([speak(SENTENCE), speak(OTHER_SENTENCE, tail_s=0.0)])
    results = feed_all(s, "u/s", audio, piece_s=0.25)
    assert [u.text for r in results for u in r.finals] == [SENTENCE]  # the second is open
    assert results[-1].final_until_ms < audio.size / 16 - 1000
    (done,) = s.finish("u/s")
    assert [u.text for u in done.finals] == [OTHER_SENTENCE]
    assert done.final_until_ms == pytest.approx(audio.size / 16, abs=1)


def test_sessions_share_a_bounded_pool_of_decoders(grammar: EngineOptions) -> None:
    s = streams(grammar, max_streams=1)
    a, b = speak(SENTENCE, tail_s=0.0), speak(OTHER_SENTENCE, tail_s=0.0)
    results: list[Result] = []
    for i, (pa, pb) in enumerate(zip(pieces(a, 0.1), pieces(b, 0.1), strict=False)):
        results += s.feed("u/a", vad.to_pcm16(pa).tobytes(), i * 100.0)
        results += s.feed("u/b", vad.to_pcm16(pb).tobytes(), i * 100.0)
        assert s.streams_in_use <= 1
    results += s.close("u/a") + s.close("u/b")
    texts = {r.key: " ".join(u.text for u in r.finals) for r in results if r.finals}
    # Each session keeps its own words; a decoder taken away cuts an utterance, no more.
    assert set(texts) == {"u/a", "u/b"}
    assert all(texts.values())


def test_a_gap_in_the_timeline_ends_the_utterance(grammar: EngineOptions) -> None:
    s = streams(grammar)
    audio = speak(SENTENCE, tail_s=0.0)
    results = feed_all(s, "u/s", audio)
    results += s.feed("u/s", vad.to_pcm16(np.zeros(RATE // 2)).tobytes(), 60_000.0)
    assert [u.text for r in results for u in r.finals] == [SENTENCE]


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


def test_the_same_audio_in_a_fresh_session_gives_the_same_words_whatever_ran_before() -> None:
    # One decoder serves every session in turn: nothing of one session may reach the next.
    s = streams(EngineOptions(engine="pocketsphinx"), max_streams=1)
    audio = speak("the weather is nice today")
    louder = 3.0 * speak("the weather is nice today and the sun is shining")
    texts = []
    for i, other in enumerate((None, louder, 0.2 * speak(OTHER_SENTENCE), None)):
        if other is not None:
            results = feed_all(s, f"u/other{i}", other) + s.close(f"u/other{i}")
            assert any(r.finals for r in results)
        results = feed_all(s, f"u/same{i}", audio) + s.close(f"u/same{i}")
        texts.append(" ".join(u.text for r in results for u in r.finals))
    assert texts[0] and texts == [texts[0]] * 4
