"""The whisper engine's pure rules: where a window's decode ends and the next one starts, the
encoder window an utterance gets, a decode that repeats itself, words said after the audio
ends, and words shaped from tokens (punctuation merged, sentence ends bounded, number pieces
glued).

Parts follow faster-whisper (MIT licence, Copyright (c) 2023 SYSTRAN): the split of a
decode into segments, the seek from the last word, the sentence-boundary limit and the merge
of punctuation into words.
"""

from __future__ import annotations

import zlib
from typing import Any, Final

import numpy as np

from .engine import Word, same_words

RATE: Final = 16000
HOP: Final = 160  # 10 ms: 100 mel frames per second
WINDOW_FRAMES: Final = 3000  # Whisper hears 30 s at a time
SEEK_MIN_S: Final = 1.0  # audio left after a window's last word worth another window
UNHEARD_MS: Final = 40.0  # two alignment steps: a word this short, this close to the end
ECHO_MIN_WORDS: Final = 2  # one word said twice may be said twice ("bye bye")
PREPEND_PUNCTUATION: Final = "\"'“¿([{-"
APPEND_PUNCTUATION: Final = "\"'.。,，!！?？:：”)]}、"  # noqa: RUF001 - Whisper's own set
SENTENCE_END: Final = ".。!！?？"  # noqa: RUF001


def limit_sentence_boundaries(timings: list[dict[str, Any]]) -> None:
    """Punctuation at a sentence end, and the word after it, last at most twice the median
    word (the alignment tends to stretch them over pauses)."""
    max_duration = longest_word([t["end"] - t["start"] for t in timings], 0.7)
    if not max_duration:
        return
    for i in range(1, len(timings)):
        if timings[i]["end"] - timings[i]["start"] > max_duration:
            if timings[i]["word"] in SENTENCE_END:
                timings[i]["end"] = timings[i]["start"] + max_duration
            elif timings[i - 1]["word"] in SENTENCE_END:
                timings[i]["start"] = timings[i]["end"] - max_duration


def longest_word(durations: list[float], most: float) -> float:
    """The longest a sentence's last word may last: twice the median of *durations* (those
    with a length; 0.0 when none has), at most twice *most* (faster-whisper's rule, in the
    unit of its arguments)."""
    lengths = [d for d in durations if d > 0]
    return 2 * min(most, float(np.median(lengths))) if lengths else 0.0


def merge_punctuation(timings: list[dict[str, Any]]) -> None:
    """Opening punctuation joins the word after it, closing punctuation the word before."""
    i, j = len(timings) - 2, len(timings) - 1
    while i >= 0:
        previous, following = timings[i], timings[j]
        if previous["word"].startswith(" ") and previous["word"].strip() in PREPEND_PUNCTUATION:
            following["word"] = previous["word"] + following["word"]
            following["tokens"] = previous["tokens"] + following["tokens"]
            previous["word"], previous["tokens"] = "", []
        else:
            j = i
        i -= 1
    i, j = 0, 1
    while j < len(timings):
        previous, following = timings[i], timings[j]
        if not previous["word"].endswith(" ") and following["word"] in APPEND_PUNCTUATION:
            previous["word"] += following["word"]
            previous["tokens"] = previous["tokens"] + following["tokens"]
            following["word"], following["tokens"] = "", []
        else:
            i = j
        j += 1


def segments(tokens: list[int], timestamp_begin: int) -> tuple[list[int], bool]:
    """A decode's tokens as faster-whisper splits them into segments (``<|t0|> text <|t1|>``,
    a new segment after two timestamps in a row): the tokens of its finished segments, and
    whether it ended on a single timestamp (nothing to hear after it). A last segment left
    open is dropped: the next window hears its audio again."""
    single_ending = len(tokens) >= 2 and tokens[-2] < timestamp_begin <= tokens[-1]
    pairs = [i for i in range(1, len(tokens))
             if tokens[i] >= timestamp_begin and tokens[i - 1] >= timestamp_begin]  # fmt: skip
    if not pairs or single_ending:
        return tokens, single_ending
    return tokens[: pairs[-1]], False


def seek(size: int, words: list[Word], ended: bool) -> int:
    """How far (samples) the next window starts after a window of *size* samples: past it
    when the decoder said its speech ended there (or heard no words), else at the end of its
    last word, as faster-whisper seeks with word timestamps: words it stopped before (a
    window of several utterances, a decode cut short) are heard in the next window.

    Unlike faster-whisper, less than ``SEEK_MIN_S`` left after the last word is not decoded
    again: that is the utterance's own tail (``utterances.PAD_MS`` of silence and the slack
    of the word's end), where Whisper, given a fraction of a second of silence and the words
    before as prompt, says "Thank you." Another utterance after it starts at least half a
    ``vad_gap_ms`` later and holds a quarter of a second of speech at least."""
    if ended or not words or words[-1].end_ms <= 0:
        return size
    frames = max(1, round(words[-1].end_ms / 10))  # faster-whisper seeks in 10 ms frames
    if size - frames * HOP < SEEK_MIN_S * RATE:
        return size
    return frames * HOP


def unheard_tail(words: list[Word], duration_ms: float) -> list[Word]:
    """*words* without an echo at their end: a run of words the alignment found no audio
    for, which only says again the words just before it. A short window, its prompt ending
    in what the utterance says, can have the decoder say the utterance twice; the alignment
    then crams the second saying into one instant at the end of the audio: every word of it
    starts within ``UNHEARD_MS`` of its last word's start, all but that last one with less
    than ``UNHEARD_MS`` of length, and the last one reaches the end of the window's
    *duration_ms* of audio, squeezed into it ("Please try again." again, at the audio's last
    20 ms with no length) or stretched to it, no longer than a sentence's last word may be
    (``limit_sentence_boundaries``: twice the median word before the run, at most 1.4 s;
    "Please turn on the kitchen light." again, five words at one instant and "light." over
    the last 260 ms). A run that says something else stays, and so does one word said again
    ("bye bye"): the alignment can squeeze a real last word to the end of the audio too; and
    so does a saying again whose last word lasts longer: that one was heard ("Thank you.
    Thank you.", the second "Thank" squeezed, its "you." over the last 1.4 s). What the rule
    cannot tell from an echo: words really said again that the alignment squeezes the same
    way, all but the last into one instant, the last no longer than a sentence's last word."""
    if not words:
        return words
    last = words[-1]
    if duration_ms - max(last.start_ms, last.end_ms) >= UNHEARD_MS:
        return words  # the last word ends before the audio does: heard
    end = len(words) - 1
    while end:
        word = words[end - 1]
        if word.end_ms - word.start_ms >= UNHEARD_MS or last.start_ms - word.start_ms >= UNHEARD_MS:
            break
        end -= 1
    run = len(words) - end
    if not ECHO_MIN_WORDS <= run <= end:
        return words
    before = words[end - run : end]
    longest = longest_word([w.end_ms - w.start_ms for w in words[:end]], 700.0)
    if last.end_ms - last.start_ms > max(longest, UNHEARD_MS):
        return words
    if same_words([w.word for w in before], [w.word for w in words[end:]]):
        return words[:end]
    return words


def looping(tokens: list[int], times: int = 3, longest: int = 12) -> bool:
    """Whether some run of tokens (up to *longest*) comes *times* times in a row: a short
    window can leave Whisper's decoder saying the same words over and over."""
    for size in range(1, longest + 1):
        for start in range(len(tokens) - size * times + 1):
            run = tokens[start : start + size]
            if all(
                tokens[start + k * size : start + (k + 1) * size] == run for k in range(1, times)
            ):
                return True
    return False


def encoder_frames(frames: int, min_frames: int) -> int:
    """The encoder window for *frames* of audio: at least *min_frames*, whole seconds, at
    most Whisper's 30 s."""
    wanted = max(min_frames, frames)
    return min(WINDOW_FRAMES, -(-wanted // 100) * 100)


def glue(words: list[Word]) -> list[Word]:
    """Words as the text reads them: a piece with no space before it (``",000"`` after
    ``" 32"``, ``"%"`` after ``" 50"``) belongs to the word before it. Texts are stripped."""
    out: list[Word] = []
    for word in words:
        if out and not word.word.startswith(" "):
            last = out[-1]
            out[-1] = Word(last.word + word.word, last.start_ms, max(last.end_ms, word.end_ms),
                           min(last.confidence, word.confidence))  # fmt: skip
        else:
            out.append(Word(" " + word.word.lstrip(), word.start_ms, word.end_ms,
                            word.confidence))  # fmt: skip
    return [Word(w.word.strip(), w.start_ms, w.end_ms, w.confidence) for w in out]


def compression_ratio(text: str) -> float:
    """How repetitive *text* is (Whisper's hallucination check): its length over zlib's."""
    data = text.encode()
    return len(data) / len(zlib.compress(data)) if data else 0.0
