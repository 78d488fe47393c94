"""WAV, parsed here: the RIFF chunks walked, the "fmt " chunk checked before any sample is
touched, the "data" chunk converted with numpy (see ``decode.py`` for the rules)."""

from __future__ import annotations

import struct
from typing import Final

import attrs

from ..errors import InvalidAudio, UnsupportedMediaType
from .decoded import (
    SUPPORTED,
    Allowance,
    Decoded,
    Limit,
    check_channels,
    check_rate,
    pcm_decoded,
)

# WAV format tags (mmreg.h).
WAVE_FORMAT_PCM: Final = 0x0001
WAVE_FORMAT_IEEE_FLOAT: Final = 0x0003
WAVE_FORMAT_EXTENSIBLE: Final = 0xFFFE
WAV_FMT_MIN_BYTES: Final = 16
WAV_FMT_EXTENSIBLE_BYTES: Final = 40
WAV_DATA_TO_EOF: Final = 0xFFFFFFFF  # the data size a streaming writer leaves behind
_WAV_CODEC_NAMES: Final = {
    0x0002: "Microsoft ADPCM",
    0x0006: "A-law",
    0x0007: "mu-law",
    0x0011: "IMA ADPCM",
    0x0031: "GSM 6.10",
    0x0055: "MPEG Layer III",
}
# (format tag, bits per sample) -> encoding
_WAV_ENCODINGS: Final = {
    (WAVE_FORMAT_PCM, 8): "pcm_u8",
    (WAVE_FORMAT_PCM, 16): "pcm_s16le",
    (WAVE_FORMAT_PCM, 24): "pcm_s24le",
    (WAVE_FORMAT_PCM, 32): "pcm_s32le",
    (WAVE_FORMAT_IEEE_FLOAT, 32): "pcm_f32le",
    (WAVE_FORMAT_IEEE_FLOAT, 64): "pcm_f64le",
}


@attrs.frozen
class _WavFormat:
    encoding: str
    sample_rate: int
    channels: int
    block_align: int


def decode_wav(data: bytes, limit: Limit, allowance: Allowance | None) -> Decoded:
    """Walk the RIFF chunks ("fmt " before "data"), then convert the data chunk with numpy."""
    size = len(data)
    offset = 12
    fmt: _WavFormat | None = None
    while offset + 8 <= size:
        chunk_id = bytes(data[offset : offset + 4])
        (chunk_size,) = struct.unpack_from("<I", data, offset + 4)
        body = offset + 8
        present = size - body
        if chunk_id == b"fmt ":
            if chunk_size > present:
                msg = f"WAV fmt chunk declares {chunk_size} bytes but only {present} are present"
                raise InvalidAudio(msg)
            fmt = _parse_wav_fmt(bytes(data[body : body + chunk_size]))
        elif chunk_id == b"data":
            if fmt is None:
                msg = "WAV data chunk comes before any fmt chunk"
                raise InvalidAudio(msg)
            if chunk_size == WAV_DATA_TO_EOF:
                chunk_size = present
            elif chunk_size > present:
                msg = (
                    f"WAV data chunk declares {chunk_size} bytes but only {present} are "
                    "present (truncated upload?)"
                )
                raise InvalidAudio(msg)
            return _wav_samples(data, body, chunk_size, fmt, limit, allowance)
        offset = body + chunk_size + (chunk_size & 1)
    msg = "WAV file has no fmt chunk" if fmt is None else "WAV file has no data chunk"
    raise InvalidAudio(msg)


def _parse_wav_fmt(chunk: bytes) -> _WavFormat:
    if len(chunk) < WAV_FMT_MIN_BYTES:
        msg = f"WAV fmt chunk is {len(chunk)} bytes, shorter than {WAV_FMT_MIN_BYTES}"
        raise InvalidAudio(msg)
    tag, channels, rate, _byte_rate, block_align, bits = struct.unpack_from("<HHIIHH", chunk)
    if tag == WAVE_FORMAT_EXTENSIBLE:
        if len(chunk) < WAV_FMT_EXTENSIBLE_BYTES:
            msg = (
                f"WAVE_FORMAT_EXTENSIBLE fmt chunk is {len(chunk)} bytes, "
                f"shorter than {WAV_FMT_EXTENSIBLE_BYTES}"
            )
            raise InvalidAudio(msg)
        (tag,) = struct.unpack_from("<H", chunk, 24)  # first 2 bytes of the subformat GUID
    if channels == 0:
        msg = "WAV fmt declares 0 channels"
        raise InvalidAudio(msg)
    check_channels(channels, "WAV")
    check_rate(rate, "WAV")
    if tag not in (WAVE_FORMAT_PCM, WAVE_FORMAT_IEEE_FLOAT):
        codec = _WAV_CODEC_NAMES.get(tag, "codec")
        msg = (
            f"WAV {codec} (format tag 0x{tag:04x}) is not supported: send PCM or float WAV; "
            + SUPPORTED
        )
        raise UnsupportedMediaType(msg)
    encoding = _WAV_ENCODINGS.get((tag, bits))
    if encoding is None:
        kind = "PCM" if tag == WAVE_FORMAT_PCM else "float"
        allowed = "8, 16, 24 or 32" if tag == WAVE_FORMAT_PCM else "32 or 64"
        msg = f"WAV {kind} with {bits} bits per sample is not supported ({allowed} are)"
        raise InvalidAudio(msg)
    expected = channels * bits // 8
    if block_align != expected:
        msg = (
            f"WAV block_align is {block_align} but {channels} channel(s) of {bits}-bit "
            f"samples need {expected}"
        )
        raise InvalidAudio(msg)
    return _WavFormat(encoding, rate, channels, block_align)


def _wav_samples(
    data: bytes,
    offset: int,
    size: int,
    fmt: _WavFormat,
    limit: Limit,
    allowance: Allowance | None,
) -> Decoded:
    frames, extra = divmod(size, fmt.block_align)
    if extra:
        msg = (
            f"WAV data chunk is {size} bytes, not a whole number of {fmt.block_align}-byte "
            "frames (truncated?)"
        )
        raise InvalidAudio(msg)
    if frames == 0:
        msg = "WAV data chunk holds 0 frames"
        raise InvalidAudio(msg)
    rate, channels = fmt.sample_rate, fmt.channels
    return pcm_decoded(data, offset, frames, "wav", fmt.encoding, rate, channels, limit, allowance)
