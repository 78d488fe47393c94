"""The frames between the transcriber and a worker process, one definition for both sides.

A frame is ``u32 big-endian length | msgpack map``, the same in both directions. The first
request is ``init`` (engine options and limits), answered with ``{ok, engine, sample_rate}``
once one decoder is loaded. Then one answer per request, in order::

    {op: "feed", key, pcm, offset_ms} | {op: "finish", key} | {op: "close", key}
        -> {ok: true, results: [Result.to_dict(), ...]}  |  {ok: false, error}

``key`` is a session's ``user_id/session_id`` (ids never hold ``/``). Plain code, no trio.
"""

from __future__ import annotations

import struct
from typing import Any, BinaryIO, Final

import msgpack

HEADER: Final = struct.Struct(">I")
MAX_FRAME_BYTES: Final = 1 << 30

Key = tuple[str, str]


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


def wire_key(key: Key) -> str:
    return f"{key[0]}/{key[1]}"


def unwire_key(text: str) -> Key:
    user_id, _, session_id = text.partition("/")
    return user_id, session_id
