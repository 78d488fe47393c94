"""The speech benchmark's scoring: Whisper's English normalisation and word error counts."""

from __future__ import annotations

from trio_audio.bench.textnorm import normalize, word_errors


def test_spoken_and_written_forms_compare_equal() -> None:
    pairs = [
        ("It costs 32,000 dollars.", "it costs thirty two thousand dollars"),
        ("25 percent of Mr. Smith's cats won't!", "twenty five per cent of mister smith is cats"
                                                 " will not"),
        ("Press 1, then 2.", "press one then two"),
        ("the 21st of May", "The twenty first of may."),
        ("[ascending tones] Café, uh, open.", "cafe open"),
        ("three point one four", "3.14"),
        ("one hundred and five", "105"),
    ]  # fmt: skip
    for written, spoken in pairs:
        assert normalize(written) == normalize(spoken), (written, spoken)


def test_digit_sequences_stay_separate_and_words_stay_words() -> None:
    assert normalize("two nine three four zero") == "2 9 3 4 0"
    assert normalize("one one one") == "1 1 1"
    assert normalize("and then a hundred people, hmm.") == "and then a hundred people"


def test_word_errors_count_edits_against_the_reference() -> None:
    assert word_errors("ten of clubs", "10 of clubs.") == (0, 3)
    assert word_errors("front center", "Friend center") == (1, 2)
    assert word_errors("go forward ten meters", "go forward") == (2, 4)
    assert word_errors("hello", "hello there world") == (2, 1)
