"""Features and band spectrum of generated signals with known answers."""

from __future__ import annotations

import json
import math

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from trio_audio.audio.features import (
    MAX_WELCH_FRAMES,
    N_BANDS,
    SILENCE_FLOOR_DBFS,
    Analysis,
    analyze,
    analyze_spectra,
    analyze_spectrum,
    downmix,
    power_spectra,
    power_spectrum,
)

Float32Array = npt.NDArray[np.float32]


def sine(
    freq: float, seconds: float = 1.0, rate: int = 16000, amplitude: float = 1.0
) -> Float32Array:
    t = np.arange(round(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def noise(seconds: float = 1.0, rate: int = 16000, seed: int = 0) -> Float32Array:
    return np.random.default_rng(seed).uniform(-0.5, 0.5, round(seconds * rate)).astype(np.float32)


def test_sine_440_at_16k_mono() -> None:
    features = analyze(sine(440)[:, None], 16000).features
    assert features.fft_bin_hz == 16000 / 8192
    assert abs(features.dominant_hz - 440) <= features.fft_bin_hz
    assert features.rms_dbfs == pytest.approx(-3.0103, abs=0.01)
    assert features.peak_dbfs == pytest.approx(0.0, abs=0.01)
    assert features.silence_ratio == 0.0
    assert features.spectral_flatness < 0.01


def test_sine_440_at_48k_stereo() -> None:
    left, right = sine(440, rate=48000), sine(440, rate=48000, amplitude=0.5)
    features = analyze(np.stack([left, right], axis=1), 48000).features
    assert features.fft_bin_hz == 48000 / 8192
    assert abs(features.dominant_hz - 440) <= features.fft_bin_hz
    assert features.peak_dbfs == pytest.approx(0.0, abs=0.01)  # peak over every channel
    assert features.rms_dbfs == pytest.approx(20 * math.log10(0.75 / math.sqrt(2)), abs=0.01)


def test_dominant_is_interpolated_between_bins() -> None:
    features = analyze(sine(1234.5), 16000).features
    assert features.dominant_hz == pytest.approx(1234.5, abs=0.25 * features.fft_bin_hz)


def test_half_amplitude() -> None:
    features = analyze(sine(440, amplitude=0.5), 16000).features
    assert features.peak_dbfs == pytest.approx(-6.0206, abs=0.01)
    assert features.rms_dbfs == pytest.approx(-9.0309, abs=0.01)


def test_silence() -> None:
    analysis = analyze(np.zeros((16000, 2), np.float32), 16000)
    features = analysis.features
    assert features.silence_ratio == 1.0
    assert features.rms_dbfs == SILENCE_FLOOR_DBFS
    assert features.peak_dbfs == SILENCE_FLOOR_DBFS
    assert features.dominant_hz == 0.0
    assert features.spectral_centroid_hz == 0.0
    assert features.spectral_rolloff_hz == 0.0
    assert features.spectral_flatness == 0.0
    assert features.zero_crossing_rate == 0.0
    assert features.clipping_ratio == 0.0
    assert analysis.spectrum.band_db == [SILENCE_FLOOR_DBFS] * N_BANDS


def test_flatness_of_noise_and_tone() -> None:
    assert analyze(noise(), 16000).features.spectral_flatness > 0.6
    assert analyze(sine(1000), 16000).features.spectral_flatness < 0.01


def test_centroid_of_a_tone() -> None:
    assert analyze(sine(1000), 16000).features.spectral_centroid_hz == pytest.approx(1000, rel=0.01)
    # Two equal tones: the centroid sits between them.
    mix = sine(500, amplitude=0.4) + sine(1500, amplitude=0.4)
    assert analyze(mix, 16000).features.spectral_centroid_hz == pytest.approx(1000, rel=0.02)


def test_rolloff_of_low_passed_noise() -> None:
    spectrum = np.fft.rfft(noise(2.0))
    spectrum[np.fft.rfftfreq(32000, 1 / 16000) > 2000] = 0  # brick-wall low pass at 2 kHz
    low_passed = np.fft.irfft(spectrum, 32000).astype(np.float32)
    features = analyze(low_passed, 16000).features
    assert features.spectral_rolloff_hz == pytest.approx(0.85 * 2000, rel=0.05)
    assert analyze(noise(2.0), 16000).features.spectral_rolloff_hz == pytest.approx(
        0.85 * 8000, rel=0.05
    )


def test_zero_crossing_rate_of_a_sine() -> None:
    features = analyze(sine(440, amplitude=0.5), 16000).features
    assert features.zero_crossing_rate == pytest.approx(2 * 440 / 16000, rel=0.01)


def test_clipping_ratio_is_the_fraction_clipped() -> None:
    samples = np.stack([sine(300, amplitude=0.5), sine(200, amplitude=0.5)], axis=1)
    samples[:100, 0] = 1.0
    samples[1000:1050, 1] = -1.0
    samples[2000:2010, 1] = 0.9995
    features = analyze(samples, 16000).features
    assert features.clipping_ratio == pytest.approx(160 / samples.size)


def test_silence_ratio_half_and_half() -> None:
    samples = np.concatenate([np.zeros(8000, np.float32), sine(440, 0.5)])
    assert analyze(samples, 16000).features.silence_ratio == pytest.approx(0.5)
    # Quiet but above -60 dBFS is not silence; below it is.
    assert analyze(sine(440, amplitude=0.01), 16000).features.silence_ratio == 0.0
    assert analyze(sine(440, amplitude=0.001), 16000).features.silence_ratio == 1.0


def test_short_chunks() -> None:
    features = analyze(sine(440, seconds=0.005)[:, None], 16000).features  # 80 frames
    assert features.silence_ratio == 0.0  # shorter than one frame: one frame, not silent
    assert analyze(np.zeros(10, np.float32), 16000).features.silence_ratio == 1.0
    one = analyze(np.full((1, 2), 0.5, np.float32), 8000)
    assert one.features.peak_dbfs == pytest.approx(-6.0206, abs=0.01)
    json.dumps(one.to_dict(), allow_nan=False)


def test_band_db_peaks_in_the_tones_band() -> None:
    for freq, rate in [(440, 16000), (3000, 16000), (100, 48000), (12000, 44100)]:
        spectrum = analyze(sine(freq, rate=rate), rate).spectrum
        assert len(spectrum.bands_hz) == N_BANDS
        assert len(spectrum.band_edges_hz) == N_BANDS + 1
        assert spectrum.band_edges_hz[-1] == rate / 2
        band = int(np.argmax(spectrum.band_db))
        assert spectrum.band_edges_hz[band] <= freq < spectrum.band_edges_hz[band + 1]
        assert max(spectrum.band_db) <= 0.0
    assert analyze(sine(440, rate=48000), 48000).spectrum.band_edges_hz[0] == 20.0
    assert analyze(sine(440, rate=8000), 8000).spectrum.band_edges_hz[0] == 20.0
    assert analyze(sine(100, rate=1000), 1000).spectrum.band_edges_hz[0] == 5.0


def test_band_db_is_the_power_in_the_band_on_the_rms_scale() -> None:
    # A tone's power sits in its band: the band reads the tone's level (here -9.03 dBFS).
    for freq, rate, seconds in [(440, 16000, 1.0), (1000, 48000, 0.05), (3000, 8000, 3.0)]:
        analysis = analyze(sine(freq, seconds=seconds, rate=rate, amplitude=0.5), rate)
        assert max(analysis.spectrum.band_db) == pytest.approx(analysis.features.rms_dbfs, abs=0.2)
    # Two tones 20 dB apart land in their bands 20 dB apart, and add up to the signal's power.
    t = np.arange(16000) / 16000
    mix = (0.5 * np.sin(2 * np.pi * 200 * t) + 0.05 * np.sin(2 * np.pi * 4000 * t)).astype("f4")
    analysis = analyze(mix, 16000)
    levels = sorted(analysis.spectrum.band_db, reverse=True)
    assert levels[0] - levels[1] == pytest.approx(20.0, abs=0.5)
    total = 10 * np.log10(sum(10 ** (db / 10) for db in analysis.spectrum.band_db))
    assert total == pytest.approx(analysis.features.rms_dbfs, abs=0.05)


def test_a_full_scale_tone_on_a_bin_reads_0_db_in_its_bin() -> None:
    for seconds in (1.0, 0.3):  # Welch-averaged, and one zero-padded frame
        spectrum = power_spectrum(sine(225 * 16000 / 8192, seconds), 16000)
        assert spectrum.nfft == 8192
        assert float(spectrum.power.max()) == pytest.approx(1.0, rel=0.02)


def test_long_chunks_average_a_bounded_number_of_frames() -> None:
    assert power_spectrum(noise(60.0), 16000).frames_averaged == MAX_WELCH_FRAMES
    assert power_spectrum(noise(1.0), 16000).frames_averaged == 3


def test_downmix() -> None:
    mono = sine(440)
    assert downmix(mono) is mono
    column = mono[:, None].copy()
    assert np.shares_memory(downmix(column), column)
    stereo = np.stack([mono, np.zeros_like(mono)], axis=1)
    np.testing.assert_allclose(downmix(stereo), mono / 2, atol=1e-7)
    six = np.repeat(mono[:, None], 6, axis=1)
    mixed = downmix(six)
    assert mixed.dtype == np.float32
    np.testing.assert_allclose(mixed, mono, atol=1e-6)


def test_pipeline_split_matches_analyze() -> None:
    samples = np.stack([sine(440, rate=48000), noise(rate=48000)], axis=1)
    mono = downmix(samples)
    split = analyze_spectrum(samples, mono, power_spectrum(mono, 48000))
    assert split == analyze(samples, 48000)


CHUNK_JSON_FEATURES = {
    "rms_dbfs",
    "peak_dbfs",
    "dominant_hz",
    "spectral_centroid_hz",
    "spectral_rolloff_hz",
    "spectral_flatness",
    "zero_crossing_rate",
    "clipping_ratio",
    "silence_ratio",
}


def check_dict(analysis: Analysis) -> None:
    body = analysis.to_dict()
    assert set(body["features"]) >= CHUNK_JSON_FEATURES
    assert {"bands_hz", "band_db"} <= set(body["spectrum"])
    assert json.loads(json.dumps(body, allow_nan=False)) == body
    for value in body["features"].values():
        assert type(value) is float
    for values in body["spectrum"].values():
        assert isinstance(values, list)
        assert all(type(v) is float for v in values)


def test_to_dict_is_plain_json() -> None:
    check_dict(analyze(sine(440), 16000))
    check_dict(analyze(np.zeros(100, np.float32), 16000))
    body = analyze(sine(440), 16000).to_dict()
    assert body["features"]["rms_dbfs"] == -3.01
    assert body["features"]["fft_bin_hz"] == 1.953125


@settings(max_examples=60, deadline=None)
@given(
    samples=hnp.arrays(
        np.float32,
        st.tuples(st.integers(1, 3000), st.integers(1, 3)),
        elements=st.floats(-1.0, 1.0, width=32),
    ),
    rate=st.sampled_from([1000, 8000, 16000, 44100, 48000]),
)
def test_any_signal_gives_finite_features_in_range(samples: Float32Array, rate: int) -> None:
    analysis = analyze(samples, rate)
    f = analysis.features
    nyquist = rate / 2
    assert SILENCE_FLOOR_DBFS <= f.rms_dbfs <= f.peak_dbfs + 1e-4 <= 1e-4
    for ratio in (f.spectral_flatness, f.zero_crossing_rate, f.clipping_ratio, f.silence_ratio):
        assert 0.0 <= ratio <= 1.0
    for freq in (f.dominant_hz, f.spectral_centroid_hz, f.spectral_rolloff_hz):
        assert 0.0 <= freq <= nyquist
    assert all(SILENCE_FLOOR_DBFS <= db <= 10.0 for db in analysis.spectrum.band_db)
    check_dict(analysis)


def features_one_by_one_and_together(
    chunks: list[Float32Array], rates: list[int]
) -> tuple[list[Analysis], list[Analysis]]:
    monos = [downmix(chunk) for chunk in chunks]
    alone = [
        analyze_spectrum(chunk, mono, power_spectrum(mono, rate))
        for chunk, mono, rate in zip(chunks, monos, rates, strict=True)
    ]
    together = analyze_spectra(chunks, monos, power_spectra(monos, rates))
    return alone, together


def assert_same(alone: list[Analysis], together: list[Analysis]) -> None:
    assert len(alone) == len(together)
    for one, batched in zip(alone, together, strict=True):
        want, got = one.to_dict(), batched.to_dict()
        for key, value in want["features"].items():
            assert got["features"][key] == pytest.approx(value, abs=1e-3), key
        assert got["spectrum"]["bands_hz"] == want["spectrum"]["bands_hz"]
        assert got["spectrum"]["band_edges_hz"] == want["spectrum"]["band_edges_hz"]
        assert got["spectrum"]["band_db"] == pytest.approx(want["spectrum"]["band_db"], abs=1e-3)


def test_a_group_of_chunks_gets_what_each_chunk_gets_alone() -> None:
    """Tones, noise, silence, clipping, stereo; 100 ms, 1 s (Welch) and odd lengths, mixed
    rates: the groups of one shape share a step, the rest go one by one, all in order."""
    tones = [sine(f, 0.1, amplitude=a) for f, a in ((100, 0.5), (440, 1.0), (1234.5, 0.2))]
    clipped = np.clip(sine(300, 0.1, amplitude=2.0), -1, 1)
    chunks: list[Float32Array] = [
        *tones,
        noise(0.1, seed=1),
        np.zeros(1600, np.float32),
        clipped,
        sine(440, 1.0),
        noise(1.0, seed=2),
        np.zeros(16000, np.float32),
        noise(0.0371, seed=3),
        np.stack([sine(440, 0.1, 48000), noise(0.1, 48000, seed=4)], axis=1),
        np.stack([noise(0.1, 48000, seed=5), noise(0.1, 48000, seed=6)], axis=1),
        np.zeros(1, np.float32),
    ]
    rates = [16000] * 10 + [48000, 48000, 16000]
    alone, together = features_one_by_one_and_together(chunks, rates)
    assert_same(alone, together)
    assert together[0].to_dict() == alone[0].to_dict()  # to the digit, in practice


@settings(max_examples=30, deadline=None)
@given(
    group=st.lists(
        hnp.arrays(np.float32, st.just(800), elements=st.floats(-1.0, 1.0, width=32)),
        min_size=2,
        max_size=6,
    )
)
def test_any_group_gets_what_each_chunk_gets_alone(group: list[Float32Array]) -> None:
    alone, together = features_one_by_one_and_together(group, [8000] * len(group))
    assert_same(alone, together)
