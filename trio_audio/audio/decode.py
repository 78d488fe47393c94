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
import math
import struct
from collections.abc import Callable
from typing import Final

import attrs
import numpy as np
import numpy.typing as npt
import soundfile as sf

from ..errors import (
    InvalidAudio,
    Overloaded,
    PayloadTooLarge,
    ServiceError,
    UnsupportedMediaType,
)
from .declared import MAX_CHANNELS as MAX_CHANNELS  # re-exported, as are the names below
from .declared import MAX_SAMPLE_RATE as MAX_SAMPLE_RATE
from .declared import MIN_CHANNELS, MIN_SAMPLE_RATE
from .declared import RAW_ENCODINGS as RAW_ENCODINGS
from .declared import RawFormat as RawFormat
from .declared import parse_media_type as parse_media_type
from .declared import raw_format_from as raw_format_from

Samples = npt.NDArray[np.float32]

READ_BLOCK_FRAMES: Final = 1 << 18  # libsndfile reads past the header's frame count
MAX_READ_FRAMES: Final = 1 << 22  # the largest single read a header can ask for
UNKNOWN_FRAMES: Final = 1 << 62  # libsndfile's frame count when the header has none

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


_CONTAINER_NAMES: Final = {"wav": "WAV", "flac": "FLAC", "ogg": "Ogg", "mp3": "MP3"}
_SUPPORTED: Final = (
    "supported are WAV (PCM or float), FLAC, Ogg Vorbis/Opus and MP3, recognised by their "
    "bytes, or headerless PCM declared as audio/L16;rate=N;channels=N or with encoding ("
    + ", ".join(RAW_ENCODINGS)
    + "), sample_rate and channels"
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

# encoding -> (numpy dtype of one sample, or None for 24-bit, bytes per sample)
_PCM_LAYOUTS: Final[dict[str, tuple[str | None, int]]] = {
    "pcm_u8": ("u1", 1),
    "pcm_s16le": ("<i2", 2),
    "pcm_s16be": (">i2", 2),
    "pcm_s24le": (None, 3),
    "pcm_s32le": ("<i4", 4),
    "pcm_f32le": ("<f4", 4),
    "pcm_f64le": ("<f8", 8),
}

# libsndfile major format -> our container, and subtype -> our encoding.
_SF_FORMATS: Final = {"flac": "FLAC", "ogg": "OGG", "mp3": "MP3"}
_SF_ENCODINGS: Final = {
    "VORBIS": "vorbis",
    "OPUS": "opus",
    "MPEG_LAYER_III": "mp3",
    "MPEG_LAYER_II": "mp2",
    "MPEG_LAYER_I": "mp1",
}


@attrs.define
class Allowance:
    """Decoded samples a decode may make: *samples* were taken beforehand (in the caller's
    memory budget); *more(n)* asks for n more and says whether it got them. The decode asks
    before it makes each block past what it holds, and fails with 503 ``overloaded`` when
    refused. Afterwards ``samples`` is what was taken in all."""

    samples: int
    more: Callable[[int], bool]

    def need(self, total: int) -> None:
        if total <= self.samples:
            return
        extra = max(total - self.samples, READ_BLOCK_FRAMES)
        if not self.more(extra):
            msg = "no memory free to decode this audio now; retry after the delay given"
            raise Overloaded(msg)
        self.samples += extra


@attrs.frozen(eq=False)
class Decoded:
    """Decoded audio: C-contiguous float32 samples shaped (frames, channels), nominally in [-1, 1].

    Float sources (float WAV, ``pcm_f32le``, lossy codecs) are passed on as they are and may
    slightly exceed full scale; they are always finite.
    """

    samples: Samples
    container: str  # "wav" | "flac" | "ogg" | "mp3" | "raw"
    encoding: str
    sample_rate: int
    channels: int
    frames: int

    @property
    def duration_ms(self) -> float:
        return self.frames * 1000.0 / self.sample_rate


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
    limit = _Limit(max_frames, max_duration_s, max_samples)
    if raw is not None:
        return _decode_raw(data, raw, limit, allowance)
    if isinstance(container, _Unsniffed):
        container = sniff_container(data)
    if container == "wav":
        return _decode_wav(data, limit, allowance)
    if container is not None:
        return _decode_soundfile(data, container, limit, allowance)
    media_type, _ = parse_media_type(content_type)
    declared = CONTAINER_MEDIA_TYPES.get(media_type)
    if declared is not None:
        msg = (
            f"declared {media_type} but the bytes are not a {_CONTAINER_NAMES[declared]} file "
            f"(they start with {bytes(data[:8])!r})"
        )
        raise InvalidAudio(msg)
    if media_type in ("", "application/octet-stream"):
        what = "bytes with no audio header we recognise"
    else:
        what = f"{media_type[:80]!r}"
    msg = f"cannot decode {what}: {_SUPPORTED}"
    raise UnsupportedMediaType(msg)


def decoded_samples_bound(
    data: bytes, raw: RawFormat | None = None, container: str | _Unsniffed | None = UNSNIFFED
) -> int | None:
    """How many samples *data* decodes to, before decoding it: at most its size for PCM (one
    sample a byte at least), what the header says for FLAC, Ogg and MP3 (a hint only: it can
    lie, which the decode's limits catch), None when it says nothing or is not audio.
    *container*: as ``decode`` takes it (sniffed already, or not yet)."""
    if raw is not None:
        return len(data) // _PCM_LAYOUTS[raw.encoding][1]
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


def decode_raw(
    data: bytes,
    raw: RawFormat,
    *,
    max_frames: int | None = None,
    max_duration_s: float | None = None,
    max_samples: int | None = None,
) -> Decoded:
    """Headerless PCM in the declared format (no sniffing)."""
    return _decode_raw(data, raw, _Limit(max_frames, max_duration_s, max_samples), None)


def _decode_raw(data: bytes, raw: RawFormat, limit: _Limit, allowance: Allowance | None) -> Decoded:
    if raw.encoding not in RAW_ENCODINGS:
        msg = f"unknown raw encoding {raw.encoding!r}"
        raise InvalidAudio(msg)
    _check_rate(raw.sample_rate, "raw PCM")
    _check_channels(raw.channels, "raw PCM")
    frame_bytes = _PCM_LAYOUTS[raw.encoding][1] * raw.channels
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
    limit.check(frames, raw.sample_rate, raw.channels)
    if allowance is not None:
        allowance.need(frames * raw.channels)
    samples = _pcm_to_float(data, 0, frames, raw.channels, raw.encoding)
    return Decoded(samples, "raw", raw.encoding, raw.sample_rate, raw.channels, frames)


@attrs.frozen
class _Limit:
    """The longest decoded length allowed, in frames, seconds and/or samples."""

    max_frames: int | None
    max_duration_s: float | None
    max_samples: int | None = None

    def cap(self, sample_rate: int, channels: int = 1) -> int | None:
        """The most frames allowed at *sample_rate* and *channels*, or None for no limit."""
        caps = []
        if self.max_frames is not None:
            caps.append(self.max_frames)
        if self.max_duration_s is not None:
            caps.append(math.floor(self.max_duration_s * sample_rate))
        if self.max_samples is not None:
            caps.append(self.max_samples // channels)
        return min(caps) if caps else None

    def check(self, frames: int, sample_rate: int, channels: int = 1) -> None:
        cap = self.cap(sample_rate, channels)
        if cap is not None and frames > cap:
            raise self.too_large(frames, sample_rate, channels, cap)

    def too_large(
        self, frames: int, sample_rate: int, channels: int, cap: int, *, more: bool = False
    ) -> PayloadTooLarge:
        by_samples = self.max_samples is not None and cap == self.max_samples // channels
        if by_samples:
            count = f"more than {cap * channels}" if more else f"{frames * channels}"
            msg = (f"decoded audio is {count} samples ({channels} channel(s) at "
                   f"{sample_rate} Hz), over the limit of {self.max_samples} samples")  # fmt: skip
            return PayloadTooLarge(msg)
        length = (
            "more than " + _seconds(cap / sample_rate) if more else _seconds(frames / sample_rate)
        )
        msg = f"decoded audio is {length} s, over the {_seconds(cap / sample_rate)} s limit"
        return PayloadTooLarge(msg)


def _seconds(value: float) -> str:
    return f"{round(value, 3):g}"


def _check_rate(rate: int, what: str) -> None:
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        msg = f"{what} sample rate {rate} Hz is outside {MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} Hz"
        raise InvalidAudio(msg)


def _check_channels(channels: int, what: str) -> None:
    if not MIN_CHANNELS <= channels <= MAX_CHANNELS:
        msg = f"{what} has {channels} channels; {MIN_CHANNELS}..{MAX_CHANNELS} are accepted"
        raise InvalidAudio(msg)


def _pcm_to_float(data: bytes, offset: int, frames: int, channels: int, encoding: str) -> Samples:
    """Interleaved PCM at *offset* as a new float32 (frames, channels) array."""
    dtype, width = _PCM_LAYOUTS[encoding]
    count = frames * channels
    out: Samples
    if dtype is None:  # 24-bit: widen each sample to the top 3 bytes of an int32
        packed = np.frombuffer(data, np.uint8, count * 3, offset).reshape(count, 3)
        wide = np.zeros((count, 4), np.uint8)
        wide[:, 1:] = packed
        out = wide.view("<i4").reshape(count).astype(np.float32)
        out *= 2.0**-31
    else:
        ints = np.frombuffer(data, dtype, count, offset)
        out = ints.astype(np.float32)
        if ints.dtype.kind == "u":
            out -= 128.0
            out *= 1.0 / 128
        elif ints.dtype.kind == "i":
            out *= 2.0 ** (1 - 8 * width)
        elif not np.isfinite(out).all():
            msg = f"{encoding} audio holds NaN or infinite samples"
            raise InvalidAudio(msg)
    return out.reshape(frames, channels)


@attrs.frozen
class _WavFormat:
    encoding: str
    sample_rate: int
    channels: int
    block_align: int


def _decode_wav(data: bytes, limit: _Limit, allowance: Allowance | None) -> Decoded:
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
    _check_channels(channels, "WAV")
    _check_rate(rate, "WAV")
    if tag not in (WAVE_FORMAT_PCM, WAVE_FORMAT_IEEE_FLOAT):
        codec = _WAV_CODEC_NAMES.get(tag, "codec")
        msg = (
            f"WAV {codec} (format tag 0x{tag:04x}) is not supported: send PCM or float WAV; "
            + _SUPPORTED
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
    limit: _Limit,
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
    limit.check(frames, fmt.sample_rate, fmt.channels)
    if allowance is not None:
        allowance.need(frames * fmt.channels)
    samples = _pcm_to_float(data, offset, frames, fmt.channels, fmt.encoding)
    return Decoded(samples, "wav", fmt.encoding, fmt.sample_rate, fmt.channels, frames)


def _decode_soundfile(
    data: bytes, container: str, limit: _Limit, allowance: Allowance | None
) -> Decoded:
    """FLAC, Ogg Vorbis/Opus and MP3 through libsndfile; header checks before any samples."""
    name = _CONTAINER_NAMES[container]
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
            msg = f"{name} with {subtype} audio is not supported: {_SUPPORTED}"
            raise UnsupportedMediaType(msg)
        channels, rate, header_frames = int(sound.channels), int(sound.samplerate), sound.frames
        _check_channels(channels, name)
        _check_rate(rate, name)
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
    sound: sf.SoundFile, header_frames: int, limit: _Limit, allowance: Allowance | None
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
