"""The pure side of a session export: timeline, WAV header, ranges, cues, SRT and WebVTT."""

from __future__ import annotations

import html
import io
import itertools
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import srt
import webvtt

from trio_audio.errors import NotExportable
from trio_audio.web import export_format as fmt


def chunk(seq: int, frames: int, offset_ms: float, words: list[tuple[str, float, float]],
          rate: int = 16000) -> dict[str, Any]:  # fmt: skip
    return {
        "chunk_id": f"c{seq}",
        "seq": seq,
        "offset_ms": offset_ms,
        "audio": {"sample_rate": rate, "channels": 1, "frames": frames},
        "transcript": {"status": "done", "words": [
            {"word": w, "start_ms": s, "end_ms": e, "confidence": 0.9} for w, s, e in words]},
    }  # fmt: skip


def test_the_wav_header_is_one_libsndfile_reads() -> None:
    frames = 1234
    body = fmt.wav_header(22050, 2, frames) + bytes(frames * 4)
    samples, rate = sf.read(io.BytesIO(body), dtype="int16", always_2d=True)
    assert rate == 22050 and samples.shape == (frames, 2) and not samples.any()


def test_missing_seqs_are_silence_as_long_as_the_chunk_before() -> None:
    timeline = fmt.plan_timeline([chunk(0, 1600, 0, []), chunk(3, 800, 100, []),
                                  chunk(4, 800, 150, []), chunk(9, 400, 200, [])])  # fmt: skip
    assert [(p.seq, p.frames, p.chunk is None) for p in timeline.pieces] == [
        (0, 1600, False), (1, 3200, True), (3, 800, False), (4, 800, False),
        (5, 3200, True), (9, 400, False),
    ]  # fmt: skip
    assert timeline.frames == 10000 and timeline.duration_ms == 625.0
    assert timeline.missing_seqs == [(1, 2), (5, 8)]
    assert fmt.missing_header(timeline) == "1-2,5-8"
    assert timeline.ms(timeline.gap_frames) == 400.0


def test_a_session_over_what_a_wav_holds_is_refused() -> None:
    seven_hours = 7 * 3600 * 48000
    with pytest.raises(NotExportable, match="4 GiB"):
        fmt.plan_timeline([{**chunk(0, seven_hours, 0, [], rate=48000),
                            "audio": {"sample_rate": 48000, "channels": 2,
                                      "frames": seven_hours}}])  # fmt: skip


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("bytes=0-99", (0, 99)),
        ("bytes=900-", (900, 999)),
        ("bytes=-10", (990, 999)),
        ("bytes=-5000", (0, 999)),
        ("bytes=10-5000", (10, 999)),
        ("bytes=0-1,5-6", None),  # several ranges: the whole, as RFC 9110 allows
        ("items=0-5", None),
        ("bytes=-", None),
    ],
)
def test_byte_ranges(header: str | None, expected: tuple[int, int] | None) -> None:
    assert fmt.parse_range(header, 1000) == expected


@pytest.mark.parametrize("header", ["bytes=1000-", "bytes=5-4", "bytes=-0"])
def test_a_range_outside_is_refused(header: str) -> None:
    with pytest.raises(ValueError, match="bytes"):
        fmt.parse_range(header, 1000)


def test_words_sit_in_their_chunk_on_the_export_timeline() -> None:
    # Seq 1 was deleted after transcription: seq 2's words were timed with it in place, and
    # the silence for it puts them back where they were heard.
    chunks = [chunk(0, 16000, 0, [("hello", 200, 600)]),
              chunk(2, 16000, 1000, [("again", 2300, 2700), ("late", 2990, 3400)])]  # fmt: skip
    words = fmt.place_words(fmt.plan_timeline(chunks))
    assert [(w["word"], w["start_ms"], w["end_ms"], w["seq"]) for w in words] == [
        ("hello", 200, 600, 0), ("again", 2300, 2700, 2), ("late", 2990, 3000, 2),
    ]  # fmt: skip
    # A transcript that says where its chunk started when timed is placed from there: here
    # seq 1 was never sent, so nothing shifted, and the silence moves the words on.
    chunks[1]["transcript"]["offset_ms"] = 1000
    chunks[1]["transcript"]["words"] = [{"word": "again", "start_ms": 1300, "end_ms": 1700}]
    words = fmt.place_words(fmt.plan_timeline(chunks))
    assert [(w["word"], w["start_ms"], w["end_ms"]) for w in words][1:] == [("again", 2300, 2700)]


def many_words(n: int, gap_every: int = 0) -> list[dict[str, Any]]:
    out, at = [], 0.0
    for i in range(n):
        if gap_every and i and i % gap_every == 0:
            at += 1500
        out.append({"word": f"word{i}", "start_ms": at, "end_ms": at + 300, "seq": 0})
        at += 350
    return out


def test_cues_are_short_two_lines_at_most_and_never_overlap() -> None:
    words = many_words(120, gap_every=7)
    cue_list = fmt.cues(words)
    assert " ".join(" ".join(c.lines) for c in cue_list) == " ".join(w["word"] for w in words)
    for cue in cue_list:
        assert 1 <= len(cue.lines) <= 2
        assert all(len(line) <= fmt.LINE_MAX_CHARS + 8 for line in cue.lines)
        assert cue.end_ms - cue.start_ms <= fmt.CUE_MAX_MS
    for one, two in itertools.pairwise(cue_list):
        assert one.start_ms < one.end_ms <= two.start_ms
    assert len(fmt.cues(many_words(7))) == 1  # a pause-free short sentence: one cue


def test_srt_and_webvtt_parse_and_keep_times_and_text() -> None:
    words = many_words(30, gap_every=5)
    words[3]["word"] = "<b>&co"
    words[4]["end_ms"] = 3_725_004.4  # past an hour
    words[4]["start_ms"] = 3_725_000.0
    words.sort(key=lambda w: w["start_ms"])
    cue_list = fmt.cues(words)
    subtitles = list(srt.parse(fmt.to_srt(cue_list), ignore_errors=False))
    assert [s.content for s in subtitles] == ["\n".join(c.lines) for c in cue_list]
    assert [round(s.start.total_seconds() * 1000) for s in subtitles] == [
        round(c.start_ms) for c in cue_list
    ]
    captions = webvtt.from_buffer(io.StringIO(fmt.to_vtt(cue_list))).captions
    assert "&lt;b&gt;&amp;co" in captions[0].text  # escaped: a word is never markup
    assert "<b>&co" in html.unescape(captions[0].text)
    assert captions[-1].start == "01:02:05.000"
    assert fmt.timestamp(3_725_004.4, ",") == "01:02:05,004"


def test_plain_text_breaks_at_long_pauses() -> None:
    words = many_words(6)
    words[3:] = [{**w, "start_ms": w["start_ms"] + 5000, "end_ms": w["end_ms"] + 5000}
                 for w in words[3:]]  # fmt: skip
    assert fmt.to_text(words) == "word0 word1 word2\nword3 word4 word5\n"
    assert fmt.to_text([]) == ""
    assert np.isclose(fmt.plan_timeline([]).duration_ms, 0.0)
