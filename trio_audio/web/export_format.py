"""A session taken away: its timeline, a WAV header, byte ranges, and its words as SRT, WebVTT
and plain text. Pure functions (no I/O, no trio), used by ``routes/session_export.py``.

The timeline: the session's chunks in seq order, back to back, at the session's one sample
rate and channel count. A seq missing between two stored chunks (never sent, lost by the
client, or deleted) is silence as long as the chunk before it, so what follows stays where it
was heard; seqs before the first stored chunk and after the last are not on it. Everything is
counted in frames from the chunk JSON (``audio.frames``), so the WAV's length is known before
a sample is decoded.

Words: a chunk's transcript words carry ``start_ms``/``end_ms`` on the session's timeline as
it was when they were transcribed (``transcript.offset_ms`` is where the chunk started then);
each is placed relative to its chunk at that chunk's start on the export timeline, so the
times of the transcript and the WAV agree, gaps included.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterable
from typing import Any, Final

import attrs

from ..errors import NotExportable

WAV_HEADER_BYTES: Final = 44
SAMPLE_BYTES: Final = 2  # the WAV is 16-bit PCM
MAX_WAV_BYTES: Final = 0xFFFFFFFF  # RIFF sizes are 32-bit
CUE_MAX_CHARS: Final = 84  # two lines of 42, the common subtitle limit
LINE_MAX_CHARS: Final = 42
CUE_MAX_MS: Final = 7000.0
CUE_MIN_MS: Final = 500.0  # a short cue is held up to this long, unless the next one starts
PAUSE_MS: Final = 1000.0  # a silence this long between words starts a new cue
PARAGRAPH_MS: Final = 2000.0  # ... and in plain text, a new line
MAX_LISTED_RANGES: Final = 50  # X-Missing-Seqs names at most this many ranges


@attrs.frozen
class Piece:
    """A stretch of the timeline: one chunk, or the silence of missing seqs."""

    start_frame: int
    frames: int
    seq: int  # the chunk's seq, or the first missing one
    chunk: dict[str, Any] | None  # None: silence
    missing: int = 0  # how many seqs this silence stands for


@attrs.frozen
class Timeline:
    sample_rate: int
    channels: int
    pieces: tuple[Piece, ...]
    frames: int

    @property
    def frame_bytes(self) -> int:
        return self.channels * SAMPLE_BYTES

    @property
    def data_bytes(self) -> int:
        return self.frames * self.frame_bytes

    @property
    def total_bytes(self) -> int:
        return WAV_HEADER_BYTES + self.data_bytes

    @property
    def duration_ms(self) -> float:
        return self.frames * 1000.0 / self.sample_rate if self.sample_rate else 0.0

    def ms(self, frame: int) -> float:
        return frame * 1000.0 / self.sample_rate

    @property
    def missing_seqs(self) -> list[tuple[int, int]]:
        """The missing seqs as inclusive ranges."""
        return [(p.seq, p.seq + p.missing - 1) for p in self.pieces if p.chunk is None]

    @property
    def gap_frames(self) -> int:
        return sum(p.frames for p in self.pieces if p.chunk is None)


def plan_timeline(chunks: list[dict[str, Any]]) -> Timeline:
    """The timeline of a session's chunks (chunk JSON, in seq order).

    ``NotExportable`` when the chunks differ in sample rate or channels (a WAV has one of
    each), or when the WAV would pass its 4 GiB limit.
    """
    if not chunks:
        return Timeline(0, 0, (), 0)
    formats = {(c["audio"]["sample_rate"], c["audio"]["channels"]) for c in chunks}
    if len(formats) > 1:
        named = ", ".join(f"{rate} Hz x {ch}" for rate, ch in sorted(formats))
        msg = (f"the session's chunks differ in sample rate or channels ({named}); one WAV "
               "holds one format: export each chunk with GET /chunks/{id}/audio")  # fmt: skip
        raise NotExportable(msg)
    ((rate, channels),) = formats
    pieces: list[Piece] = []
    at = 0
    previous: dict[str, Any] | None = None
    for chunk in chunks:
        if previous is not None and chunk["seq"] > previous["seq"] + 1:
            missing = chunk["seq"] - previous["seq"] - 1
            frames = missing * int(previous["audio"]["frames"])
            pieces.append(Piece(at, frames, previous["seq"] + 1, None, missing))
            at += frames
        frames = int(chunk["audio"]["frames"])
        pieces.append(Piece(at, frames, chunk["seq"], chunk))
        at += frames
        previous = chunk
    timeline = Timeline(rate, channels, tuple(pieces), at)
    if timeline.total_bytes - 8 > MAX_WAV_BYTES:
        hours = timeline.duration_ms / 3.6e6
        msg = (f"the session is {hours:.1f} h of {rate} Hz x {channels} audio, over the 4 GiB a "
               "WAV file can hold; export its chunks one by one")  # fmt: skip
        raise NotExportable(msg)
    return timeline


def wav_header(sample_rate: int, channels: int, frames: int) -> bytes:
    """The 44-byte header of a 16-bit PCM WAV of *frames* frames."""
    block = channels * SAMPLE_BYTES
    data = frames * block
    return struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF", 36 + data, b"WAVE",
        b"fmt ", 16, 1, channels, sample_rate, sample_rate * block, block, 8 * SAMPLE_BYTES,
        b"data", data,
    )  # fmt: skip


def missing_header(timeline: Timeline) -> str:
    """``X-Missing-Seqs``: the missing seqs as ``3-5,9`` (at most ``MAX_LISTED_RANGES``)."""
    ranges = timeline.missing_seqs
    parts = [str(a) if a == b else f"{a}-{b}" for a, b in ranges[:MAX_LISTED_RANGES]]
    if len(ranges) > MAX_LISTED_RANGES:
        parts.append("...")
    return ",".join(parts)


_RANGE = re.compile(r"^bytes=([0-9]{0,18})-([0-9]{0,18})$")


def parse_range(header: str | None, total: int) -> tuple[int, int] | None:
    """The inclusive byte range a ``Range`` header asks of *total* bytes, or None for all.

    A header that is not one ``bytes=`` range is ignored (RFC 9110 lets a server ignore it);
    one that starts past the end raises ``ValueError`` (416).
    """
    if not header:
        return None
    match = _RANGE.match(header.strip().replace(" ", ""))
    if match is None or match.group(1) == match.group(2) == "":
        return None
    first, last = match.groups()
    if first == "":  # the last N bytes
        suffix = int(last)
        if suffix == 0:
            msg = "a range of the last 0 bytes is empty"
            raise ValueError(msg)
        return max(0, total - suffix), total - 1
    start = int(first)
    end = total - 1 if last == "" else min(int(last), total - 1)
    if start >= total or end < start:
        msg = f"bytes {header.strip()[6:]} are outside the {total} bytes"
        raise ValueError(msg)
    return start, end


# -- words ---------------------------------------------------------------------------------


def place_words(timeline: Timeline) -> list[dict[str, Any]]:
    """Every transcribed word of the session at its time on *timeline*, in order."""
    out: list[dict[str, Any]] = []
    gaps_before = 0.0
    for piece in timeline.pieces:
        chunk = piece.chunk
        if chunk is None:
            gaps_before += timeline.ms(piece.frames)
            continue
        if chunk["transcript"]["status"] != "done":
            continue
        begin = timeline.ms(piece.start_frame)
        finish = timeline.ms(piece.start_frame + piece.frames)
        words = chunk["transcript"].get("words", [])
        base = _timed_from(chunk, words, finish - begin, gaps_before)
        for word in words:
            text = " ".join(str(word.get("word", "")).split())
            if not text:
                continue
            start = min(finish, max(begin, begin + float(word["start_ms"]) - base))
            end = begin + float(word.get("end_ms", word["start_ms"])) - base
            end = min(timeline.duration_ms, max(start, end))
            placed = {"word": text, "start_ms": round(start, 1), "end_ms": round(end, 1),
                      "seq": chunk["seq"]}  # fmt: skip
            if "confidence" in word:
                placed["confidence"] = word["confidence"]
            out.append(placed)
    out.sort(key=lambda w: (w["start_ms"], w["seq"]))
    return out


def _timed_from(
    chunk: dict[str, Any], words: list[dict[str, Any]], duration_ms: float, gaps_before: float
) -> float:
    """Where the chunk started on the session's timeline when its words were timed.

    The transcript says so (``transcript.offset_ms``). Older records do not: then it is the
    chunk's ``offset_ms`` now, unless its words start past its end that way (chunks before it
    were deleted since), when the silence put in for missing seqs stands for what was deleted.
    """
    recorded = chunk["transcript"].get("offset_ms")
    if recorded is not None:
        return float(recorded)
    now = float(chunk.get("offset_ms", 0.0))
    if any(float(w["start_ms"]) - now >= duration_ms for w in words):
        return now + gaps_before
    return now


@attrs.frozen
class Cue:
    start_ms: float
    end_ms: float
    lines: tuple[str, ...]


def cues(words: list[dict[str, Any]]) -> list[Cue]:
    """Subtitle cues: words grouped until a pause, a sentence's end, ~7 s or two lines of 42
    characters; each cue shown from its first word's start to its last word's end (at least
    ``CUE_MIN_MS`` when the next cue leaves room), never overlapping the next."""
    groups: list[list[dict[str, Any]]] = []
    for word in words:
        group = groups[-1] if groups else None
        if group is not None:
            text = " ".join(w["word"] for w in [*group, word])
            if (
                word["start_ms"] - group[-1]["end_ms"] >= PAUSE_MS
                or word["end_ms"] - group[0]["start_ms"] > CUE_MAX_MS
                or len(text) > CUE_MAX_CHARS
                or group[-1]["word"].endswith((".", "?", "!"))
            ):
                group = None
        if group is None:
            groups.append([word])
        else:
            group.append(word)
    out: list[Cue] = []
    for i, group in enumerate(groups):
        start = group[0]["start_ms"]
        end = max(group[-1]["end_ms"], start + CUE_MIN_MS)
        if i + 1 < len(groups):
            end = min(end, groups[i + 1][0]["start_ms"])
        end = max(end, start + 1)  # a cue always lasts
        out.append(Cue(start, end, wrap(" ".join(w["word"] for w in group))))
    return out


def wrap(text: str) -> tuple[str, ...]:
    """*text* on at most two lines of about ``LINE_MAX_CHARS``, broken between words."""
    if len(text) <= LINE_MAX_CHARS:
        return (text,)
    words = text.split(" ")
    best = min(range(1, len(words)),
               key=lambda i: abs(len(" ".join(words[:i])) - len(" ".join(words[i:]))))  # fmt: skip
    return " ".join(words[:best]), " ".join(words[best:])


def timestamp(ms: float, separator: str) -> str:
    """``HH:MM:SS<separator>mmm``."""
    total = max(0, round(ms))
    hours, rest = divmod(total, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{seconds:02d}{separator}{millis:03d}"


def to_srt(cue_list: Iterable[Cue]) -> str:
    """SubRip: numbered cues, ``HH:MM:SS,mmm --> HH:MM:SS,mmm``, a blank line after each."""
    blocks = []
    for number, cue in enumerate(cue_list, 1):
        lines = [line.replace("-->", "->") for line in cue.lines]
        times = f"{timestamp(cue.start_ms, ',')} --> {timestamp(cue.end_ms, ',')}"
        blocks.append(f"{number}\n{times}\n" + "\n".join(lines) + "\n")
    return "\n".join(blocks)


def to_vtt(cue_list: Iterable[Cue]) -> str:
    """WebVTT: the ``WEBVTT`` line, then cues with ``HH:MM:SS.mmm`` times and escaped text."""
    blocks = ["WEBVTT\n"]
    for number, cue in enumerate(cue_list, 1):
        lines = [_vtt_escape(line) for line in cue.lines]
        times = f"{timestamp(cue.start_ms, '.')} --> {timestamp(cue.end_ms, '.')}"
        blocks.append(f"{number}\n{times}\n" + "\n".join(lines) + "\n")
    return "\n".join(blocks)


def _vtt_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def to_text(words: list[dict[str, Any]]) -> str:
    """Plain text: the words joined by spaces, a new line after a pause of ``PARAGRAPH_MS``."""
    lines: list[list[str]] = []
    last_end: float | None = None
    for word in words:
        if last_end is None or word["start_ms"] - last_end >= PARAGRAPH_MS:
            lines.append([])
        lines[-1].append(word["word"])
        last_end = word["end_ms"]
    return "".join(" ".join(line) + "\n" for line in lines)


def render(kind: str, words: list[dict[str, Any]]) -> str:
    """The words as ``txt``, ``srt`` or ``vtt``."""
    if kind == "txt":
        return to_text(words)
    if kind == "srt":
        return to_srt(cues(words))
    if kind == "vtt":
        return to_vtt(cues(words))
    msg = f"no text format {kind!r}"
    raise ValueError(msg)
