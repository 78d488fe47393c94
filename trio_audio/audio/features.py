"""Loudness, spectral and silence features of decoded audio, and a 16-band spectrum (numpy only).

The work is split the way the pipeline runs it: :func:`downmix` and :func:`power_spectrum`
(the analyse stage's "transform" step), then :func:`analyze_spectrum` (its "metadata" step);
:func:`analyze` does all three. :func:`power_spectra` and :func:`analyze_spectra` do the same
for a group of chunks at once: chunks of the same shape and rate share one vectorised step
(numpy's per-call overhead, not its arithmetic, is most of the cost of a 100 ms chunk), and
each result equals the one-at-a-time one to float rounding. Definitions, all on float32
samples in full-scale units:

- ``rms_dbfs``: 20·log10(RMS) of the mono downmix (a full-scale sine reads -3.01 dBFS).
- ``peak_dbfs``: 20·log10(max |x|) over every channel (a full-scale sine reads 0 dBFS).
- The power spectrum: Hann-windowed real FFTs of the mono signal, ``nfft = min(8192, next
  power of two >= frames)`` (at least 64), Welch-averaged over frames overlapping by at least
  50% (at most 64 frames, evenly spread, for long chunks); a chunk shorter than ``nfft`` is one
  frame, windowed over its own length and zero-padded. Power is scaled so that the bin of a
  full-scale sine reads 1.0 (0 dB). ``fft_bin_hz = sample_rate / nfft``.
- ``dominant_hz``: the frequency of the strongest bin above DC, refined by a parabola through
  the log power of it and its neighbours.
- ``spectral_centroid_hz``: the power-weighted mean frequency.
- ``spectral_rolloff_hz``: the lowest bin frequency below which 85% of the power lies.
- ``spectral_flatness``: geometric over arithmetic mean of the power above DC, 0..1 (white
  noise about 0.5-0.9, a pure tone near 0).
- Digital silence has no spectrum: dominant, centroid, rolloff and flatness all read 0.0.
- ``zero_crossing_rate``: the fraction of adjacent mono sample pairs of which exactly one is
  negative, 0..1 (a sine of f Hz at rate r: about 2f/r).
- ``clipping_ratio``: the fraction of all samples (every channel) with |x| >= 0.999.
- ``silence_ratio``: the fraction of 20 ms mono frames whose RMS is below -60 dBFS; a partial
  frame at the end is left out, and a chunk shorter than one frame counts as one frame.
- The spectrum: 16 log-spaced bands from min(20 Hz, nyquist/100) to nyquist (``band_edges_hz``,
  17 of them; ``bands_hz`` are their geometric centres); ``band_db`` is the power of the signal
  in the band (the bins whose centre falls in it) in dBFS, on the same scale as ``rms_dbfs``:
  the bands' powers add up to the signal's mean square (less what lies below the lowest edge),
  so a 440 Hz sine of amplitude 0.5 reads about -9.03 dB in its band, like its RMS.

Levels never go below :data:`SILENCE_FLOOR_DBFS` (JSON has no -inf); a band with no FFT bin
reads the floor too.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Final

import attrs
import numpy as np
import numpy.typing as npt

SILENCE_FLOOR_DBFS: Final = -120.0  # reported for digital silence instead of -inf
SILENCE_THRESHOLD_DBFS: Final = -60.0
N_BANDS: Final = 16

MAX_NFFT: Final = 8192
MIN_NFFT: Final = 64
MAX_WELCH_FRAMES: Final = 64  # bounds the FFT cost of a long chunk
WELCH_BATCH: Final = 4  # frames transformed at once (a few hundred KB of scratch)
SILENCE_FRAME_S: Final = 0.020
CLIP_LEVEL: Final = 0.999
ROLLOFF_FRACTION: Final = 0.85
LOWEST_BAND_HZ: Final = 20.0
SILENT_POWER: Final = 1e-20  # total spectral power at or below this is silence
FLATNESS_EPSILON: Final = 1e-30

_FLOOR_POWER: Final = 10.0 ** (SILENCE_FLOOR_DBFS / 10)
_SILENCE_MEAN_SQUARE: Final = 10.0 ** (SILENCE_THRESHOLD_DBFS / 10)

Float32Array = npt.NDArray[np.float32]
Float64Array = npt.NDArray[np.float64]


@attrs.frozen
class Features:
    """Scalar features of one chunk (definitions in the module docstring)."""

    rms_dbfs: float
    peak_dbfs: float
    dominant_hz: float
    spectral_centroid_hz: float
    spectral_rolloff_hz: float
    spectral_flatness: float
    zero_crossing_rate: float
    clipping_ratio: float
    silence_ratio: float
    fft_bin_hz: float


@attrs.frozen
class Spectrum:
    """Band levels over 16 log-spaced bands up to nyquist."""

    bands_hz: list[float]  # N_BANDS geometric centres
    band_edges_hz: list[float]  # N_BANDS + 1 edges
    band_db: list[float]  # N_BANDS levels, dB relative to a full-scale sine


@attrs.frozen
class Analysis:
    """The features and the band spectrum of one chunk."""

    features: Features
    spectrum: Spectrum

    def to_dict(self) -> dict[str, dict[str, object]]:
        """Plain rounded floats, safe for JSON and msgpack (no numpy types, NaN or inf)."""
        f = self.features
        s = self.spectrum
        return {
            "features": {
                "rms_dbfs": _round(f.rms_dbfs, 3),
                "peak_dbfs": _round(f.peak_dbfs, 3),
                "dominant_hz": _round(f.dominant_hz, 3),
                "spectral_centroid_hz": _round(f.spectral_centroid_hz, 3),
                "spectral_rolloff_hz": _round(f.spectral_rolloff_hz, 3),
                "spectral_flatness": _round(f.spectral_flatness, 6),
                "zero_crossing_rate": _round(f.zero_crossing_rate, 6),
                "clipping_ratio": _round(f.clipping_ratio, 6),
                "silence_ratio": _round(f.silence_ratio, 6),
                "fft_bin_hz": _round(f.fft_bin_hz, 6),
            },
            "spectrum": {
                "bands_hz": list(_rounded(tuple(s.bands_hz))),
                "band_edges_hz": list(_rounded(tuple(s.band_edges_hz))),
                "band_db": [_round(v, 3) for v in s.band_db],
            },
        }


def _round(value: float, digits: int) -> float:
    return round(float(value), digits) if math.isfinite(value) else 0.0


@functools.lru_cache(maxsize=64)
def _rounded(values: tuple[float, ...]) -> list[float]:
    """The band centres and edges, rounded once per (rate, nfft) rather than per chunk."""
    return [_round(v, 3) for v in values]


@attrs.frozen(eq=False)
class PowerSpectrum:
    """Welch-averaged power per rfft bin (``nfft // 2 + 1`` bins); a full-scale sine's bin is 1."""

    power: Float64Array
    sample_rate: int
    nfft: int
    frames_averaged: int

    @property
    def fft_bin_hz(self) -> float:
        return self.sample_rate / self.nfft


def downmix(samples: npt.NDArray[np.floating]) -> Float32Array:
    """(frames, channels) to (frames,) mono by adding the columns and scaling (mono: no copy)."""
    if samples.ndim == 1:
        return np.asarray(samples, np.float32)
    channels = samples.shape[1]
    if channels == 1:
        return np.asarray(samples, np.float32).reshape(-1)
    mono: Float32Array = np.add(samples[:, 0], samples[:, 1], dtype=np.float32)
    for column in range(2, channels):
        mono += samples[:, column]
    mono *= np.float32(1.0 / channels)
    return mono


def analyze(samples: npt.NDArray[np.floating], sample_rate: int) -> Analysis:
    """Every feature and the band spectrum of (frames, channels) or (frames,) samples."""
    mono = downmix(samples)
    return analyze_spectrum(samples, mono, power_spectrum(mono, sample_rate))


def power_spectrum(mono: Float32Array, sample_rate: int) -> PowerSpectrum:
    """The Hann-windowed, Welch-averaged rfft power of a mono signal (see the module doc):
    a group of one for :func:`power_spectra`."""
    count = len(mono)
    if count == 0 or sample_rate <= 0:
        msg = f"need samples and a positive rate, got {count} frames at {sample_rate} Hz"
        raise ValueError(msg)
    return _power_rows(np.asarray(mono)[None], sample_rate)[0]


@functools.lru_cache(maxsize=64)
def _hann(length: int) -> tuple[Float64Array, float]:
    """A periodic Hann window and the factor that makes a full-scale sine's bin 1.0."""
    if length == 1:
        window = np.ones(1)
    else:
        window = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(length) / length)
    window.setflags(write=False)
    return window, 4.0 / float(window.sum()) ** 2


def analyze_spectrum(
    samples: npt.NDArray[np.floating], mono: Float32Array, spectrum: PowerSpectrum
) -> Analysis:
    """Features and band spectrum from the samples, their downmix and its power spectrum: a
    group of one for :func:`analyze_spectra`."""
    if len(mono) == 0:
        msg = "cannot analyze 0 frames"
        raise ValueError(msg)
    rows = _analyze_rows(
        np.asarray(samples)[None], np.asarray(mono)[None], spectrum.power[None], spectrum
    )
    return rows[0]


def _db(power: float) -> float:
    """10·log10 of a power ratio, floored at SILENCE_FLOOR_DBFS."""
    if power <= _FLOOR_POWER:
        return SILENCE_FLOOR_DBFS
    return 10.0 * math.log10(power)


@functools.lru_cache(maxsize=16)
def _bin_numbers(bins: int) -> Float64Array:
    numbers = np.arange(bins, dtype=np.float64)
    numbers.setflags(write=False)
    return numbers


@attrs.frozen
class _BandMap:
    """Which rfft bins fall in which band, for one (sample rate, nfft)."""

    edges: list[float]
    centres: list[float]
    first_bin: int
    band_of_bin: npt.NDArray[np.intp]  # band of bins first_bin, first_bin + 1, ...
    bins_per_band: Float64Array
    matrix: Float64Array  # (bins from first_bin, N_BANDS) ones where a bin is in a band


@functools.lru_cache(maxsize=32)
def _band_map(sample_rate: int, nfft: int) -> _BandMap:
    nyquist = sample_rate / 2
    lowest = min(LOWEST_BAND_HZ, nyquist / 100)
    edges = np.geomspace(lowest, nyquist, N_BANDS + 1)
    centres = np.sqrt(edges[:-1] * edges[1:])
    freqs = np.arange(nfft // 2 + 1) * (sample_rate / nfft)
    first_bin = int(np.searchsorted(freqs, lowest, side="left"))
    bands = np.searchsorted(edges, freqs[first_bin:], side="right") - 1
    bands = np.minimum(bands, N_BANDS - 1)  # nyquist itself belongs to the top band
    per_band = np.bincount(bands, minlength=N_BANDS).astype(np.float64)
    matrix = np.zeros((len(bands), N_BANDS))
    matrix[np.arange(len(bands)), bands] = 1.0  # band sums by one matmul
    for array in (bands, per_band, matrix):
        array.setflags(write=False)
    return _BandMap(
        edges=[float(e) for e in edges],
        centres=[float(c) for c in centres],
        first_bin=first_bin,
        band_of_bin=bands,
        bins_per_band=per_band,
        matrix=matrix,
    )


# -- groups of chunks: one vectorised step per shape -----------------------------------------


def same_key(keys: Sequence[object]) -> list[list[int]]:
    """Indices grouped by equal key, in first-seen order."""
    groups: dict[object, list[int]] = {}
    for index, key in enumerate(keys):
        groups.setdefault(key, []).append(index)
    return list(groups.values())


def power_spectra(
    monos: Sequence[Float32Array], sample_rates: Sequence[int]
) -> list[PowerSpectrum]:
    """:func:`power_spectrum` of each mono signal; those of one length and rate in one step."""
    out: list[PowerSpectrum | None] = [None] * len(monos)
    for group in same_key([(len(m), r) for m, r in zip(monos, sample_rates, strict=True)]):
        rate, count = sample_rates[group[0]], len(monos[group[0]])
        if count == 0 or rate <= 0:
            power_spectrum(monos[group[0]], rate)  # raises the error that says why
        stacked = np.stack([monos[i] for i in group])
        for i, power in zip(group, _power_rows(stacked, rate), strict=True):
            out[i] = power
    return [spectrum for spectrum in out if spectrum is not None]


def _power_rows(monos: Float32Array, sample_rate: int) -> list[PowerSpectrum]:
    """The power spectrum of each row of (n, count) *monos*, as :func:`power_spectrum` does."""
    count = monos.shape[1]
    nfft = min(MAX_NFFT, max(MIN_NFFT, 1 << (count - 1).bit_length()))
    if count <= nfft:
        window, scale = _hann(count)
        spec = np.fft.rfft(np.multiply(monos, window), nfft, axis=-1)
        power = np.square(spec.real)
        power += np.square(spec.imag)
        power *= scale
        n_frames = 1
    else:
        window, scale = _hann(nfft)
        hop = nfft // 2
        n_frames = min(MAX_WELCH_FRAMES, -(-(count - nfft) // hop) + 1)
        step = (count - nfft) // (n_frames - 1)
        frames = np.lib.stride_tricks.sliding_window_view(monos, nfft, axis=-1)
        power = np.zeros((monos.shape[0], nfft // 2 + 1))
        for start in range(0, n_frames, WELCH_BATCH):  # a few frames at a time: little scratch
            chosen = frames[:, start * step : min(n_frames, start + WELCH_BATCH) * step : step]
            part = np.fft.rfft(np.multiply(chosen, window), axis=-1)
            power += np.einsum("nij,nij->nj", part.real, part.real)
            power += np.einsum("nij,nij->nj", part.imag, part.imag)
        power *= scale / n_frames
    return [PowerSpectrum(row, sample_rate, nfft, n_frames) for row in power]


def analyze_spectra(
    samples: Sequence[npt.NDArray[np.floating]],
    monos: Sequence[Float32Array],
    spectra: Sequence[PowerSpectrum],
) -> list[Analysis]:
    """:func:`analyze_spectrum` of each chunk; chunks of one shape, rate and nfft in one step."""
    keys = [(s.shape, m.shape, p.sample_rate, p.nfft)
            for s, m, p in zip(samples, monos, spectra, strict=True)]  # fmt: skip
    out: list[Analysis | None] = [None] * len(samples)
    for group in same_key(keys):
        if len(monos[group[0]]) == 0:
            analyze_spectrum(samples[group[0]], monos[group[0]], spectra[group[0]])  # raises
        found = _analyze_rows(
            np.stack([np.asarray(samples[i]) for i in group]),
            np.stack([monos[i] for i in group]),
            np.stack([spectra[i].power for i in group]),
            spectra[group[0]],
        )
        for i, analysis in zip(group, found, strict=True):
            out[i] = analysis
    return [analysis for analysis in out if analysis is not None]


def _analyze_rows(
    samples: npt.NDArray[np.floating],
    monos: Float32Array,
    powers: Float64Array,
    like: PowerSpectrum,
) -> list[Analysis]:
    """:func:`analyze_spectrum` of each row (chunk) of stacked, equally shaped chunks."""
    n, count = monos.shape
    rate, bin_hz = like.sample_rate, like.fft_bin_hz
    flat = samples.reshape(n, -1)
    mean_square = np.einsum("ij,ij->i", monos, monos, dtype=np.float64) / count
    peak = np.maximum(flat.max(axis=1), -flat.min(axis=1)).astype(np.float64)
    negative = monos < 0
    crossings = np.count_nonzero(negative[:, 1:] != negative[:, :-1], axis=1)
    clipped = np.count_nonzero(np.abs(flat) >= CLIP_LEVEL, axis=1)
    silence = _silence_ratios(monos, rate)
    spectral = _spectral_rows(powers, bin_hz)
    bands = _band_map(rate, like.nfft)
    band_power = powers[:, bands.first_bin :] @ bands.matrix
    totals = powers.sum(axis=1)
    scales = np.where(totals > SILENT_POWER, mean_square / np.where(totals > 0, totals, 1), 0.0)
    levels = _db_rows(band_power * scales[:, None])
    levels[:, bands.bins_per_band == 0] = SILENCE_FLOOR_DBFS  # a band with no bin
    level_lists = levels.tolist()
    results = []
    for row in range(n):
        ms = float(mean_square[row])
        dominant, centroid, rolloff, flatness = spectral[row]
        features = Features(
            rms_dbfs=_db(ms),
            peak_dbfs=_db(float(peak[row]) ** 2),
            dominant_hz=dominant,
            spectral_centroid_hz=centroid,
            spectral_rolloff_hz=rolloff,
            spectral_flatness=flatness,
            zero_crossing_rate=int(crossings[row]) / (count - 1) if count > 1 else 0.0,
            clipping_ratio=int(clipped[row]) / flat.shape[1],
            silence_ratio=float(silence[row]),
            fft_bin_hz=bin_hz,
        )
        spectrum = Spectrum(list(bands.centres), list(bands.edges), level_lists[row])
        results.append(Analysis(features, spectrum))
    return results


def _db_rows(powers: Float64Array) -> Float64Array:
    """:func:`_db` of every element."""
    levels: Float64Array = np.where(
        powers <= _FLOOR_POWER,
        SILENCE_FLOOR_DBFS,
        10.0 * np.log10(np.maximum(powers, _FLOOR_POWER)),
    )
    return levels


def _spectral_rows(powers: Float64Array, bin_hz: float) -> list[tuple[float, float, float, float]]:
    """:func:`_spectral` of each row: dominant, centroid, rolloff, flatness (0.0 for silence)."""
    n, bins = powers.shape
    if bins < 2:
        return [(0.0, 0.0, 0.0, 0.0)] * n
    total = powers.sum(axis=1)
    above = powers[:, 1:]
    rows = np.arange(n)
    peak = np.argmax(above, axis=1) + 1
    offset = np.zeros(n)
    inner = peak < bins - 1
    if inner.any():
        at = np.minimum(peak, bins - 2)
        left, mid, right = (np.log(powers[rows, at + k] + FLATNESS_EPSILON) for k in (-1, 0, 1))
        curve = left - 2.0 * mid + right
        bent = inner & (curve < 0)
        safe = np.where(bent, curve, -1.0)
        offset = np.where(bent, np.clip(0.5 * (left - right) / safe, -0.5, 0.5), 0.0)
    dominant = (peak + offset) * bin_hz
    safe_total = np.where(total > 0, total, 1.0)
    centroid = (powers @ _bin_numbers(bins)) / safe_total * bin_hz
    rolloff_bin = np.count_nonzero(
        np.cumsum(powers, axis=1) < (ROLLOFF_FRACTION * total)[:, None], axis=1
    )
    rolloff = np.minimum(rolloff_bin, bins - 1) * bin_hz
    geometric = np.exp(np.mean(np.log(above + FLATNESS_EPSILON), axis=1))
    flatness = np.minimum(1.0, geometric / (above.mean(axis=1) + FLATNESS_EPSILON))
    out = []
    for row in range(n):
        if total[row] <= SILENT_POWER:
            out.append((0.0, 0.0, 0.0, 0.0))
        else:
            out.append((float(dominant[row]), float(centroid[row]), float(rolloff[row]),
                        float(flatness[row])))  # fmt: skip
    return out


def _silence_ratios(monos: Float32Array, sample_rate: int) -> Float64Array:
    """:func:`_silence_ratio` of each row."""
    n, count = monos.shape
    frame = max(1, round(SILENCE_FRAME_S * sample_rate))
    n_frames = count // frame
    if n_frames == 0:
        mean_square = np.einsum("ij,ij->i", monos, monos) / count
        return np.where(mean_square < _SILENCE_MEAN_SQUARE, 1.0, 0.0)
    frames = monos[:, : n_frames * frame].reshape(n, n_frames, frame)
    energies = np.einsum("nij,nij->ni", frames, frames)
    silent = np.count_nonzero(energies < _SILENCE_MEAN_SQUARE * frame, axis=1)
    ratios: Float64Array = silent / n_frames
    return ratios
