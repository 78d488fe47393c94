"""Uploaded bytes to float32 samples: WAV parsed here, FLAC/Ogg/MP3 through libsndfile, raw PCM.

A declaration of raw PCM (``encoding``/``sample_rate``/``channels``, or ``audio/L16``) is
final: those bytes are PCM in that format, never sniffed, because PCM can start with any bytes
(``RIFF``, ``fLaC``, ``OggS``, ``ID3``, an MPEG frame sync). Without one, the container is
recognised by its magic bytes, never by the declared Content-Type alone: a declared type only
decides which error a client gets when the bytes are not audio we know (422 ``invalid_audio``
when it named a format we decode, 415 ``unsupported_media_type`` otherwise). Every decoder
checks the header (channels, rate, length against the limits) before it touches the samples, so
a small file that would decode to hours is refused cheaply. Limits are on decoded length in
seconds, frames and samples (frames x channels: what memory the samples take). A header
can lie or say nothing (FLAC, Ogg and MP3 need not carry a frame count), so FLAC, Ogg and MP3
are read in blocks and the reading stops at the limit; an ``Allowance`` (the room the caller
took in its memory budget) is asked for more as the blocks come and a refusal ends the decode.
"""

from __future__ import annotations

import enum
import io
from typing import Final

import soundfile as sf

from ..errors import InvalidAudio, UnsupportedMediaType
from .declared import MAX_CHANNELS as MAX_CHANNELS  # re-exported, as are the names below
from .declared import MAX_SAMPLE_RATE as MAX_SAMPLE_RATE
from .declared import RAW_ENCODINGS as RAW_ENCODINGS
from .declared import RawFormat as RawFormat
from .declared import parse_media_type as parse_media_type
from .declared import raw_format_from as raw_format_from
from .decoded import (
    CONTAINER_NAMES,
    PCM_LAYOUTS,
    SUPPORTED,
    Limit,
    check_channels,
    check_rate,
    pcm_decoded,
)
from .decoded import Allowance as Allowance
from .decoded import Decoded as Decoded
from .decoded import Samples as Samples
from .sndfile import UNKNOWN_FRAMES, decode_soundfile
from .wav import decode_wav

# Media types naming a container we decode, and that container.
CONTAINER_MEDIA_TYPES: Final = {
    "audio/wav": "wav",
    "audio/x-wav": "wav",
    "audio/wave": "wav",
    "audio/vnd.wave": "wav",
    "audio/flac": "flac",
    "audio/x-flac": "flac",
    "audio/ogg": "ogg",
    "audio/vorbis": "ogg",
    "audio/opus": "ogg",
    "audio/mpeg": "mp3",
    "audio/mp3": "mp3",
}


def sniff_container(data: bytes) -> str | None:
    """The container the bytes' magic says ("wav", "flac", "ogg", "mp3"), or None."""
    head = bytes(data[:12])
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "wav"
    if head[:4] == b"fLaC":
        return "flac"
    if head[:4] == b"OggS":
        return "ogg"
    if head[:3] == b"ID3" or _is_mpeg_frame_header(head):
        return "mp3"
    return None


def _is_mpeg_frame_header(head: bytes) -> bool:
    """An MPEG audio layer II/III frame header: sync, version, layer, bitrate and rate valid."""
    if len(head) < 4 or head[0] != 0xFF or head[1] & 0xE0 != 0xE0:
        return False
    version = (head[1] >> 3) & 0x3  # 0b01 is reserved
    layer = (head[1] >> 1) & 0x3  # 0b01 layer III, 0b10 layer II
    bitrate = head[2] >> 4  # 0b1111 is invalid
    rate = (head[2] >> 2) & 0x3  # 0b11 is reserved
    return version != 0b01 and layer in (0b01, 0b10) and bitrate != 0xF and rate != 0b11


class _Unsniffed(enum.Enum):
    """``decode``'s default *container*: not sniffed yet."""

    TOKEN = 0


UNSNIFFED: Final = _Unsniffed.TOKEN


def decode(
    data: bytes,
    *,
    content_type: str | None = None,
    raw: RawFormat | None = None,
    container: str | _Unsniffed | None = UNSNIFFED,
    max_frames: int | None = None,
    max_duration_s: float | None = None,
    max_samples: int | None = None,
    allowance: Allowance | None = None,
) -> Decoded:
    """Decode an upload to float32 samples.

    *raw* declares headerless PCM: the bytes are decoded as that PCM and never sniffed (PCM
    can begin with any container's magic). Without it the container is what *container*
    says, when the caller has sniffed it already (``sniff_container``: the bytes' magic is
    read once per chunk), else sniffed here.
    A decoded length over *max_frames*, *max_duration_s* or *max_samples* (frames x channels)
    is a 413 before any sample is decoded, or, where the header did not say, as soon as the
    reading passes it. *allowance*: the samples the caller has room for (see ``Allowance``).
    Raises InvalidAudio (422), UnsupportedMediaType (415), PayloadTooLarge (413) or Overloaded
    (503, the allowance was refused).
    """
    if not data:
        msg = "empty body: no audio bytes were sent"
        raise InvalidAudio(msg)
    limit = Limit(max_frames, max_duration_s, max_samples)
    if raw is not None:
        return _decode_raw(data, raw, limit, allowance)
    if isinstance(container, _Unsniffed):
        container = sniff_container(data)
    if container == "wav":
        return decode_wav(data, limit, allowance)
    if container is not None:
        return decode_soundfile(data, container, limit, allowance)
    media_type, _ = parse_media_type(content_type)
    declared = CONTAINER_MEDIA_TYPES.get(media_type)
    if declared is not None:
        msg = (
            f"declared {media_type} but the bytes are not a {CONTAINER_NAMES[declared]} file "
            f"(they start with {bytes(data[:8])!r})"
        )
        raise InvalidAudio(msg)
    if media_type in ("", "application/octet-stream"):
        what = "bytes with no audio header we recognise"
    else:
        what = f"{media_type[:80]!r}"
    msg = f"cannot decode {what}: {SUPPORTED}"
    raise UnsupportedMediaType(msg)


def decoded_samples_bound(
    data: bytes, raw: RawFormat | None = None, container: str | _Unsniffed | None = UNSNIFFED
) -> int | None:
    """How many samples *data* decodes to, before decoding it: at most its size for PCM (one
    sample a byte at least), what the header says for FLAC, Ogg and MP3 (a hint only: it can
    lie, which the decode's limits catch), None when it says nothing or is not audio.
    *container*: as ``decode`` takes it (sniffed already, or not yet)."""
    if raw is not None:
        return len(data) // PCM_LAYOUTS[raw.encoding][1]
    if isinstance(container, _Unsniffed):
        container = sniff_container(data)
    if container == "wav":
        return len(data)
    if container is None:
        return None
    try:
        with sf.SoundFile(io.BytesIO(data)) as sound:
            frames, channels = sound.frames, sound.channels
    except Exception:  # not readable: the decode says why
        return None
    return frames * channels if 0 < frames < UNKNOWN_FRAMES else None


def _decode_raw(data: bytes, raw: RawFormat, limit: Limit, allowance: Allowance | None) -> Decoded:
    if raw.encoding not in RAW_ENCODINGS:
        msg = f"unknown raw encoding {raw.encoding!r}"
        raise InvalidAudio(msg)
    check_rate(raw.sample_rate, "raw PCM")
    check_channels(raw.channels, "raw PCM")
    frame_bytes = PCM_LAYOUTS[raw.encoding][1] * raw.channels
    frames, extra = divmod(len(data), frame_bytes)
    if extra:
        msg = (
            f"raw {raw.encoding} with {raw.channels} channel(s) comes in frames of {frame_bytes}"
            f" bytes, but {len(data)} bytes leave {extra} over (truncated?)"
        )
        raise InvalidAudio(msg)
    if frames == 0:
        msg = "raw PCM body holds no complete frame"
        raise InvalidAudio(msg)
    rate, channels = raw.sample_rate, raw.channels
    return pcm_decoded(data, 0, frames, "raw", raw.encoding, rate, channels, limit, allowance)
