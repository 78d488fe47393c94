"""FLAC, Ogg Vorbis/Opus and MP3 through libsndfile, read in blocks: a header can lie or say
nothing about the length, so the reading stops at the limit and asks the ``Allowance`` for
each block (see ``decode.py`` for the rules)."""

from __future__ import annotations

import io
from typing import Final

import numpy as np
import soundfile as sf

from ..errors import InvalidAudio, ServiceError, UnsupportedMediaType
from .decoded import (
    CONTAINER_NAMES,
    READ_BLOCK_FRAMES,
    SUPPORTED,
    Allowance,
    Decoded,
    Limit,
    Samples,
    check_channels,
    check_rate,
)

MAX_READ_FRAMES: Final = 1 << 22  # the largest single read a header can ask for
UNKNOWN_FRAMES: Final = 1 << 62  # libsndfile's frame count when the header has none

# libsndfile major format -> our container, and subtype -> our encoding.
_SF_FORMATS: Final = {"flac": "FLAC", "ogg": "OGG", "mp3": "MP3"}
_SF_ENCODINGS: Final = {
    "VORBIS": "vorbis",
    "OPUS": "opus",
    "MPEG_LAYER_III": "mp3",
    "MPEG_LAYER_II": "mp2",
    "MPEG_LAYER_I": "mp1",
}


def decode_soundfile(
    data: bytes, container: str, limit: Limit, allowance: Allowance | None
) -> Decoded:
    """FLAC, Ogg Vorbis/Opus and MP3 through libsndfile; header checks before any samples."""
    name = CONTAINER_NAMES[container]
    try:
        sound = _ForwardReader(io.BytesIO(data))
    except Exception as exc:
        msg = f"cannot decode the {name} data: {_libsndfile_message(exc)}"
        raise InvalidAudio(msg) from None
    with sound:
        if sound.format != _SF_FORMATS[container]:
            msg = f"the bytes look like {name} but libsndfile reads them as {sound.format}"
            raise InvalidAudio(msg)
        subtype = str(sound.subtype)
        encoding = "flac" if container == "flac" else _SF_ENCODINGS.get(subtype)
        if encoding is None:
            msg = f"{name} with {subtype} audio is not supported: {SUPPORTED}"
            raise UnsupportedMediaType(msg)
        channels, rate, header_frames = int(sound.channels), int(sound.samplerate), sound.frames
        check_channels(channels, name)
        check_rate(rate, name)
        if header_frames < UNKNOWN_FRAMES:
            limit.check(header_frames, rate, channels)
        try:
            samples = _read_all(sound, header_frames, limit, allowance)
        except ServiceError:
            raise
        except Exception as exc:
            msg = f"cannot decode the {name} data: {_libsndfile_message(exc)}"
            raise InvalidAudio(msg) from None
    frames = len(samples)
    if frames == 0:
        msg = f"the {name} data decodes to 0 frames (truncated?)"
        raise InvalidAudio(msg)
    return Decoded(samples, container, encoding, rate, channels, frames)


class _ForwardReader(sf.SoundFile):  # type: ignore[misc]
    """A SoundFile read front to back only.

    soundfile caps every read of a seekable file at the header's frame count (an estimate for
    MP3, "unknown" for a streamed FLAC) and seeks after it, which fails past the end of a
    FLAC of unknown length. Read as a stream, a read returns what the decoder actually has.
    """

    def seekable(self) -> bool:
        return False


def _read_all(
    sound: sf.SoundFile, header_frames: int, limit: Limit, allowance: Allowance | None
) -> Samples:
    """Read to the end (at most the limit's frames) in blocks; the header's count is only a
    hint. The first read goes into an array of the hinted size, so a file whose header tells
    the truth is read with no copy; more is read block by block and joined at the end."""
    rate, channels = int(sound.samplerate), int(sound.channels)
    cap = limit.cap(rate, channels)
    hint = header_frames + 1 if 0 <= header_frames < UNKNOWN_FRAMES else READ_BLOCK_FRAMES
    blocks: list[Samples] = []
    total = 0
    while True:
        want = min(hint, MAX_READ_FRAMES) if not blocks else READ_BLOCK_FRAMES
        if cap is not None:
            want = min(want, cap + 1 - total)
        if allowance is not None:  # the blocks so far, this one, and their join at the end
            allowance.need((total + want) * channels * (2 if blocks else 1))
        block: Samples = sound.read(want, dtype="float32", always_2d=True)
        if len(block):
            blocks.append(block)
            total += len(block)
        if cap is not None and total > cap:
            raise limit.too_large(total, rate, channels, cap, more=True)
        if len(block) < want:
            break
    if len(blocks) == 1:
        return np.ascontiguousarray(blocks[0])
    if not blocks:
        return np.zeros((0, channels), np.float32)
    return np.concatenate(blocks)


def _libsndfile_message(exc: Exception) -> str:
    """libsndfile's own words for *exc*, without soundfile's "Error opening <BytesIO ...>"."""
    text = getattr(exc, "error_string", None)
    if isinstance(text, str) and text:
        return text.removeprefix("Error : ").strip()
    return str(exc) or type(exc).__name__
