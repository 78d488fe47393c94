"""The audio a bench sends: distinct, deterministic chunks (so every checksum tells them apart).

Each body is a tone plus a little noise, different per index, made with numpy alone. WAV bodies
carry a 44-byte RIFF header; WebSocket frames are headerless 16-bit PCM (``pcm_s16le``).
"""

from __future__ import annotations

import hashlib
import struct

import numpy as np

RATE = 16000


def pcm16(seconds: float, index: int, rate: int = RATE) -> bytes:
    """*seconds* of 16-bit mono PCM: a tone whose pitch and noise depend on *index*."""
    frames = max(1, round(seconds * rate))
    rng = np.random.default_rng(index)
    t = np.arange(frames) / rate
    tone = 0.3 * np.sin(2 * np.pi * (220.0 + 37.0 * index) * t)
    signal = tone + 0.02 * rng.standard_normal(frames)
    return (np.clip(signal, -1, 1) * 32767).astype("<i2").tobytes()


def wav(seconds: float, index: int, rate: int = RATE) -> bytes:
    """A mono 16-bit PCM WAV file of *seconds* (see :func:`pcm16`)."""
    data = pcm16(seconds, index, rate)
    header = struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF", 36 + len(data), b"WAVE", b"fmt ", 16, 1, 1, rate, rate * 2, 2, 16,
        b"data", len(data),
    )  # fmt: skip
    return header + data


def checksum(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()
