"""Decoded audio, and what every decoder shares: the limits on decoded length, the
allowance a decode asks for memory, the checks on rate and channels, and PCM to float32.
The decoders are ``wav.py`` (WAV, parsed here), ``sndfile.py`` (FLAC, Ogg and MP3 through
libsndfile) and ``decode.py`` (raw PCM, and the choice among them)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Final

import attrs
import numpy as np
import numpy.typing as npt

from ..errors import InvalidAudio, Overloaded, PayloadTooLarge
from .declared import MAX_CHANNELS, MAX_SAMPLE_RATE, MIN_CHANNELS, MIN_SAMPLE_RATE, RAW_ENCODINGS

Samples = npt.NDArray[np.float32]

READ_BLOCK_FRAMES: Final = 1 << 18  # libsndfile reads past the header's frame count

CONTAINER_NAMES: Final = {"wav": "WAV", "flac": "FLAC", "ogg": "Ogg", "mp3": "MP3"}
SUPPORTED: Final = (
    "supported are WAV (PCM or float), FLAC, Ogg Vorbis/Opus and MP3, recognised by their "
    "bytes, or headerless PCM declared as audio/L16;rate=N;channels=N or with encoding ("
    + ", ".join(RAW_ENCODINGS)
    + "), sample_rate and channels"
)

# encoding -> (numpy dtype of one sample, or None for 24-bit, bytes per sample)
PCM_LAYOUTS: Final[dict[str, tuple[str | None, int]]] = {
    "pcm_u8": ("u1", 1),
    "pcm_s16le": ("<i2", 2),
    "pcm_s16be": (">i2", 2),
    "pcm_s24le": (None, 3),
    "pcm_s32le": ("<i4", 4),
    "pcm_f32le": ("<f4", 4),
    "pcm_f64le": ("<f8", 8),
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


@attrs.frozen
class Limit:
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


def check_rate(rate: int, what: str) -> None:
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        msg = f"{what} sample rate {rate} Hz is outside {MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} Hz"
        raise InvalidAudio(msg)


def check_channels(channels: int, what: str) -> None:
    if not MIN_CHANNELS <= channels <= MAX_CHANNELS:
        msg = f"{what} has {channels} channels; {MIN_CHANNELS}..{MAX_CHANNELS} are accepted"
        raise InvalidAudio(msg)


def pcm_to_float(data: bytes, offset: int, frames: int, channels: int, encoding: str) -> Samples:
    """Interleaved PCM at *offset* as a new float32 (frames, channels) array."""
    dtype, width = PCM_LAYOUTS[encoding]
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


def pcm_decoded(
    data: bytes,
    offset: int,
    frames: int,
    container: str,
    encoding: str,
    sample_rate: int,
    channels: int,
    limit: Limit,
    allowance: Allowance | None,
) -> Decoded:
    """*frames* of interleaved PCM at *offset*, checked against *limit* and taken from
    *allowance* before any sample is converted."""
    limit.check(frames, sample_rate, channels)
    if allowance is not None:
        allowance.need(frames * channels)
    samples = pcm_to_float(data, offset, frames, channels, encoding)
    return Decoded(samples, container, encoding, sample_rate, channels, frames)
