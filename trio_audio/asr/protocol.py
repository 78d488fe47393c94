"""The frames between the transcriber and a worker process, one definition for both sides.

A frame is ``u32 big-endian length | msgpack map``, the same in both directions. The first
request is ``init`` (engine options), answered with ``{ok, engine, sample_rate}`` once the
engine is loaded. Then one answer per request, in order::

    {op: "decode", pcm, offset_ms, partial?, prompt?, window_s?}
        -> {ok: true, text, words: [{word, start_ms, end_ms, confidence}]}  |  {ok: false, error}

``pcm`` is one utterance, 16 kHz 16-bit mono; word times come back on the session's timeline
(``offset_ms`` is where the utterance starts). ``partial``: the utterance is still going on,
so a streaming engine may answer with its hypothesis so far. ``prompt``: text said before the
utterance and words to expect (Whisper's previous text); ``window_s``: the shortest encoder
window (0 or absent: the engine's own). Plain code, no trio.
"""

from __future__ import annotations

import struct
from typing import Any, BinaryIO, Final

import msgpack

HEADER: Final = struct.Struct(">I")
MAX_FRAME_BYTES: Final = 1 << 30


def encode_frame(message: dict[str, Any]) -> bytes:
    body: bytes = msgpack.packb(message)
    return HEADER.pack(len(body)) + body


def frame_length(head: bytes) -> int:
    """The body length a frame header announces; ``ValueError`` past the limit."""
    (length,) = HEADER.unpack(head)
    if length > MAX_FRAME_BYTES:
        msg = f"frame of {length} bytes is over the limit"
        raise ValueError(msg)
    return int(length)


def decode_body(body: bytes) -> dict[str, Any]:
    message = msgpack.unpackb(body)
    if not isinstance(message, dict):
        msg = "a frame holds a msgpack map"
        raise ValueError(msg)  # noqa: TRY004 - a malformed frame, like a bad length
    return message


def read_frame(stream: BinaryIO) -> dict[str, Any] | None:
    """The next frame from a blocking stream; None at its end."""
    head = stream.read(HEADER.size)
    if len(head) < HEADER.size:
        return None
    length = frame_length(head)
    body = stream.read(length)
    if len(body) < length:
        return None
    return decode_body(body)


def write_frame(stream: BinaryIO, message: dict[str, Any]) -> None:
    stream.write(encode_frame(message))
    stream.flush()
