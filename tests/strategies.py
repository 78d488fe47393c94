"""Hypothesis strategies for hostile input: damaged audio files and WebSocket messages."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from .audio_samples import encode, pcm_s16le, sine

MEDIA_TYPES = st.sampled_from([
    "", "audio/wav", "audio/flac", "audio/ogg", "audio/mpeg", "application/octet-stream",
    "text/plain", "audio/L16; rate=8000; channels=1", "audio/L16; rate=0", "audio/L16;rate=x",
    "multipart/form-data", "audio/wav; charset=\\x00",
])  # fmt: skip


def _seeds() -> list[bytes]:
    tone = sine(440.0, 0.05, 8000, 2)
    return [
        encode(tone, 8000, "WAV", "PCM_16"),
        encode(tone, 8000, "WAV", "PCM_24"),
        encode(tone, 8000, "WAV", "FLOAT"),
        encode(tone, 8000, "FLAC", "PCM_16"),
        encode(sine(440.0, 0.3, 8000, 1), 8000, "OGG", "VORBIS"),
        encode(sine(440.0, 0.3, 8000, 1), 8000, "MP3", "MPEG_LAYER_III"),
        pcm_s16le(440.0, 0.05, 8000),
    ]


SEEDS = _seeds()


@st.composite
def damaged_audio(draw: st.DrawFn) -> bytes:
    """A real file of a supported format, then cut, flipped, spliced or overwritten."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 4))):
        action = draw(st.sampled_from(["truncate", "flip", "insert", "overwrite", "zero"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if action == "truncate":
            del data[at:]
        elif action == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif action == "insert":
            data[at:at] = draw(st.binary(max_size=16))
        elif action == "overwrite":
            chunk = draw(st.sampled_from([b"\xff\xff\xff\xff", b"\x00\x00\x00\x00",
                                          b"\x7f\xff\xff\xff", b"\x01\x00"]))  # fmt: skip
            data[at : at + len(chunk)] = chunk
        elif action == "zero":
            data[at : at + draw(st.integers(1, 64))] = b"\x00" * 8
    return bytes(data)


AUDIO_INPUT = st.one_of(st.binary(max_size=2048), damaged_audio())

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)


@st.composite
def start_messages(draw: st.DrawFn) -> dict[str, Any]:
    """``start`` messages with every field possibly missing, mistyped or hostile."""
    ids = st.one_of(st.text(max_size=70), st.sampled_from(["alice", "../x", "a\x00b", "%2e"]),
                    JSON_VALUES)  # fmt: skip
    fields = {
        "encoding": st.one_of(st.sampled_from(["pcm_s16le", "pcm_f32le", "opus"]), JSON_VALUES),
        "sample_rate": st.one_of(st.integers(-5, 10**7), JSON_VALUES),
        "channels": st.one_of(st.integers(-1, 100), JSON_VALUES),
        "container": st.one_of(st.sampled_from(["wav", "aac"]), JSON_VALUES),
    }
    fmt = st.one_of(JSON_VALUES, st.fixed_dictionaries({}, optional=fields))
    message: dict[str, Any] = draw(st.fixed_dictionaries({"type": st.just("start")}, optional={
        "user_id": ids, "session_id": ids, "format": fmt,
        "resume_from_seq": st.one_of(st.integers(-3, 2**60), JSON_VALUES), "token": JSON_VALUES,
    }))  # fmt: skip
    return message
