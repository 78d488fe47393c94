"""What a client declares about its audio: the media type and, for headerless PCM, its
format (``encoding``/``sample_rate``/``channels`` fields, or ``audio/L16``), checked into a
``RawFormat`` or a 400. Decoding itself is ``decode.py``'s.
"""

from __future__ import annotations

from typing import Final

import attrs

from ..errors import InvalidField, MissingField

RAW_ENCODINGS: Final = (
    "pcm_s16le",
    "pcm_s16be",
    "pcm_s24le",
    "pcm_s32le",
    "pcm_f32le",
    "pcm_u8",
)
MIN_SAMPLE_RATE: Final = 1000
MAX_SAMPLE_RATE: Final = 384_000
MIN_CHANNELS: Final = 1
MAX_CHANNELS: Final = 8

L16_MEDIA_TYPE: Final = "audio/l16"


@attrs.frozen
class RawFormat:
    """The declared format of headerless PCM."""

    encoding: str  # one of RAW_ENCODINGS
    sample_rate: int
    channels: int


def parse_media_type(content_type: str | None) -> tuple[str, dict[str, str]]:
    """Split a Content-Type into its lowercased type and its parameters (names lowercased)."""
    if not content_type:
        return "", {}
    media_type, *parts = content_type.split(";")
    params: dict[str, str] = {}
    for part in parts:
        name, sep, value = part.partition("=")
        name = name.strip().lower()
        if not sep or not name:
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1].replace('\\"', '"').replace("\\\\", "\\")
        params[name] = value
    return media_type.strip().lower(), params


def raw_format_from(
    media_type: str,
    params: dict[str, str],
    encoding: str | None,
    sample_rate: str | None,
    channels: str | None,
) -> RawFormat | None:
    """The declared raw PCM format, or None when none was declared.

    Either explicit ``encoding``, ``sample_rate`` and ``channels`` fields (all three), or
    ``audio/L16`` (RFC 2586: 16-bit big-endian) with a ``rate`` parameter and ``channels``
    (default 1); the fields fill in a parameter the media type lacks. 400 on bad values.
    """
    if encoding:
        name = encoding.strip().lower()
        if name not in RAW_ENCODINGS:
            msg = f"encoding must be one of {', '.join(RAW_ENCODINGS)}, got {encoding[:40]!r}"
            raise InvalidField(msg)
        if not sample_rate:
            msg = "sample_rate is required with encoding"
            raise MissingField(msg)
        if not channels:
            msg = "channels is required with encoding"
            raise MissingField(msg)
        return RawFormat(name, _parse_rate(sample_rate), _parse_channels(channels))
    if media_type == L16_MEDIA_TYPE:
        rate = params.get("rate") or sample_rate
        if not rate:
            msg = "audio/L16 needs a rate parameter (audio/L16;rate=16000;channels=1)"
            raise MissingField(msg)
        count = params.get("channels") or channels or "1"
        return RawFormat("pcm_s16be", _parse_rate(rate), _parse_channels(count))
    return None


def _parse_rate(value: str) -> int:
    rate = _parse_int(value)
    if rate is None or not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        msg = (
            f"sample_rate must be an integer {MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE}, "
            f"got {value[:40]!r}"
        )
        raise InvalidField(msg)
    return rate


def _parse_channels(value: str) -> int:
    count = _parse_int(value)
    if count is None or not MIN_CHANNELS <= count <= MAX_CHANNELS:
        msg = f"channels must be an integer {MIN_CHANNELS}..{MAX_CHANNELS}, got {value[:40]!r}"
        raise InvalidField(msg)
    return count


def _parse_int(value: str) -> int | None:
    text = value.strip()
    if not (text.isascii() and text.isdigit()) or len(text) > 9:
        return None
    return int(text)
