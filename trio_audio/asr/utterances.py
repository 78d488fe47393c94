"""Cutting one session's audio into utterances, from the voice activity the pipeline found. Pure.

The pipeline's VAD gives every stored chunk its ``speech_segments``; the transcriber hands
the chunks here in seq order (``add``), with their 16 kHz PCM. An utterance ends once
``gap_ms`` of silence follow its last speech, on ``finish`` (the client's ``finalize``, the
session's end or idle timeout), or at a gap in the session's timeline. Each finished
utterance is decoded once.

Its speech is padded as faster-whisper pads the speech its VAD finds (``speech_pad_ms``):
``PAD_MS`` of the audio before the first speech and after the last, and a silence shorter
than twice that is split in half between the utterances on either side when the silence is
in the chunk that holds the speech (an upload). When it is not (live frames), the utterance
gets half of ``gap_ms`` (at most ``PAD_MS``), whatever the client's framing: its audio is then
known half way into the silence that will end it (``coming``), and its decode may begin while
the rest of that silence is still being heard (the feeder's early final).

An utterance longer than ``max_ms`` is cut at the quietest 30 ms frame of the last
``QUIET_SEARCH_MS`` before the limit, never at the limit itself, and the two halves overlap by
``OVERLAP_MS`` on each side of the cut: each decode hears a word that crosses the cut whole,
and a word belongs to the half its middle is in (``keep_from_ms``/``keep_until_ms``).

Utterances finished together (by one chunk: a long upload holds many) are decoded together,
in ``Pack``s of up to Whisper's 30 s window, as faster-whisper fills its window with a file's
sentences: one encoder pass for several, each heard with the others around it. Their words
go back to the utterance they start in (``Pack.own_words``). Which utterances go together
depends on the session's audio and chunks alone, never on how busy the workers are, so the
same session gives the same words.

An utterance ended by silence while the one before it ended less than ``CONTEXT_GAP_MS``
earlier (a pause inside what someone is saying, where ``vad_gap_ms`` cut a sentence in two)
carries the last ``CONTEXT_MS`` of that utterance's audio as its ``context``: its decode
hears the sentence's start, without transcribing it again (words heard in the context are
the utterance before's, but for those its decode left unsaid: ``after_context``), as a
listener would. The words of that utterance then leave the
prompt (Whisper's previous text is what came before the audio it hears).

Times are on the session's timeline (the chunks' ``offset_ms``), in ms. Memory: the audio of
the open utterance (at most ``max_ms`` plus the overlap), ``PREROLL_MS`` before it and
``CONTEXT_MS`` of the utterance before.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from typing import Any, Final

import attrs
import numpy as np
import numpy.typing as npt

from .engine import plain, same_words

RATE: Final = 16000
PER_MS: Final = RATE // 1000
FRAME_MS: Final = 30
PAD_MS: Final = 400.0  # faster-whisper's speech_pad_ms
PREROLL_MS: Final = PAD_MS
OVERLAP_MS: Final = 500.0
CONTEXT_MS: Final = 3000.0  # of the utterance before, heard by a decode (not transcribed)
CONTEXT_GAP_MS: Final = 1000.0  # the most between two utterances for one to be the other's
WINDOW_MS: Final = 29_500.0  # audio that fits Whisper's 30 s window (as the feeder's packs)
QUIET_SEARCH_MS: Final = 5000.0
ECHO_MAX_WORDS: Final = 3  # of the utterance before, heard again in the context
STRETCHED_MIN_MS: Final = 100.0  # the least a word stretched over the context is given
MEDIAN_WORD_MAX_MS: Final = 700.0  # faster-whisper's bound on the median word's length
REACH_MS: Final = 100.0  # how near a stretched word ends to the context's end, at least

Pcm = npt.NDArray[np.int16]


@attrs.frozen
class Utterance:
    """Audio to decode, and which of the words found in it are its own."""

    start_ms: float
    end_ms: float
    pcm: bytes  # 16 kHz 16-bit mono, from start_ms to end_ms
    final: bool
    keep_from_ms: float = -math.inf  # words whose middle is before it are the one before's
    keep_until_ms: float = math.inf  # words whose middle is at or after it are the next's
    context: bytes = b""  # the audio just before it (of the utterance before), to hear only
    speech_ms: float = -math.inf  # where its speech began (after its pre-roll)

    @property
    def held_bytes(self) -> int:
        return len(self.pcm) + len(self.context)

    @property
    def span(self) -> tuple[float, float, float, float]:
        """Where it lies and which words are its own: two utterances of one session with
        the same span hold the same audio."""
        return (self.start_ms, self.end_ms, self.keep_from_ms, self.keep_until_ms)

    def alone(self) -> Utterance:
        """This utterance without its context."""
        return attrs.evolve(self, context=b"") if self.context else self


class Assembler:
    """One session's chunks in, utterances out."""

    def __init__(self, gap_ms: float, max_ms: float, start_ms: float = 0.0) -> None:
        self.gap_ms = gap_ms
        self.tail_ms = min(PAD_MS, gap_ms / 2)  # of an utterance that silence ends
        self.max_ms = max(max_ms, 2 * (OVERLAP_MS + FRAME_MS))
        self._reset(start_ms)

    def _reset(self, start_ms: float) -> None:
        self.buffer: Pcm = np.zeros(0, np.int16)
        self.buffer_start_ms = start_ms
        self.end_ms = start_ms  # the timeline position after the last chunk
        self.utt_start_ms: float | None = None
        self.speech_ms = start_ms  # where the open utterance's speech began
        self.keep_from_ms = -math.inf
        self.last_speech_end_ms: float | None = None
        self.closed_until_ms = start_ms  # the end of the last utterance given out
        self.context = b""  # the end of the last utterance given out (``CONTEXT_MS``)

    @property
    def open(self) -> bool:
        return self.utt_start_ms is not None

    @property
    def final_until_ms(self) -> float:
        """Every word starting before this time is in an utterance already given out."""
        return self.utt_start_ms if self.utt_start_ms is not None else self.end_ms

    def add(
        self, start_ms: float, pcm: Pcm, segments: list[tuple[float, float]]
    ) -> list[Utterance]:
        """A chunk at *start_ms* with its speech *segments* (ms from the chunk's start); the
        utterances it finishes."""
        out: list[Utterance] = []
        if abs(start_ms - self.end_ms) > FRAME_MS:  # a gap (or overlap) in the timeline
            out += self.finish()
            self._reset(start_ms)
        self.buffer = np.concatenate([self.buffer, pcm.astype(np.int16, copy=False)])
        self.end_ms = start_ms + pcm.size / PER_MS
        for begin, end in sorted(segments):
            begin, end = start_ms + begin, start_ms + end
            last = self.last_speech_end_ms
            if self.utt_start_ms is not None and last is not None and begin - last >= self.gap_ms:
                out.append(self._close(last + min(PAD_MS, (begin - last) / 2)))
            if self.utt_start_ms is None:
                earliest = max(self.buffer_start_ms, self.closed_until_ms)
                self.utt_start_ms = max(earliest, begin - PREROLL_MS)
                self.speech_ms = begin
                self.keep_from_ms = -math.inf
            last = self.last_speech_end_ms
            self.last_speech_end_ms = end if last is None else max(end, last)
        last = self.last_speech_end_ms
        if self.utt_start_ms is not None and last is not None and self.end_ms - last >= self.gap_ms:
            # Its speech and the silence after it in this chunk (an upload): half of that
            # silence, as between utterances; else the tail ``coming`` foresaw.
            heard_here = last > start_ms
            out.append(self._close(last + (min(PAD_MS, (self.end_ms - last) / 2) if heard_here
                                           else self.tail_ms)))  # fmt: skip
        while self.utt_start_ms is not None and (
            self.end_ms - self.utt_start_ms > self.max_ms + OVERLAP_MS
        ):
            out.append(self._cut())
        self._trim()
        return out

    def finish(self) -> list[Utterance]:
        """End the open utterance (no more audio is coming now): with everything received,
        or, when at least its tail of silence follows its speech, with that tail, as
        silence would have ended it (the utterance ``coming`` foresaw)."""
        if self.utt_start_ms is None:
            return []
        last = self.last_speech_end_ms
        if last is not None and self.end_ms - last >= self.tail_ms:
            return [self._close(last + self.tail_ms)]
        return [self._close(self.end_ms)]

    def partial(self) -> Utterance | None:
        """The open utterance as heard so far (for a partial hypothesis), or None."""
        if self.utt_start_ms is None:
            return None
        start = self.utt_start_ms
        return Utterance(start, self.end_ms, self._pcm(start, self.end_ms), final=False,
                         keep_from_ms=self.keep_from_ms)  # fmt: skip

    def coming_span(self) -> tuple[float, float, float, float] | None:
        """The ``span`` of the utterance ``coming`` would give (None when there is none),
        without copying its audio: a caller that has it already knows it is the same."""
        last = self.last_speech_end_ms
        if self.utt_start_ms is None or last is None or self.end_ms - last < self.tail_ms:
            return None
        return (self.utt_start_ms, last + self.tail_ms, self.keep_from_ms, math.inf)

    def coming(self) -> Utterance | None:
        """The utterance the silence heard so far will end, if it goes on for ``gap_ms``:
        known once its tail is heard, before it is given out (None when there is none)."""
        span = self.coming_span()
        return None if span is None else self._closing(span[1])

    def _closing(self, end_ms: float) -> Utterance:
        """The open utterance, ended at *end_ms*."""
        assert self.utt_start_ms is not None
        end_ms = min(end_ms, self.end_ms)
        start = self.utt_start_ms
        # The utterance before as context: only a whole one just before (not a cut piece,
        # which overlaps this one already).
        near = self.keep_from_ms == -math.inf and start - self.closed_until_ms < CONTEXT_GAP_MS
        return Utterance(start, end_ms, self._pcm(start, end_ms), final=True,
                         keep_from_ms=self.keep_from_ms, speech_ms=self.speech_ms,
                         context=self.context if near else b"")  # fmt: skip

    def _close(self, end_ms: float) -> Utterance:
        utterance = self._closing(end_ms)
        pcm, end_ms = utterance.pcm, utterance.end_ms
        self.utt_start_ms = None
        self.last_speech_end_ms = None
        self.keep_from_ms = -math.inf
        self.closed_until_ms = end_ms
        self.context = pcm[-round(CONTEXT_MS * PER_MS) * 2 :]
        return utterance

    def _cut(self) -> Utterance:
        """Split a long open utterance at its quietest point before ``max_ms``."""
        assert self.utt_start_ms is not None
        start = self.utt_start_ms
        limit = start + self.max_ms
        cut = self._quietest(max(start + OVERLAP_MS + FRAME_MS, limit - QUIET_SEARCH_MS), limit)
        end = cut + OVERLAP_MS
        first = Utterance(start, end, self._pcm(start, end), final=True,
                          keep_from_ms=self.keep_from_ms, keep_until_ms=cut)  # fmt: skip
        self.utt_start_ms = cut - OVERLAP_MS
        self.keep_from_ms = cut
        self.context = b""
        return first

    def _quietest(self, lo_ms: float, hi_ms: float) -> float:
        """The middle of the 30 ms frame with the least energy in [lo_ms, hi_ms]."""
        lo = max(0, round((lo_ms - self.buffer_start_ms) * PER_MS))
        hi = min(self.buffer.size, round((hi_ms - self.buffer_start_ms) * PER_MS))
        step = FRAME_MS * PER_MS
        count = (hi - lo) // step
        if count < 1:
            return hi_ms
        frames = self.buffer[lo : lo + count * step].astype(np.float64).reshape(count, step)
        energy = np.einsum("ij,ij->i", frames, frames)
        # The last of the quietest frames: cut as late as the silence allows.
        best = count - 1 - int(np.argmin(energy[::-1]))
        return self.buffer_start_ms + (lo + best * step + step // 2) / PER_MS

    def _pcm(self, start_ms: float, end_ms: float) -> bytes:
        lo = max(0, round((start_ms - self.buffer_start_ms) * PER_MS))
        hi = max(lo, round((end_ms - self.buffer_start_ms) * PER_MS))
        return self.buffer[lo:hi].astype("<i2").tobytes()

    def _trim(self) -> None:
        """Keep the open utterance, or the pre-roll a coming one could start with."""
        keep = self.utt_start_ms if self.utt_start_ms is not None else self.end_ms - PREROLL_MS
        cut = round((keep - self.buffer_start_ms) * PER_MS)
        if cut > 0:
            cut = min(cut, self.buffer.size)
            self.buffer = self.buffer[cut:]
            self.buffer_start_ms += cut / PER_MS

    @property
    def held_bytes(self) -> int:
        return int(self.buffer.nbytes)


@attrs.frozen
class Pack:
    """Utterances of one session decoded together in one window: their audio one after the
    other (the silence between them left out), and where each lies in it."""

    utterances: tuple[Utterance, ...]
    at_ms: tuple[float, ...]  # where each utterance starts in ``pcm``
    since: float = 0.0  # when its speech was last heard (the caller's clock): deadlines
    early: bool = False  # an utterance not given out yet: its decode, foreseen (``coming``)

    @property
    def pcm(self) -> bytes:
        """The audio to decode (joined when asked: the utterances hold it meanwhile)."""
        return b"".join(u.pcm for u in self.utterances)

    @property
    def context(self) -> bytes:
        """The audio before the first utterance, to be heard but not transcribed."""
        return self.utterances[0].context

    def audio(self, *, context: bool) -> tuple[bytes, float]:
        """The audio to decode, with the context before it or not (not when the two would
        not fit one window), and the ms of context."""
        context_ms = len(self.context) / 2 / PER_MS
        if not context or not context_ms or self.seconds * 1000 + context_ms > WINDOW_MS:
            return self.pcm, 0.0
        return self.context + self.pcm, context_ms

    @property
    def final(self) -> bool:
        return self.utterances[0].final

    @property
    def start_ms(self) -> float:
        return self.utterances[0].start_ms

    @property
    def seconds(self) -> float:
        return sum(len(u.pcm) for u in self.utterances) / 2 / RATE

    def own_words(
        self, words: list[dict[str, Any]], context_ms: float = 0.0, before: Sequence[str] = ()
    ) -> list[list[dict[str, Any]]]:
        """The words of a decode of ``pcm`` after *context_ms* of context (times from the
        start of what was decoded), each moved to the session timeline and given to the
        utterance it starts in, if its middle is in that utterance's own part (a cut
        utterance's halves overlap): a list of words per utterance. *before*: the words of
        the utterance the context is the end of (``after_context``)."""
        out: list[list[dict[str, Any]]] = [[] for _ in self.utterances]
        for heard in after_context(words, context_ms, before) if context_ms else words:
            word = {**heard, "start_ms": max(0.0, heard["start_ms"] - context_ms),
                    "end_ms": max(0.0, heard["end_ms"] - context_ms)} if context_ms \
                else heard  # fmt: skip
            i = max(0, bisect.bisect_right(self.at_ms, word["start_ms"]) - 1)
            utterance = self.utterances[i]
            shift = utterance.start_ms - self.at_ms[i]
            length = utterance.end_ms - utterance.start_ms
            end = min(word["end_ms"], self.at_ms[i] + length)
            moved = {**word, "start_ms": round(word["start_ms"] + shift, 1),
                     "end_ms": round(max(end, word["start_ms"]) + shift, 1)}  # fmt: skip
            # Of two halves of a cut utterance, a word is the one's its middle is in: the cut
            # is at a quiet point, and Whisper stretches a word's start back over the quiet
            # before it, across the cut, where the other half's decode does not have it.
            middle = (moved["start_ms"] + moved["end_ms"]) / 2
            if utterance.keep_from_ms <= middle < utterance.keep_until_ms:
                out[i].append(moved)
        return out


def after_context(
    words: list[dict[str, Any]], context_ms: float, before: Sequence[str]
) -> list[dict[str, Any]]:
    """The words of a decode that follow its *context_ms* of context, the end of an
    utterance that said *before*.

    The words whose middle is in the context (Whisper may stretch a word's start back over
    the pause before it) are the utterance before's heard again, up to the last that says
    its last word; those after it (a word that decode left unsaid at its end, or this
    utterance's first, stretched back) are kept. When none says its last word, the context
    was misheard ("lunge" for "lunch"), or skipped: tiny.en, hearing the end of a sentence
    it is not prompted with, can skip it and stretch this utterance's first words ("turn
    on") back over it. Those are the run of words at the end of the context that each last
    longer than a word does (twice the decode's median word, faster-whisper's bound) and
    reach the context's end; they are kept, the others dropped. Kept words are spread
    evenly from the end of the context to where the next word starts."""
    lead = 0
    while lead < len(words) and words[lead]["start_ms"] + words[lead]["end_ms"] < 2 * context_ms:
        lead += 1
    if not lead:
        return words
    echoes = [i + 1 for i in range(lead) if before and plain(words[i]["word"]) == plain(before[-1])]
    if echoes:
        first = echoes[-1]
    else:
        lengths = [w["end_ms"] - w["start_ms"] for w in words if w["end_ms"] > w["start_ms"]]
        longest = 2 * min(MEDIAN_WORD_MAX_MS, float(np.median(lengths))) if lengths else 0.0
        first = lead
        if words[lead - 1]["end_ms"] >= context_ms - REACH_MS:
            while first and words[first - 1]["end_ms"] - words[first - 1]["start_ms"] > longest:
                first -= 1
    return _moved_after(words[first:lead], words[lead:], context_ms)


def _moved_after(
    kept: list[dict[str, Any]], rest: list[dict[str, Any]], context_ms: float
) -> list[dict[str, Any]]:
    """*kept* (words heard in the context that are not its own) spread evenly from
    *context_ms* to where *rest* begins, then *rest*, its first word moved after them."""
    if not kept:
        return rest
    until = max(rest[0]["start_ms"] if rest else kept[-1]["end_ms"],
                context_ms + STRETCHED_MIN_MS * len(kept))  # fmt: skip
    step = (until - context_ms) / len(kept)
    spread = [{**w, "start_ms": context_ms + k * step, "end_ms": context_ms + (k + 1) * step}
              for k, w in enumerate(kept)]  # fmt: skip
    if rest and rest[0]["start_ms"] < until:
        rest = [{**rest[0], "start_ms": until, "end_ms": max(rest[0]["end_ms"], until)}, *rest[1:]]
    return spread + rest


def single(utterance: Utterance) -> Pack:
    return Pack((utterance,), (0.0,))


def packs(utterances: list[Utterance], max_ms: float) -> list[Pack]:
    """Consecutive *utterances* in packs of at most *max_ms* of audio each, in order."""
    out: list[Pack] = []
    group: list[Utterance] = []
    length = 0.0
    for utterance in utterances:
        ms = len(utterance.pcm) / 2 / PER_MS
        if group and length + ms > max_ms:
            out.append(_pack(group))
            group, length = [], 0.0
        group.append(utterance)
        length += ms
    if group:
        out.append(_pack(group))
    return out


def _pack(group: list[Utterance]) -> Pack:
    at, position = [], 0.0
    for utterance in group:
        at.append(position)
        position += len(utterance.pcm) / 2 / PER_MS
    return Pack(tuple(group), tuple(at))


def without_echo(
    words: list[dict[str, Any]], before: list[str], speech_ms: float
) -> list[dict[str, Any]]:
    """An utterance's own *words* (decoded after its context) without an echo of the
    utterance before: leading words that start before its speech began and say again the
    last of *before* (the words the utterance before ended with). Heard in the context and
    aligned a little late, they would be said twice ("Front. Front. Left.")."""
    for k in range(min(ECHO_MAX_WORDS, len(words), len(before)), 0, -1):
        lead = words[:k]
        if all(w["start_ms"] < speech_ms for w in lead) and same_words(
            before[-k:], [w["word"] for w in lead]
        ):
            return words[k:]
    return words
