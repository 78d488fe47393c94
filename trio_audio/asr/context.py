"""What a decode hears besides its audio: the prompt (words to expect, what was said before)
and the window it may be shortened to. Pure.

- **Vocabulary**: a session may name words and phrases to expect (names, product terms), in
  the WebSocket ``start`` or an upload's ``vocabulary`` field: at most ``VOCABULARY_MAX_TERMS``
  terms of at most ``VOCABULARY_MAX_CHARS`` characters, ``VOCABULARY_MAX_TOTAL`` in all
  (past that: ``invalid_field``, 400). They open every prompt of the session.
- **Previous words**: then the session's last ``CONTEXT_WORDS`` final words, as Whisper reads
  the text before a window (faster-whisper's ``condition_on_previous_text``). They are the
  words of the utterances before, decoded in order, so a session's prompts, like its audio,
  depend on nothing another session does. Only words said before the audio a decode hears
  are its previous text: the second half of a cut utterance hears the end of the first
  again (``utterances.OVERLAP_MS``), and a prompt that already says those words leads the
  decoder to skip them and stretch the next word over their audio.
- **Window**: finals are decoded in the engine's window (Whisper's full 30 s by default).
  A live final that would miss its deadline (``asr_final_deadline_s`` after its speech was
  last heard, the ``vad_gap_ms`` of silence that ended it included, given how long a
  full-window decode has been taking) is decoded in the
  ``asr_short_window_s`` window instead: faster, a little less accurate, counted in
  ``/metrics`` and marked ``short_window`` on its transcript. Only a final decoded alone is
  shortened: a pack (an upload's utterances) is not live.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Iterable
from typing import Any, Final

from ..errors import InvalidField

VOCABULARY_MAX_TERMS: Final = 50
VOCABULARY_MAX_CHARS: Final = 64
VOCABULARY_MAX_TOTAL: Final = 500  # characters, all terms: ~125 of the prompt's 223 tokens
CONTEXT_WORDS: Final = 60  # previous words in a prompt (~80 tokens)
EWMA_WEIGHT: Final = 0.3  # of the newest full-window decode time (and its deviation)
SPREAD: Final = 2.0  # mean deviations of decode time added to the mean
FIRST_ESTIMATE_S: Final = 1.0  # a full-window decode's wall time, before any was measured


def parse_vocabulary(value: Any) -> tuple[str, ...]:
    """A ``vocabulary`` field (a list of strings, or one string of comma-separated terms) as
    its terms, stripped, empty ones left out; ``InvalidField`` when it is not one or too big."""
    if value is None:
        return ()
    if isinstance(value, str):
        value = value.split(",")
    if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
        msg = "vocabulary must be a list of strings (or one string of comma-separated terms)"
        raise InvalidField(msg)
    terms = tuple(t.strip() for t in value if t.strip())
    if len(terms) > VOCABULARY_MAX_TERMS:
        msg = f"vocabulary has {len(terms)} terms; at most {VOCABULARY_MAX_TERMS} are allowed"
        raise InvalidField(msg)
    for term in terms:
        if len(term) > VOCABULARY_MAX_CHARS or any(not c.isprintable() for c in term):
            msg = (f"vocabulary term {term[:20]!r}... is not {VOCABULARY_MAX_CHARS} printable "
                   "characters or fewer")  # fmt: skip
            raise InvalidField(msg)
    if sum(len(t) for t in terms) > VOCABULARY_MAX_TOTAL:
        msg = f"vocabulary terms add up to more than {VOCABULARY_MAX_TOTAL} characters"
        raise InvalidField(msg)
    return terms


def prompt(vocabulary: Iterable[str], previous: Iterable[str]) -> str:
    """The decoder's prompt text: the terms to expect, then the words said before."""
    terms = ", ".join(vocabulary)
    said = " ".join(previous)
    if terms and said:
        return f"{terms}. {said}"
    return terms + "." if terms else said


class PreviousWords:
    """A session's last final words, for its next prompt."""

    def __init__(self) -> None:
        self.words: collections.deque[str] = collections.deque(maxlen=CONTEXT_WORDS)
        self.starts: collections.deque[float] = collections.deque(maxlen=CONTEXT_WORDS)
        self.last = 0  # how many of them the last utterance added

    def add(self, words: Iterable[dict[str, Any]]) -> None:
        added = list(words)
        self.words.extend(w["word"] for w in added)
        self.starts.extend(w.get("start_ms", -math.inf) for w in added)
        self.last = min(len(added), len(self.words))

    def before(self, ms: float) -> list[str]:
        """The words said before *ms* on the session's timeline: the prompt of a decode
        that hears the audio from *ms* on."""
        return [w for w, start in zip(self.words, self.starts, strict=True) if start < ms]

    def of_last(self) -> list[str]:
        """The last utterance's words."""
        return list(self.words)[len(self.words) - self.last :]

    def before_last(self) -> list[str]:
        """The words before the last utterance's: the prompt of a decode that hears that
        utterance's audio as its context."""
        return list(self.words)[: len(self.words) - self.last]


class Deadline:
    """Whether a final decoded alone goes in the short window: when waiting so far plus a
    full-window final would pass the deadline. A final's time (its decode, then its words
    stored) is reckoned as TCP reckons a round trip's (RFC 6298): the mean of recent
    full-window ones plus ``SPREAD`` times their mean deviation, so a final is shortened
    when a slow decode (one sharing the CPU with another) would be late, not only an
    average one."""

    def __init__(self, deadline_s: float, full_window_s: float, short_window_s: float) -> None:
        self.deadline_s = deadline_s
        self.full_window_s = full_window_s
        self.short_window_s = short_window_s
        self.mean_s = FIRST_ESTIMATE_S
        self.deviation_s = 0.0
        self.counts: collections.Counter[str] = collections.Counter()

    @property
    def estimate_s(self) -> float:
        return self.mean_s + SPREAD * self.deviation_s

    def window_s(self, waited_s: float, *, alone: bool) -> float:
        """The shortest window for a final that has waited *waited_s* (its pack holds one
        utterance: *alone*); 0 means the engine's own."""
        if (
            alone
            and self.short_window_s < self.full_window_s
            and waited_s + self.estimate_s > self.deadline_s
        ):
            self.counts["short"] += 1
            # No full-window decode measures the spread meanwhile: let it fade, so that a
            # burst of slow decodes does not shorten every final after it for good.
            self.deviation_s *= 1 - EWMA_WEIGHT
            return self.short_window_s
        self.counts["full"] += 1
        return 0.0

    def took(self, seconds: float, window_s: float) -> None:
        """A final in the full window (*window_s* 0) took *seconds* from its decode's
        start until its words were stored (an early final: until it was decoded)."""
        if window_s == 0.0:
            self.deviation_s += EWMA_WEIGHT * (abs(seconds - self.mean_s) - self.deviation_s)
            self.mean_s += EWMA_WEIGHT * (seconds - self.mean_s)
