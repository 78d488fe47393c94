"""Cutting a session into utterances from the chunks' speech segments. Pure, synthetic audio."""

from __future__ import annotations

import numpy as np
import pytest

from trio_audio.asr.utterances import (
    CONTEXT_GAP_MS,
    CONTEXT_MS,
    OVERLAP_MS,
    PAD_MS,
    PREROLL_MS,
    Assembler,
    Utterance,
    after_context,
    packs,
    single,
    without_echo,
)

RATE = 16000


def chunk(ms: float, level: float = 0.0) -> np.ndarray:
    return np.full(int(ms * 16), level, np.int16)


def spoken(assembler: Assembler, start_ms: float, ms: float,
           segments: list[tuple[float, float]]) -> list[Utterance]:  # fmt: skip
    """A chunk whose *segments* are loud (speech) and the rest silent."""
    pcm = chunk(ms)
    for begin, end in segments:
        pcm[int(begin * 16) : int(end * 16)] = 8000
    return assembler.add(start_ms, pcm, segments)


def test_silence_makes_no_utterance_and_is_final_at_once() -> None:
    a = Assembler(gap_ms=500, max_ms=30_000)
    assert spoken(a, 0, 1000, []) == []
    assert not a.open and a.final_until_ms == 1000
    assert a.finish() == []


def test_speech_then_a_gap_ends_an_utterance_with_pre_roll_and_tail() -> None:
    a = Assembler(gap_ms=500, max_ms=30_000)
    assert spoken(a, 0, 1000, [(500, 1000)]) == []
    assert a.open and a.final_until_ms == 500 - PREROLL_MS
    (u,) = spoken(a, 1000, 1000, [(0, 200)])  # speech goes on across the boundary, then stops
    assert u.final and u.start_ms == 500 - PREROLL_MS
    assert u.end_ms == 1200 + PAD_MS  # 800 ms of silence after it in its chunk: the pad
    assert len(u.pcm) == round((u.end_ms - u.start_ms) * 16) * 2
    assert not a.open and a.final_until_ms == 2000


def test_speech_is_padded_as_faster_whisper_pads_it() -> None:
    # Each side of the speech gets PAD_MS of the audio around it; a silence shorter than
    # twice that is split in half between its two utterances (faster-whisper's
    # speech_pad_ms), when the chunk holds it (an upload).
    a = Assembler(gap_ms=500, max_ms=30_000)
    one, two, three = spoken(a, 0, 10_000, [(1000, 2000), (2600, 3600), (6000, 7000)])
    assert (one.start_ms, one.end_ms) == (1000 - PAD_MS, 2300)  # 600 ms of silence split
    assert (two.start_ms, two.end_ms) == (2300, 3600 + PAD_MS)
    assert (three.start_ms, three.end_ms) == (6000 - PAD_MS, 7000 + PAD_MS)
    # Live frames: the utterance closes once gap_ms of silence is heard, and its tail is
    # half of gap_ms, the rest left for speech that may start now.
    b = Assembler(gap_ms=500, max_ms=30_000)
    found = [u for n in range(30) for u in spoken(b, n * 100.0, 100, [(0, 100)] if n < 10 else [])]
    (u,) = found
    assert u.start_ms == 0 and u.end_ms == 1000 + 250


@pytest.mark.parametrize("frame_ms", [20, 100, 160, 700])
def test_the_coming_utterance_is_the_one_silence_then_ends(frame_ms: int) -> None:
    # Half way into the silence, the utterance it will end is known, whatever the framing:
    # the same audio, span and context as the one given out once the silence is whole.
    a = Assembler(gap_ms=500, max_ms=30_000)
    assert len(spoken(a, 0, 2000, [(500, 1500)])) == 1
    assert a.coming() is None  # given out already: nothing is coming
    b = Assembler(gap_ms=500, max_ms=30_000)
    loud = [(400, 1400), (1700, 2500)]  # 300 ms apart: one utterance, then silence
    pcm = chunk(6000)
    for begin, end in loud:
        pcm[begin * 16 : end * 16] = 8000 + np.arange((end - begin) * 16, dtype=np.int16) % 97
    seen: list[Utterance] = []
    closed: list[Utterance] = []
    for start in range(0, 6000, frame_ms):
        stop = min(start + frame_ms, 6000)
        segments = [(max(s, start) - start, min(e, stop) - start) for s, e in loud
                    if s < stop and e > start]  # fmt: skip
        closed += b.add(float(start), pcm[start * 16 : stop * 16], segments)
        coming = b.coming()
        assert b.coming_span() == (None if coming is None else coming.span)
        if coming is not None and not closed:
            last = 1400 if stop <= 1700 else min(stop, 2500)  # the speech heard last
            assert stop - last >= 250 and coming.end_ms == last + 250  # its tail heard
            seen.append(coming)
    (u,) = closed
    # In the 300 ms pause, one ending at 1650 was foreseen (an early final to drop); after
    # the last speech, the one given out, the same whichever frame it was foreseen in.
    assert {c.span[:2] for c in seen} <= {(0.0, 1650.0), (0.0, 2750.0)}
    assert [c for c in seen if c.end_ms == 2750.0] and all(c == u for c in seen if c.end_ms > 2000)
    assert (u.start_ms, u.end_ms) == (0.0, 2750.0)
    assert b.coming() is None


def test_finish_after_the_tail_of_silence_ends_the_utterance_as_silence_would() -> None:
    # A stream ended (or an upload's last utterance) with at least the tail of silence
    # after its speech: the utterance coming foresaw, so its early final is its final.
    a = Assembler(gap_ms=500, max_ms=30_000)
    spoken(a, 0, 1000, [(200, 700)])  # 300 ms of silence after the speech
    coming = a.coming()
    (u,) = a.finish()
    assert coming is not None and u == coming and u.end_ms == 950
    b = Assembler(gap_ms=500, max_ms=30_000)
    spoken(b, 0, 1000, [(200, 900)])  # 100 ms: all of it
    (v,) = b.finish()
    assert v.end_ms == 1000


def test_speech_after_the_coming_utterance_makes_another() -> None:
    a = Assembler(gap_ms=500, max_ms=30_000)
    spoken(a, 0, 1000, [(200, 700)])  # 300 ms of silence after the speech
    first = a.coming()
    assert first is not None and first.end_ms == 950
    spoken(a, 1000, 100, [(50, 100)])  # speech goes on, 350 ms after: the same utterance
    assert a.coming() is None and a.open
    spoken(a, 1100, 300, [])
    later = a.coming()
    assert later is not None and later.span != first.span and later.end_ms == 1350


def test_finish_ends_the_open_utterance_with_everything_heard() -> None:
    a = Assembler(gap_ms=500, max_ms=30_000)
    spoken(a, 0, 1000, [(100, 1000)])
    partial = a.partial()
    assert partial is not None and not partial.final and partial.end_ms == 1000
    (u,) = a.finish()
    assert u.final and (u.start_ms, u.end_ms) == (0.0, 1000.0)
    assert a.partial() is None and a.finish() == []


def test_two_segments_closer_than_the_gap_are_one_utterance() -> None:
    a = Assembler(gap_ms=500, max_ms=30_000)
    out = spoken(a, 0, 3000, [(300, 800), (1000, 1500)])  # 200 ms apart
    assert len(out) == 1 and out[0].start_ms == 0.0 and out[0].end_ms >= 1500


def test_a_gap_in_the_timeline_ends_the_utterance() -> None:
    a = Assembler(gap_ms=500, max_ms=30_000)
    spoken(a, 0, 1000, [(200, 1000)])
    (u,) = spoken(a, 60_000, 1000, [])
    assert u.end_ms == 1000.0
    assert a.final_until_ms == 61_000


def test_a_long_utterance_is_cut_at_its_quietest_point_with_overlap() -> None:
    a = Assembler(gap_ms=500, max_ms=10_000)
    out: list[Utterance] = []
    for n in range(12):  # 12 s of speech, with one quiet 30 ms frame 8 s in
        pcm = chunk(1000, 8000)
        if n == 8:
            pcm[4800:5280] = 0  # 300-330 ms into the ninth second
        out += a.add(n * 1000.0, pcm, [(0, 1000)])
    (first,) = out
    cut = first.keep_until_ms
    assert 8300 <= cut <= 8330  # the quiet frame, not the 10 s limit
    assert first.end_ms == pytest.approx(cut + OVERLAP_MS)
    partial = a.partial()
    assert partial is not None
    assert partial.start_ms == pytest.approx(cut - OVERLAP_MS) and partial.keep_from_ms == cut
    (second,) = a.finish()
    assert second.keep_from_ms == cut and second.end_ms == 12_000

    # A word said just after the quiet cut, its start stretched back over the quiet to
    # before it (as Whisper aligns one), is the second half's only; one said just before
    # the cut and ending past it, the first half's only.
    def kept(half: Utterance, start_ms: float, end_ms: float) -> int:
        word = {"word": "w", "start_ms": start_ms - half.start_ms,
                "end_ms": end_ms - half.start_ms, "confidence": 1.0}  # fmt: skip
        return len(single(half).own_words([word])[0])

    assert (kept(first, cut - 80, cut + 300), kept(second, cut - 80, cut + 300)) == (0, 1)
    assert (kept(first, cut - 300, cut + 80), kept(second, cut - 300, cut + 80)) == (1, 0)


def test_memory_holds_only_the_open_utterance_or_the_pre_roll() -> None:
    a = Assembler(gap_ms=500, max_ms=30_000)
    for n in range(60):
        spoken(a, n * 1000.0, 1000, [])
    assert a.held_bytes <= PREROLL_MS * 16 * 2


def test_utterances_finished_together_are_packed_and_words_go_back_by_time() -> None:
    a = Assembler(gap_ms=500, max_ms=30_000)
    # One long chunk (an upload) with three sentences: three utterances at once.
    found = spoken(a, 1000, 12_000, [(500, 2500), (4000, 6000), (9000, 11_000)])
    assert len(found) == 3
    (pack,) = packs(found, 29_500)
    assert pack.utterances == tuple(found)
    assert pack.pcm == b"".join(u.pcm for u in found)
    first_ms = found[0].end_ms - found[0].start_ms
    assert pack.at_ms == (0.0, first_ms, first_ms + found[1].end_ms - found[1].start_ms)
    words = [{"word": "a", "start_ms": 100.0, "end_ms": 300.0, "confidence": 1.0},
             {"word": "b", "start_ms": first_ms + 50, "end_ms": first_ms + 400, "confidence": 1.0},
             {"word": "c", "start_ms": pack.at_ms[2] + 10, "end_ms": pack.at_ms[2] + 99999,
              "confidence": 1.0}]  # fmt: skip
    own = pack.own_words(words)
    assert [[w["word"] for w in ws] for ws in own] == [["a"], ["b"], ["c"]]
    assert own[0][0]["start_ms"] == found[0].start_ms + 100  # on the session timeline
    assert own[1][0]["start_ms"] == found[1].start_ms + 50
    assert own[2][0]["end_ms"] == found[2].end_ms  # a word ends inside its own utterance
    # More than fits one window: consecutive packs, in order, none over the limit.
    split = packs(found, first_ms + 1)
    assert [p.utterances for p in split] == [(u,) for u in found]
    assert single(found[0]).utterances == (found[0],)


def test_a_sentence_cut_by_a_pause_is_decoded_hearing_its_start_as_context() -> None:
    # Live frames: a 700 ms pause ends the first utterance; the second, which follows within
    # CONTEXT_GAP_MS, carries the end of the first as context to hear, not to transcribe.
    a = Assembler(gap_ms=500, max_ms=30_000)
    assert spoken(a, 0, 1000, [(200, 1000)]) == []
    assert spoken(a, 1000, 1000, [(0, 1000)]) == []
    (first,) = spoken(a, 2000, 700, [])
    assert first.context == b""  # nothing before it
    assert spoken(a, 2700, 1000, [(0, 1000)]) == []
    (second,) = spoken(a, 3700, 1000, [])
    assert second.start_ms - first.end_ms < CONTEXT_GAP_MS
    assert second.context == first.pcm[-round(CONTEXT_MS * 16) * 2 :]
    pack = single(second)
    pcm, context_ms = pack.audio(context=True)
    assert pcm == second.context + second.pcm
    assert context_ms == len(second.context) / 32
    assert pack.audio(context=False) == (second.pcm, 0.0)
    words = [{"word": "heard", "start_ms": context_ms - 300, "end_ms": context_ms - 100,
              "confidence": 1.0},
             {"word": "said", "start_ms": context_ms + 450, "end_ms": context_ms + 800,
              "confidence": 1.0}]  # fmt: skip
    (own,) = pack.own_words(words, context_ms)
    assert [w["word"] for w in own] == ["said"]  # the context's word is the one before's
    assert own[0]["start_ms"] == second.start_ms + 450  # on the session timeline
    stretched = {"word": "first", "start_ms": context_ms - 250, "end_ms": context_ms + 400,
                 "confidence": 1.0}  # fmt: skip
    assert [w["word"] for w in pack.own_words([stretched], context_ms)[0]] == ["first"]
    # Context and utterance that would not fit one window: the utterance alone.
    long = Utterance(0.0, 29_000.0, bytes(29_000 * 32), final=True, context=second.context)
    assert single(long).audio(context=True) == (long.pcm, 0.0)
    # After a long silence, no context: a new turn, not the rest of a sentence.
    spoken(a, 4700, 3000, [])
    assert spoken(a, 7700, 1000, [(0, 1000)]) == []
    (third,) = spoken(a, 8700, 1000, [])
    assert third.start_ms - second.end_ms >= CONTEXT_GAP_MS and third.context == b""
    assert third.alone() is third and second.alone().context == b""


def test_a_word_of_the_utterance_before_heard_again_in_the_context_is_not_said_twice() -> None:
    # "Front" [pause] "Left": the second utterance hears the first's audio as context, and
    # the alignment can put "Front." just past the context, before the second's speech.
    a = Assembler(gap_ms=500, max_ms=30_000)
    spoken(a, 0, 1000, [(300, 700)])
    (first,) = spoken(a, 1000, 1000, [(300, 800)])  # 600 ms on: its speech begins at 1300
    (second,) = a.finish()
    assert first.speech_ms == 300 and (second.start_ms, second.speech_ms) == (1000, 1300)
    assert second.context == first.pcm  # the utterance before, heard first

    def word(text: str, start_ms: float) -> dict[str, object]:
        return {"word": text, "start_ms": start_ms, "end_ms": start_ms + 200}

    heard = [word("Front.", 1040), word("Left.", 1320)]
    assert without_echo(heard, ["Front."], 1300) == heard[1:]
    # Kept: said again once its own speech began; a word the utterance before did not end
    # with; nothing to compare with.
    again = [word("Front.", 1310), word("Left.", 1600)]
    assert without_echo(again, ["Front."], 1300) == again
    assert without_echo(heard, ["Rear."], 1300) == heard
    assert without_echo(heard, [], 1300) == heard
    # Several words: the most that match.
    light = [word("the", 1050), word("light", 1120), word("please", 1350)]
    assert without_echo(light, ["turn", "on", "the", "light."], 1300) == light[2:]


def test_words_heard_in_the_context_are_the_utterance_befores_unless_it_never_said_them() -> None:
    def decoded(*timed: tuple[str, float, float]) -> list[dict[str, object]]:
        return [{"word": w, "start_ms": a, "end_ms": b, "confidence": 1.0} for w, a, b in timed]

    def kept(words: list[dict[str, object]], before: list[str]) -> list[tuple[object, ...]]:
        return [(w["word"], w["start_ms"], w["end_ms"]) for w in after_context(words, 3000, before)]

    before = ["send", "the", "report", "before", "lunch."]
    # The context transcribed: its words go; a word mostly after it stays as it is.
    heard = decoded(("report", 1000, 1500), ("before", 1500, 2100), ("lunch.", 2100, 2700),
                    ("Turn", 2700, 3500), ("on", 3500, 3700))  # fmt: skip
    assert kept(heard, before) == [("Turn", 2700, 3500), ("on", 3500, 3700)]
    # The context skipped: the utterance's first words stretched over it are its own.
    heard = decoded(("Turn", 0, 1500), ("on", 1500, 3800), ("the", 3800, 4000))
    assert kept(heard, before) == [("Turn", 3000, 3400), ("on", 3400, 3800), ("the", 3800, 4000)]
    # A word the decode before left unsaid at its end: after the echo of its last word.
    heard = decoded(("lunch", 1000, 1600), ("light.", 1600, 2200), ("Please", 3100, 3400))
    assert kept(heard, before) == [("light.", 3000, 3100), ("Please", 3100, 3400)]
    # Its end misheard ("lunge"): every word in the context is still the one before's.
    heard = decoded(("report", 500, 1000), ("took", 1000, 1400), ("lunge", 2100, 2700),
                    ("Turn", 3100, 3400))  # fmt: skip
    assert kept(heard, before) == [("Turn", 3100, 3400)]
    # Skipped, and this utterance's first words are words the one before said too.
    heard = decoded(("The", 0, 2000), ("weather", 2000, 3400), ("is", 3400, 3600),
                    ("nice", 3600, 3900), ("today", 3900, 4300))  # fmt: skip
    assert kept(heard, ["please", "dim", "the", "hallway", "light."])[:3] == [
        ("The", 3000, 3200), ("weather", 3200, 3400), ("is", 3400, 3600)]  # fmt: skip
    # A short word of the context misheard ("Friend." for "Front."): not said twice.
    assert kept(decoded(("Friend.", 2000, 2500), ("Left", 3100, 3400)), ["Front."]) == [
        ("Left", 3100, 3400)]  # fmt: skip
    # A stretched word moved after the context stays before the word after it.
    heard = decoded(("Turn", 0, 2900), ("on", 2900, 3300))
    assert kept(heard, before) == [("Turn", 3000, 3100), ("on", 3100, 3300)]
    # The utterance before said nothing: what is in its audio is not this one's.
    assert kept(decoded(("hm", 500, 900), ("Turn", 3100, 3400)), []) == [("Turn", 3100, 3400)]
