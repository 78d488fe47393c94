"""What a decode hears besides its audio: vocabulary, previous words, the window. Pure."""

from __future__ import annotations

import pytest

from trio_audio.asr.context import (
    CONTEXT_WORDS,
    VOCABULARY_MAX_TERMS,
    Deadline,
    PreviousWords,
    parse_vocabulary,
    prompt,
)
from trio_audio.errors import InvalidField


def test_vocabulary_is_a_list_or_comma_separated_terms_and_bounded() -> None:
    assert parse_vocabulary(None) == ()
    assert parse_vocabulary([]) == ()
    assert parse_vocabulary(" Kubernetes , Siobhan Ní Dhuibhir,,") == (
        "Kubernetes", "Siobhan Ní Dhuibhir"
    )  # fmt: skip
    assert parse_vocabulary(["trio-audio", " "]) == ("trio-audio",)
    too_many = [f"t{i}" for i in range(VOCABULARY_MAX_TERMS + 1)]
    for bad in (too_many, ["x" * 65], ["line\nbreak"], [3], {"a": 1}, ["y" * 60] * 9):
        with pytest.raises(InvalidField):
            parse_vocabulary(bad)


def test_the_prompt_names_the_vocabulary_then_the_last_words_said() -> None:
    previous = PreviousWords()
    assert prompt((), previous.words) == ""
    previous.add([{"word": f"w{i}"} for i in range(CONTEXT_WORDS + 5)])
    assert previous.words[0] == "w5" and len(previous.words) == CONTEXT_WORDS  # the last ones
    assert prompt(("Kubernetes", "Siobhan"), ["Hello", "there."]) == (
        "Kubernetes, Siobhan. Hello there."
    )
    assert prompt(("Kubernetes",), []) == "Kubernetes."


def test_only_a_live_final_late_for_its_deadline_gets_the_short_window() -> None:
    deadline = Deadline(deadline_s=1.5, full_window_s=30, short_window_s=10)
    assert deadline.window_s(0.1, alone=True) == 0.0  # 0.1 + 1.0 s estimate: in time
    assert deadline.window_s(0.6, alone=True) == 10  # would be late
    assert deadline.window_s(60.0, alone=False) == 0.0  # a pack (an upload) is not live
    for _ in range(20):
        deadline.took(0.3, 0.0)  # full-window decodes got fast
    assert deadline.window_s(0.6, alone=True) == 0.0
    assert deadline.counts == {"full": 3, "short": 1}
    assert Deadline(1.5, 10, 10).window_s(60.0, alone=True) == 0.0  # nothing shorter to use


def test_a_final_is_shortened_when_a_slow_decode_would_be_late_and_the_spread_fades() -> None:
    deadline = Deadline(deadline_s=1.5, full_window_s=30, short_window_s=10)
    for _ in range(30):
        deadline.took(0.5, 0.0)
    assert deadline.window_s(0.8, alone=True) == 0.0  # steady 0.5 s decodes: in time
    for seconds in (0.3, 0.9, 0.3, 0.9):
        deadline.took(seconds, 0.0)  # the same mean, but some decodes are slow
    assert deadline.window_s(0.8, alone=True) == 10  # a slow one would be late
    for _ in range(20):  # only short decodes since: the spread fades, full windows return
        deadline.window_s(0.8, alone=True)
    assert deadline.window_s(0.8, alone=True) == 0.0


def test_the_words_heard_as_context_leave_the_prompt() -> None:
    previous = PreviousWords()
    previous.add([{"word": w} for w in ("he", "was", "not.")])
    previous.add([{"word": w} for w in ("an", "ill", "disposed")])
    assert previous.before_last() == ["he", "was", "not."]
    assert list(previous.words)[-3:] == ["an", "ill", "disposed"]
    previous.add([])
    assert previous.before_last() == list(previous.words)


def test_words_in_the_audio_a_decode_hears_again_leave_its_prompt() -> None:
    # A cut utterance's second half starts OVERLAP_MS before the cut: the first half's words
    # said there are in its audio, not before it.
    previous = PreviousWords()
    previous.add([{"word": w, "start_ms": t} for w, t in (("turn", 25_540.0),
                  ("on", 25_720.0), ("kitchen", 26_060.0), ("light.", 26_360.0))])  # fmt: skip
    assert previous.before(26_245.0) == ["turn", "on", "kitchen"]
    assert previous.before(30_000.0) == list(previous.words)
