"""A whole session: its audio as one WAV, its transcript in the forms people use, its delete.

``GET /sessions/{user_id}/{session_id}/audio``: the session's chunks decoded to 16-bit PCM and
laid end to end on one timeline (``export_format.plan_timeline``; seqs missing between stored
chunks are silence, named in ``X-Missing-Seqs`` and ``X-Gaps-Ms``). The length is known from
the chunk JSON before anything is decoded, so the answer has a ``Content-Length`` and serves
byte ranges (``Accept-Ranges: bytes``; 206 with ``Content-Range``; 416 past the end), and a
player can seek.

``GET /sessions/{user_id}/{session_id}/transcript?format=json|txt|srt|vtt``: the durable
words, on the same timeline as the audio.

``DELETE /sessions/{user_id}/{session_id}`` (and the older ``DELETE /sessions/{user_id}
?session_id=``): every chunk of the session, durably.

Resource handling: the audio is streamed, never built whole: one chunk's stored bytes and
``export_block_s`` of decoded PCM at a time, decoded in a thread under the service's CPU
limiter. A chunk deleted while its session streams is sent as silence (the length was
promised). What a request keeps of the session is a small record per chunk, not its JSON.

Error handling: another user's session is 404, as every route (``owned``); sessions whose
chunks differ in rate or channels are 409 ``not_exportable``.
"""

from __future__ import annotations

import bisect
import hashlib
import io
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, Final

import numpy as np
import soundfile as sf
import trio
from quart import Response, request
from quart_trio import QuartTrio

from ...audio.decode import RawFormat, decode
from ...audio.vad import to_pcm16
from ...config import Config
from ...errors import InvalidField, NotFound, RangeNotSatisfiable
from ...models import check_id
from ...store import StoreBackend
from .. import export_format as fmt

logger = logging.getLogger("trio_audio.web.export")

SKIP_BLOCK_FRAMES: Final = 1 << 16  # frames decoded at a time to reach a place in an MP3
EXPORT_PAGE: Final = 1000  # chunk records read in one batch of log reads
TRANSCRIPT_TYPES: Final = {
    "json": "application/json",
    "txt": "text/plain; charset=utf-8",
    "srt": "application/x-subrip; charset=utf-8",
    "vtt": "text/vtt; charset=utf-8",
}

AUDIO_FIELDS: Final = ("container", "encoding", "sample_rate", "channels", "frames", "duration_ms")
Owned = Callable[[str, str], None]


def _slim(chunk: dict[str, Any], words: bool) -> dict[str, Any]:
    """What an export keeps of a chunk's JSON (not its features and spectrum)."""
    audio = chunk["audio"]
    out = {
        "chunk_id": chunk["chunk_id"],
        "seq": chunk["seq"],
        "offset_ms": chunk.get("offset_ms", 0.0),
        "audio": {k: audio[k] for k in AUDIO_FIELDS},
        "transcript": {"status": chunk["transcript"]["status"]},
    }
    if words:
        out["transcript"]["words"] = chunk["transcript"].get("words", [])
    return out


async def session_chunks(
    store: StoreBackend, user_id: str, session_id: str, words: bool
) -> list[dict[str, Any]]:
    """The session's chunks (slim records) in seq order, read a page of ``EXPORT_PAGE`` at a
    time (one batch of log reads each); ``NotFound`` when it has none. A chunk deleted
    meanwhile is left out."""
    found: list[dict[str, Any]] = []
    after: tuple[str, int] | None = None
    while True:
        sessions, after = await store.page(user_id, session_id, EXPORT_PAGE, after)
        found.extend(_slim(chunk, words) for _, chunks in sessions for chunk in chunks)
        if after is None:
            break
    if not found:
        raise NotFound(f"user {user_id!r} has no session {session_id!r}")
    return found


class _Forward(sf.SoundFile):  # type: ignore[misc]
    """A SoundFile read front to back only: soundfile asks a seekable file where it is
    before every read, and on an MP3 that seek moves libsndfile's decoder off its place."""

    def seekable(self) -> bool:
        return False


class ChunkReader:
    """One stored chunk's audio as 16-bit PCM, a block at a time from a start frame.

    Containers are read through libsndfile from the stored bytes (seeking to the start; an
    MP3 is decoded from its beginning, front to back, as the ingest decoder reads it: a seek
    in an MP3 lands near the frame asked for, not on it);
    headerless PCM is sliced. Exactly ``frames`` frames come out (what the chunk JSON says),
    padded with silence should the decoder find fewer. Only ever called from one thread at a
    time.
    """

    def __init__(self, data: bytes, content_type: str, chunk: dict[str, Any], start: int):
        self.data = data
        self.content_type = content_type
        self.audio = chunk["audio"]
        self.position = start
        self.sound: sf.SoundFile | None = None
        self.whole: np.ndarray[Any, np.dtype[np.int16]] | None = None

    def _open(self) -> None:
        audio = self.audio
        if audio["container"] == "raw":
            raw = RawFormat(audio["encoding"], audio["sample_rate"], audio["channels"])
            self.whole = to_pcm16(decode(self.data, raw=raw).samples)
            return
        try:
            if audio["container"] == "mp3":  # libsndfile's MP3 seek is not sample-exact:
                self.sound = _Forward(io.BytesIO(self.data))  # decode from the start and
                skip = self.position  # drop what comes before
                while skip > 0:
                    dropped = len(self.sound.read(min(skip, SKIP_BLOCK_FRAMES), dtype="int16"))
                    skip = skip - dropped if dropped else 0
            else:
                self.sound = sf.SoundFile(io.BytesIO(self.data))
                self.sound.seek(self.position)
        except (sf.LibsndfileError, RuntimeError, ValueError):
            # A WAV our own parser reads but libsndfile does not: decode it whole (its size
            # is bounded by the upload limits).
            self.sound = None
            self.whole = to_pcm16(decode(self.data, content_type=self.content_type).samples)

    def read(self, frames: int) -> bytes:
        """The next *frames* frames (fewer only at the chunk's end), interleaved int16 LE."""
        if self.sound is None and self.whole is None:
            self._open()
        channels = int(self.audio["channels"])
        frames = max(0, min(frames, int(self.audio["frames"]) - self.position))
        if self.sound is not None:
            block = self.sound.read(frames, dtype="int16", always_2d=True)
        else:
            assert self.whole is not None
            block = self.whole.reshape(-1, channels)[self.position : self.position + frames]
        self.position += frames
        out = np.zeros((frames, channels), dtype="<i2")
        out[: len(block)] = block[:frames]
        return out.tobytes()

    def close(self) -> None:
        if self.sound is not None:
            self.sound.close()


def register_session_export(
    app: QuartTrio,
    config: Config,
    store: StoreBackend,
    owned: Owned,
    limiter: trio.CapacityLimiter,
) -> None:
    """Add the session's audio, transcript and delete routes to *app*."""

    def session_ids(user_id: str, session_id: str) -> None:
        check_id("user_id", user_id)
        check_id("session_id", session_id)
        owned(user_id, f"user {user_id!r}")

    @app.get("/sessions/<user_id>/<session_id>/audio")
    async def session_audio(user_id: str, session_id: str) -> Response:
        session_ids(user_id, session_id)
        chunks = await session_chunks(store, user_id, session_id, words=False)
        timeline = fmt.plan_timeline(chunks)
        total = timeline.total_bytes
        try:
            wanted = fmt.parse_range(request.headers.get("Range"), total)
        except ValueError as exc:
            raise RangeNotSatisfiable(str(exc), total) from None
        start, end = wanted if wanted is not None else (0, total - 1)
        tag = hashlib.sha256("".join(f"{c['chunk_id']}." for c in chunks).encode()).hexdigest()[:32]
        headers = {
            "Accept-Ranges": "bytes",
            "Content-Length": str(end - start + 1),
            "ETag": f'"{tag}"',
            "Cache-Control": "no-cache",
            "Content-Disposition": f'inline; filename="{user_id}-{session_id}.wav"',
            "X-Missing-Seqs": fmt.missing_header(timeline),
            "X-Gaps-Ms": f"{timeline.ms(timeline.gap_frames):.1f}",
            "X-Duration-Ms": f"{timeline.duration_ms:.1f}",
        }
        status = 200
        if wanted is not None:
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{total}"
        body = wav_bytes(store, timeline, start, end, config.export_block_s, limiter)
        response = Response(body, status=status, headers=headers, content_type="audio/wav")
        response.timeout = None  # an hour of audio to a slow reader takes its time
        return response

    @app.get("/sessions/<user_id>/<session_id>/transcript")
    async def session_transcript(user_id: str, session_id: str) -> Response:
        session_ids(user_id, session_id)
        kind = request.args.get("format", "json")
        if kind not in TRANSCRIPT_TYPES:
            msg = f"format must be one of {', '.join(TRANSCRIPT_TYPES)}, got {kind[:20]!r}"
            raise InvalidField(msg)
        chunks = await session_chunks(store, user_id, session_id, words=True)
        timeline = fmt.plan_timeline(chunks)
        words = fmt.place_words(timeline)
        summary = store.summary(user_id, session_id)
        status = summary.transcript["status"] if summary is not None else "done"
        headers = {"X-Transcript-Status": status, "Cache-Control": "no-cache"}
        if kind == "json":
            body = transcript_json(user_id, session_id, status, timeline, words)
            return Response(body, headers=headers, content_type=TRANSCRIPT_TYPES[kind])
        text = fmt.render(kind, words)
        headers["Content-Disposition"] = f'inline; filename="{user_id}-{session_id}.{kind}"'
        return Response(text, headers=headers, content_type=TRANSCRIPT_TYPES[kind])

    async def delete(user_id: str, session_id: str) -> Response:
        # A durable tombstone for every chunk; 404 if none is stored, 507 when the log is full.
        deleted = await store.delete_session(user_id, session_id)
        body = {"user_id": user_id, "session_id": session_id, "deleted": len(deleted),
                "chunk_ids": deleted}  # fmt: skip
        return Response(_dumps(body), content_type="application/json")

    @app.delete("/sessions/<user_id>/<session_id>")
    async def delete_whole_session(user_id: str, session_id: str) -> Response:
        session_ids(user_id, session_id)
        return await delete(user_id, session_id)

    @app.delete("/sessions/<user_id>")
    async def delete_session(user_id: str) -> Response:
        # The older form, the session named in the query: ?session_id= (required).
        check_id("user_id", user_id)
        owned(user_id, f"user {user_id!r}")
        session_id = check_id("session_id", request.args.get("session_id"))
        assert session_id is not None
        return await delete(user_id, session_id)


def _dumps(body: Any) -> str:
    return json.dumps(body, separators=(",", ":"), allow_nan=False)


def transcript_json(
    user_id: str,
    session_id: str,
    status: str,
    timeline: fmt.Timeline,
    words: list[dict[str, Any]],
) -> str:
    """The JSON transcript: words with times on the audio's timeline, and where chunks lie."""
    chunks = [
        {"seq": p.seq, "chunk_id": p.chunk["chunk_id"],
         "start_ms": round(timeline.ms(p.start_frame), 1),
         "duration_ms": round(timeline.ms(p.frames), 1),
         "status": p.chunk["transcript"]["status"]}
        for p in timeline.pieces if p.chunk is not None
    ]  # fmt: skip
    body = {
        "user_id": user_id,
        "session_id": session_id,
        "status": status,
        "duration_ms": round(timeline.duration_ms, 1),
        "text": " ".join(w["word"] for w in words),
        "words": words,
        "missing_seqs": [list(r) for r in timeline.missing_seqs],
        "gaps_ms": round(timeline.ms(timeline.gap_frames), 1),
        "chunks": chunks,
    }
    return _dumps(body)


async def wav_bytes(
    store: StoreBackend,
    timeline: fmt.Timeline,
    start: int,
    end: int,
    block_s: float,
    limiter: trio.CapacityLimiter,
) -> AsyncIterator[bytes]:
    """Bytes *start*..*end* (inclusive) of the session's WAV, a block at a time."""
    header = fmt.wav_header(timeline.sample_rate, timeline.channels, timeline.frames)
    if start < len(header):
        yield header[start : end + 1]
    data_start = max(start, len(header)) - len(header)
    data_end = end + 1 - len(header)  # exclusive
    if data_end <= data_start:
        return
    frame_bytes = timeline.frame_bytes
    first = data_start // frame_bytes
    last = -(-data_end // frame_bytes)  # exclusive
    skip = data_start - first * frame_bytes
    remaining = data_end - data_start
    block_frames = max(1, int(block_s * timeline.sample_rate))
    starts = [p.start_frame for p in timeline.pieces]
    index = max(0, bisect.bisect_right(starts, first) - 1)
    for piece in timeline.pieces[index:]:
        if piece.start_frame >= last or remaining <= 0:
            break
        lo = max(first, piece.start_frame) - piece.start_frame
        hi = min(last, piece.start_frame + piece.frames) - piece.start_frame
        async for block in _piece_blocks(store, piece, lo, hi, block_frames, timeline, limiter):
            if skip:
                block, skip = block[skip:], 0
            block = block[:remaining]
            remaining -= len(block)
            if block:
                yield block


async def _piece_blocks(
    store: StoreBackend,
    piece: fmt.Piece,
    lo: int,
    hi: int,
    block_frames: int,
    timeline: fmt.Timeline,
    limiter: trio.CapacityLimiter,
) -> AsyncIterator[bytes]:
    """Frames *lo*..*hi* (exclusive) of one piece: silence, or the chunk decoded."""
    reader = None
    if piece.chunk is not None:
        try:
            data, content_type = await store.read_audio(piece.chunk["chunk_id"])
            reader = ChunkReader(data, content_type, piece.chunk, lo)
        except NotFound:
            logger.info("chunk %s was deleted while its session streamed: sent as silence",
                        piece.chunk["chunk_id"])  # fmt: skip
    at = lo
    try:
        while at < hi:
            n = min(block_frames, hi - at)
            if reader is None:
                yield bytes(n * timeline.frame_bytes)
            else:
                yield await trio.to_thread.run_sync(reader.read, n, limiter=limiter)
            at += n
    finally:
        if reader is not None:
            reader.close()
