"""Real audio made on the spot with numpy and libsndfile (through soundfile)."""

from __future__ import annotations

import io

import numpy as np
import soundfile as sf


def sine(
    freq: float = 440.0,
    seconds: float = 1.0,
    rate: int = 16000,
    channels: int = 1,
    amplitude: float = 0.5,
) -> np.ndarray:
    """A (frames, channels) float32 sine."""
    t = np.arange(int(seconds * rate)) / rate
    tone = (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return np.repeat(tone[:, None], channels, axis=1)


def encode(samples: np.ndarray, rate: int, fmt: str = "WAV", subtype: str | None = None) -> bytes:
    """*samples* written by libsndfile as a whole file of format *fmt* (WAV, FLAC, OGG, MP3)."""
    out = io.BytesIO()
    sf.write(out, samples, rate, format=fmt, subtype=subtype)
    return out.getvalue()


def wav(freq: float = 440.0, seconds: float = 1.0, rate: int = 16000, channels: int = 1) -> bytes:
    return encode(sine(freq, seconds, rate, channels), rate, "WAV", "PCM_16")


def pcm_s16le(freq: float = 440.0, seconds: float = 1.0, rate: int = 16000) -> bytes:
    """Headerless 16-bit little-endian mono PCM."""
    return (sine(freq, seconds, rate)[:, 0] * 32767).astype("<i2").tobytes()


# The first bytes of each container we sniff, as PCM can begin with them by chance.
CONTAINER_MAGIC = {
    "wav": b"RIFF\xf8\x7c\x00\x00WAVE",
    "flac": b"fLaC\x00\x00\x00\x22",
    "ogg": b"OggS\x00\x02\x00\x00",
    "mp3-id3": b"ID3\x04\x00\x00\x00\x00\x00\x0a",
    "mp3-sync": b"\xff\xfb\x36\x00",  # an MPEG-1 layer III frame header
}


def pcm_with_magic(magic: bytes, seconds: float = 1.0, rate: int = 16000) -> bytes:
    """Noise as 16-bit little-endian mono PCM whose first bytes are *magic*.

    With this seed, libsndfile reads the MPEG-sync body as 72 ms of MP3: sniffed, it would
    lose most of its length.
    """
    rng = np.random.default_rng(9)
    data = bytearray((rng.standard_normal(round(seconds * rate)) * 3000).astype("<i2").tobytes())
    data[: len(magic)] = magic
    return bytes(data)
