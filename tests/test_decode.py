"""Decoding real audio made on the spot: WAV (soundfile, ``wave``, by hand), FLAC, Ogg, MP3, raw."""

from __future__ import annotations

import io
import struct
import wave

import numpy as np
import numpy.typing as npt
import pytest
import soundfile as sf

from trio_audio.audio.decode import (
    MAX_CHANNELS,
    MAX_SAMPLE_RATE,
    RAW_ENCODINGS,
    Decoded,
    RawFormat,
    decode,
    parse_media_type,
    raw_format_from,
    sniff_container,
)
from trio_audio.errors import (
    InvalidAudio,
    InvalidField,
    MissingField,
    PayloadTooLarge,
    UnsupportedMediaType,
)

from .audio_samples import CONTAINER_MAGIC, pcm_with_magic

Float32Array = npt.NDArray[np.float32]


def tones(seconds: float = 0.25, rate: int = 16000, channels: int = 1) -> Float32Array:
    """(frames, channels) float32: channel c is a sine of 220·(c+1) Hz at amplitude 0.8."""
    t = np.arange(round(seconds * rate)) / rate
    columns = [0.8 * np.sin(2 * np.pi * 220 * (c + 1) * t) for c in range(channels)]
    return np.stack(columns, axis=1).astype(np.float32)


def sf_bytes(samples: Float32Array, rate: int, fmt: str, subtype: str | None = None) -> bytes:
    out = io.BytesIO()
    sf.write(out, samples, rate, format=fmt, subtype=subtype)
    return out.getvalue()


def wave_bytes(frames: bytes, sampwidth: int, channels: int, rate: int) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as writer:
        writer.setnchannels(channels)
        writer.setsampwidth(sampwidth)
        writer.setframerate(rate)
        writer.writeframes(frames)
    return out.getvalue()


def make_wav(
    data: bytes,
    *,
    tag: int = 1,
    channels: int = 1,
    rate: int = 16000,
    bits: int = 16,
    block_align: int | None = None,
    subformat: int | None = None,
    fmt_body: bytes | None = None,
    before: bytes = b"",
    data_size: int | None = None,
    with_fmt: bool = True,
    with_data: bool = True,
    data_first: bool = False,
    riff_size: int | None = None,
) -> bytes:
    """A RIFF/WAVE file built by hand, with whatever mistakes a test asks for."""
    align = channels * bits // 8 if block_align is None else block_align
    if fmt_body is None:
        fmt_body = struct.pack("<HHIIHH", tag, channels, rate, rate * align, align, bits)
        if subformat is not None:
            guid_tail = b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"
            fmt_body += struct.pack("<HHI", 22, bits, 0) + struct.pack("<H", subformat) + guid_tail
    fmt_chunk = b"fmt " + struct.pack("<I", len(fmt_body)) + fmt_body
    size = len(data) if data_size is None else data_size
    data_chunk = b"data" + struct.pack("<I", size) + data + (b"\x00" if len(data) % 2 else b"")
    chunks = [before]
    if with_fmt:
        chunks.append(fmt_chunk)
    if with_data:
        chunks.insert(1 if data_first else len(chunks), data_chunk)
    body = b"WAVE" + b"".join(chunks)
    return b"RIFF" + struct.pack("<I", len(body) if riff_size is None else riff_size) + body


def pcm16(samples: Float32Array) -> bytes:
    return np.clip(np.round(samples * 2**15), -(2**15), 2**15 - 1).astype("<i2").tobytes()


def check(decoded: Decoded, container: str, encoding: str, rate: int, channels: int) -> None:
    assert (decoded.container, decoded.encoding) == (container, encoding)
    assert (decoded.sample_rate, decoded.channels) == (rate, channels)
    assert decoded.samples.dtype == np.float32
    assert decoded.samples.flags.c_contiguous
    assert decoded.samples.shape == (decoded.frames, channels)
    assert decoded.duration_ms == pytest.approx(decoded.frames * 1000 / rate)


# -- WAV ----------------------------------------------------------------------------------

WAV_SUBTYPES = [
    ("PCM_U8", "pcm_u8", 1 / 128),
    ("PCM_16", "pcm_s16le", 2**-15),
    ("PCM_24", "pcm_s24le", 2**-23),
    ("PCM_32", "pcm_s32le", 1e-7),
    ("FLOAT", "pcm_f32le", 0.0),
    ("DOUBLE", "pcm_f64le", 1e-7),
]


@pytest.mark.parametrize(("subtype", "encoding", "tolerance"), WAV_SUBTYPES)
@pytest.mark.parametrize("channels", [1, 2, 6, 8])
@pytest.mark.parametrize("fmt", ["WAV", "WAVEX"])
def test_wav_from_soundfile(
    subtype: str, encoding: str, tolerance: float, channels: int, fmt: str
) -> None:
    source = tones(0.1, 22050, channels)
    data = sf_bytes(source, 22050, fmt, subtype)
    if fmt == "WAVEX":
        assert data[20:22] == b"\xfe\xff"  # really WAVE_FORMAT_EXTENSIBLE
    decoded = decode(data, content_type="audio/wav")
    check(decoded, "wav", encoding, 22050, channels)
    assert decoded.frames == len(source)
    np.testing.assert_allclose(decoded.samples, source, rtol=0, atol=tolerance + 1e-7)


@pytest.mark.parametrize(
    ("sampwidth", "dtype", "encoding", "scale"),
    [
        (1, "u1", "pcm_u8", None),
        (2, "<i2", "pcm_s16le", 2**15),
        (3, None, "pcm_s24le", 2**23),
        (4, "<i4", "pcm_s32le", 2**31),
    ],
)
@pytest.mark.parametrize("channels", [1, 2, 8])
def test_wav_from_wave_module_exact(
    sampwidth: int, dtype: str | None, encoding: str, scale: int | None, channels: int
) -> None:
    rng = np.random.default_rng(sampwidth * 10 + channels)
    bits = 8 * sampwidth
    if scale is None:  # unsigned 8-bit, centred on 128
        ints = rng.integers(0, 256, size=(500, channels))
        expected = (ints - 128) / 128
        frames = ints.astype("u1").tobytes()
    else:
        ints = rng.integers(-(2 ** (bits - 1)), 2 ** (bits - 1), size=(500, channels))
        ints[0, 0], ints[1, 0] = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1  # both extremes
        expected = ints / scale
        if dtype is None:  # 24-bit little-endian, three bytes a sample
            frames = (ints.astype("<i4").view(np.uint8).reshape(-1, 4)[:, :3]).tobytes()
        else:
            frames = ints.astype(dtype).tobytes()
    decoded = decode(wave_bytes(frames, sampwidth, channels, 8000))
    check(decoded, "wav", encoding, 8000, channels)
    np.testing.assert_allclose(decoded.samples, expected, rtol=1e-7, atol=0)
    assert decoded.samples.min() >= -1.0
    assert decoded.samples.max() <= 1.0  # int32 max rounds to 1.0 in float32


def test_wav_extensible_by_hand_24_in_32_and_float() -> None:
    source = tones(0.05, 16000, 3)
    ints = np.round(source * 2**23).astype("<i4") << 8  # 24 valid bits, left-justified
    data = make_wav(ints.tobytes(), tag=0xFFFE, channels=3, bits=32, subformat=1)
    decoded = decode(data)
    check(decoded, "wav", "pcm_s32le", 16000, 3)
    np.testing.assert_allclose(decoded.samples, source, atol=2**-23)
    floats = make_wav(source.astype("<f4").tobytes(), tag=0xFFFE, channels=3, bits=32, subformat=3)
    assert np.array_equal(decode(floats).samples, source)


def test_wav_tolerates_odd_chunks_wrong_riff_size_and_streaming_size() -> None:
    source = tones(0.05)
    odd = b"LIST" + struct.pack("<I", 3) + b"abc" + b"\x00"  # odd size, one pad byte
    data = make_wav(pcm16(source), before=odd, riff_size=0)
    assert np.allclose(decode(data).samples, source, atol=2**-15)
    streamed = make_wav(pcm16(source), data_size=0xFFFFFFFF, riff_size=0xFFFFFFFF)
    assert decode(streamed).frames == len(source)


def test_wav_float_with_nan_is_invalid() -> None:
    samples = tones(0.01).astype("<f4")
    samples[3, 0] = np.nan
    data = make_wav(samples.tobytes(), tag=3, bits=32)
    with pytest.raises(InvalidAudio, match="NaN"):
        decode(data)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"channels": 0, "block_align": 2}, "0 channels"),
        ({"channels": 9}, "9 channels"),
        ({"rate": 0}, "sample rate 0 Hz"),
        ({"rate": MAX_SAMPLE_RATE + 1}, "sample rate 384001 Hz"),
        ({"block_align": 3}, "block_align is 3 but 1 channel"),
        ({"bits": 12, "block_align": 2}, "12 bits per sample"),
        ({"tag": 3, "bits": 16}, "float with 16 bits"),
        ({"fmt_body": b"\x01\x00\x01\x00"}, "fmt chunk is 4 bytes"),
        ({"tag": 0xFFFE}, "WAVE_FORMAT_EXTENSIBLE fmt chunk is 16 bytes"),
        ({"with_data": False}, "no data chunk"),
        ({"with_fmt": False, "with_data": False}, "no fmt chunk"),
        ({"data_first": True}, "data chunk comes before any fmt chunk"),
    ],
)
def test_wav_bad_headers(kwargs: dict[str, object], match: str) -> None:
    data = make_wav(pcm16(tones(0.01)), **kwargs)  # type: ignore[arg-type]
    with pytest.raises(InvalidAudio, match=match):
        decode(data, content_type="audio/wav")


def test_wav_truncated_data_says_declared_vs_present() -> None:
    data = make_wav(pcm16(tones(0.1)))  # 3200 bytes of samples
    with pytest.raises(InvalidAudio, match="declares 3200 bytes but only 1000 are present") as err:
        decode(data[: 44 + 1000])
    assert err.value.status == 422


def test_wav_data_not_whole_frames() -> None:
    data = make_wav(pcm16(tones(0.01, channels=2))[:-2], channels=2)
    with pytest.raises(InvalidAudio, match="not a whole number of 4-byte frames"):
        decode(data)


def test_wav_zero_frames() -> None:
    with pytest.raises(InvalidAudio, match="0 frames"):
        decode(make_wav(b""))


@pytest.mark.parametrize("subtype", ["ALAW", "ULAW", "IMA_ADPCM"])
def test_wav_compressed_codecs_unsupported(subtype: str) -> None:
    data = sf_bytes(tones(0.05), 8000, "WAV", subtype)
    with pytest.raises(UnsupportedMediaType, match="is not supported") as err:
        decode(data)
    assert err.value.status == 415


# -- FLAC, Ogg, MP3 -------------------------------------------------------------------------


@pytest.mark.parametrize("subtype", ["PCM_16", "PCM_24"])
@pytest.mark.parametrize("channels", [1, 2, 6])
def test_flac(subtype: str, channels: int) -> None:
    source = tones(0.2, 44100, channels)
    decoded = decode(sf_bytes(source, 44100, "FLAC", subtype), content_type="audio/flac")
    check(decoded, "flac", "flac", 44100, channels)
    assert decoded.frames == len(source)
    np.testing.assert_allclose(decoded.samples, source, atol=2**-15)


def rms(x: npt.NDArray[np.float32]) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


@pytest.mark.parametrize(
    ("fmt", "subtype", "rate", "container", "encoding"),
    [
        ("OGG", "VORBIS", 16000, "ogg", "vorbis"),
        ("OGG", "OPUS", 48000, "ogg", "opus"),
        ("MP3", None, 16000, "mp3", "mp3"),
        ("MP3", None, 44100, "mp3", "mp3"),
    ],
)
@pytest.mark.parametrize("channels", [1, 2])
def test_lossy(
    fmt: str, subtype: str | None, rate: int, container: str, encoding: str, channels: int
) -> None:
    source = tones(1.0, rate, channels)
    decoded = decode(sf_bytes(source, rate, fmt, subtype), content_type="audio/ogg")
    check(decoded, container, encoding, rate, channels)
    assert abs(decoded.frames - len(source)) <= rate // 10
    for column in range(channels):  # same level and same tone per channel, channel order kept
        assert rms(decoded.samples[:, column]) == pytest.approx(rms(source[:, column]), rel=0.1)
        spectrum = np.abs(np.fft.rfft(decoded.samples[:, column]))
        peak_hz = np.argmax(spectrum) * rate / len(decoded.samples)
        assert peak_hz == pytest.approx(220 * (column + 1), abs=3)


def test_mp3_with_id3_tag() -> None:
    mp3 = sf_bytes(tones(0.5), 16000, "MP3")
    tag = b"ID3\x04\x00\x00" + bytes([0, 0, 0, 10]) + b"TIT2" + bytes(6)  # a 10-byte tag body
    assert sniff_container(tag + mp3) == "mp3"
    decoded = decode(tag + mp3, content_type="application/octet-stream")
    check(decoded, "mp3", "mp3", 16000, 1)


def test_container_beats_content_type() -> None:
    flac = sf_bytes(tones(0.1), 16000, "FLAC")
    assert decode(flac, content_type="audio/wav").container == "flac"
    wav = sf_bytes(tones(0.1), 16000, "WAV", "PCM_16")
    assert decode(wav, content_type="text/plain").container == "wav"
    # Declared raw PCM is taken at its word, even when the bytes are a whole WAV file.
    decoded = decode(wav, content_type="audio/L16;rate=8000", raw=RawFormat("pcm_s16be", 8000, 2))
    check(decoded, "raw", "pcm_s16be", 8000, 2)
    assert decoded.frames == len(wav) // 4


def test_truncated_flac() -> None:
    flac = sf_bytes(tones(1.0), 16000, "FLAC")
    for cut in (len(flac) // 2, 60, 10):
        with pytest.raises(InvalidAudio, match="FLAC"):
            decode(flac[:cut])


def test_truncated_mp3_and_ogg() -> None:
    for fmt, subtype in (("MP3", None), ("OGG", "VORBIS")):
        data = sf_bytes(tones(1.0), 16000, fmt, subtype)
        with pytest.raises(InvalidAudio):
            decode(data[:100])
    # An MP3 cut in half still decodes what is there.
    mp3 = sf_bytes(tones(1.0), 16000, "MP3")
    assert 0 < decode(mp3[: len(mp3) // 2]).frames < 16000


def test_flac_of_unknown_length_is_read_to_the_end() -> None:
    flac = bytearray(sf_bytes(tones(0.5), 16000, "FLAC"))
    # STREAMINFO total samples (36 bits at bytes 21..25 of the file) = 0: "unknown".
    flac[21] &= 0xF0
    flac[22:26] = bytes(4)
    decoded = decode(bytes(flac))
    assert decoded.frames == 8000
    with pytest.raises(PayloadTooLarge, match=r"more than 0\.25 s, over the 0\.25 s limit"):
        decode(bytes(flac), max_duration_s=0.25)


# -- limits ----------------------------------------------------------------------------------


def test_max_frames_wav() -> None:
    wav = sf_bytes(tones(2.0), 16000, "WAV", "PCM_16")
    assert decode(wav, max_frames=32000).frames == 32000
    with pytest.raises(PayloadTooLarge, match="decoded audio is 2 s, over the 1 s limit") as err:
        decode(wav, max_frames=16000)
    assert err.value.status == 413
    with pytest.raises(PayloadTooLarge, match=r"over the 1\.5 s limit"):
        decode(wav, max_duration_s=1.5)


def test_flac_bomb_is_refused_from_its_header() -> None:
    silence = np.zeros((16000 * 600, 1), np.float32)  # ten minutes
    bomb = sf_bytes(silence, 16000, "FLAC")
    assert len(bomb) < 100_000
    with pytest.raises(PayloadTooLarge, match="decoded audio is 600 s, over the 60 s limit"):
        decode(bomb, max_frames=16000 * 60)
    with pytest.raises(PayloadTooLarge, match="600 s"):
        decode(bomb, max_duration_s=30)


def test_max_frames_raw_and_lossy() -> None:
    raw = RawFormat("pcm_s16le", 16000, 1)
    with pytest.raises(PayloadTooLarge):
        decode(pcm16(tones(1.0)), raw=raw, max_frames=1000)
    with pytest.raises(PayloadTooLarge):
        decode(sf_bytes(tones(1.0), 16000, "OGG", "VORBIS"), max_duration_s=0.5)


# -- raw PCM -------------------------------------------------------------------------------


def encode_raw(samples: Float32Array, encoding: str) -> tuple[bytes, float]:
    """*samples* as headerless PCM of *encoding*, and the quantisation step."""
    if encoding == "pcm_f32le":
        return samples.astype("<f4").tobytes(), 0.0
    bits, offset, dtype = {
        "pcm_u8": (8, 128, "u1"),
        "pcm_s16le": (16, 0, "<i2"),
        "pcm_s16be": (16, 0, ">i2"),
        "pcm_s24le": (24, 0, "<i4"),
        "pcm_s32le": (32, 0, "<i4"),
    }[encoding]
    scale = 2 ** (bits - 1)
    ints = np.clip(np.round(samples.astype(np.float64) * scale), -scale, scale - 1) + offset
    data = ints.astype(dtype)
    if bits == 24:  # three little-endian bytes a sample
        return data.view(np.uint8).reshape(-1, 4)[:, :3].tobytes(), 1 / scale
    return data.tobytes(), 1 / scale


@pytest.mark.parametrize("encoding", RAW_ENCODINGS)
@pytest.mark.parametrize("channels", [1, 2, 5])
def test_raw_round_trip(encoding: str, channels: int) -> None:
    source = tones(0.05, 8000, channels)
    source[0] = -1.0  # both extremes survive
    source[1] = 1.0
    data, step = encode_raw(source, encoding)
    decoded = decode(data, raw=RawFormat(encoding, 8000, channels))
    check(decoded, "raw", encoding, 8000, channels)
    assert decoded.frames == len(source)
    np.testing.assert_allclose(decoded.samples, source, atol=step + 1e-7)


def test_raw_odd_length_is_truncated() -> None:
    with pytest.raises(InvalidAudio, match="frames of 4 bytes, but 4001 bytes leave 1 over"):
        decode(bytes(4001), raw=RawFormat("pcm_s16le", 16000, 2))
    with pytest.raises(InvalidAudio, match="3 over"):
        decode(bytes(3), raw=RawFormat("pcm_s24le", 16000, 2))


def test_raw_that_starts_like_an_mpeg_frame_is_still_raw() -> None:
    rng = np.random.default_rng(7)
    data = bytearray((rng.standard_normal(16000) * 3000).astype("<i2").tobytes())
    data[:4] = b"\xff\xfb\x90\x00"  # an MPEG-1 layer III frame header, by chance
    assert sniff_container(bytes(data)) == "mp3"
    decoded = decode(bytes(data), raw=RawFormat("pcm_s16le", 16000, 1))
    check(decoded, "raw", "pcm_s16le", 16000, 1)


@pytest.mark.parametrize("magic", CONTAINER_MAGIC.values(), ids=CONTAINER_MAGIC.keys())
def test_declared_pcm_that_starts_like_a_container_is_pcm(magic: bytes) -> None:
    data = pcm_with_magic(magic)
    assert sniff_container(data) is not None  # undeclared, these bytes would be sniffed
    expected = np.frombuffer(data, "<i2").astype(np.float32)[:, None] / 32768
    for content_type in ("application/octet-stream", "audio/wav", "audio/mpeg", ""):
        decoded = decode(data, content_type=content_type, raw=RawFormat("pcm_s16le", 16000, 1))
        check(decoded, "raw", "pcm_s16le", 16000, 1)
        assert decoded.frames == 16000 and decoded.duration_ms == 1000.0
        np.testing.assert_array_equal(decoded.samples, expected)
    # The same bytes declared as audio/L16 (big-endian) are PCM too.
    media_type, params = parse_media_type("audio/L16; rate=8000")
    l16 = decode(data, content_type="audio/L16; rate=8000", raw=raw_format_from(
        media_type, params, None, None, None))  # fmt: skip
    check(l16, "raw", "pcm_s16be", 8000, 1)
    assert l16.duration_ms == 2000.0


def test_l16_from_content_type_decodes_big_endian() -> None:
    source = tones(0.05, 16000, 2)
    data, _ = encode_raw(source, "pcm_s16be")
    media_type, params = parse_media_type("audio/L16; rate=16000; channels=2")
    raw = raw_format_from(media_type, params, None, None, None)
    assert raw == RawFormat("pcm_s16be", 16000, 2)
    decoded = decode(data, content_type="audio/L16; rate=16000; channels=2", raw=raw)
    np.testing.assert_allclose(decoded.samples, source, atol=2**-15)


# -- errors without a recognisable container ---------------------------------------------------


def test_empty_body() -> None:
    with pytest.raises(InvalidAudio, match="empty body"):
        decode(b"", content_type="audio/wav")
    with pytest.raises(InvalidAudio, match="empty body"):
        decode(b"", raw=RawFormat("pcm_s16le", 16000, 1))


GARBAGE = b"this is not audio at all, just some text " * 10


@pytest.mark.parametrize(
    "content_type",
    [None, "", "application/octet-stream", "text/plain", "audio/aac", "audio/mp4", "video/webm"],
)
def test_garbage_of_other_types_is_415(content_type: str | None) -> None:
    with pytest.raises(UnsupportedMediaType, match="supported are WAV") as err:
        decode(GARBAGE, content_type=content_type)
    assert err.value.status == 415
    assert "pcm_s16le" in err.value.detail


@pytest.mark.parametrize(
    ("content_type", "name"),
    [
        ("audio/wav", "WAV"),
        ("audio/x-wav", "WAV"),
        ("audio/wave", "WAV"),
        ("audio/vnd.wave", "WAV"),
        ("audio/flac", "FLAC"),
        ("audio/x-flac", "FLAC"),
        ("audio/ogg", "Ogg"),
        ("audio/vorbis", "Ogg"),
        ("audio/opus", "Ogg"),
        ("audio/mpeg", "MP3"),
        ("Audio/MP3; charset=x", "MP3"),
    ],
)
def test_garbage_declared_as_audio_is_422(content_type: str, name: str) -> None:
    with pytest.raises(InvalidAudio, match=f"but the bytes are not a {name} file") as err:
        decode(GARBAGE, content_type=content_type)
    assert err.value.status == 422


# -- sniffing and parsing ---------------------------------------------------------------------


def test_sniff_container() -> None:
    assert sniff_container(b"RIFF\x00\x00\x00\x00WAVEfmt ") == "wav"
    assert sniff_container(b"RIFF\x00\x00\x00\x00AVI LIST") is None
    assert sniff_container(b"fLaC\x00") == "flac"
    assert sniff_container(b"OggS\x00") == "ogg"
    assert sniff_container(b"ID3\x04") == "mp3"
    assert sniff_container(b"\xff\xfb\x90\x00") == "mp3"  # MPEG-1 layer III
    assert sniff_container(b"\xff\xf3\x88\xc4") == "mp3"  # MPEG-2 layer III
    assert sniff_container(b"\xff\xfd\x90\x00") == "mp3"  # MPEG-1 layer II
    assert sniff_container(b"\xff\xff\x90\x00") is None  # layer I
    assert sniff_container(b"\xff\xfb\xf0\x00") is None  # bad bitrate
    assert sniff_container(b"\xff\xfb\x9c\x00") is None  # reserved sample rate
    assert sniff_container(b"\xff\xf1\x50\x80") is None  # AAC ADTS (layer bits 00)
    assert sniff_container(b"\xff") is None
    assert sniff_container(b"") is None
    assert sniff_container(GARBAGE) is None
    for fmt, subtype, name in [("WAV", "PCM_16", "wav"), ("FLAC", None, "flac")]:
        assert sniff_container(sf_bytes(tones(0.01), 8000, fmt, subtype)) == name
    assert sniff_container(sf_bytes(tones(0.01), 8000, "OGG", "VORBIS")) == "ogg"
    assert sniff_container(sf_bytes(tones(0.1), 8000, "MP3")) == "mp3"


def test_parse_media_type() -> None:
    assert parse_media_type("audio/L16; rate=16000; channels=1") == (
        "audio/l16",
        {"rate": "16000", "channels": "1"},
    )
    assert parse_media_type('Audio/WAV ;Codecs="1"; X=\t"a b" ; broken') == (
        "audio/wav",
        {"codecs": "1", "x": "a b"},
    )
    assert parse_media_type(None) == ("", {})
    assert parse_media_type("") == ("", {})
    assert parse_media_type("application/octet-stream") == ("application/octet-stream", {})


def test_raw_format_from_l16() -> None:
    assert raw_format_from("audio/l16", {"rate": "8000"}, None, None, None) == RawFormat(
        "pcm_s16be", 8000, 1
    )
    assert raw_format_from("audio/l16", {}, None, "44100", "2") == RawFormat("pcm_s16be", 44100, 2)
    with pytest.raises(MissingField, match="rate"):
        raw_format_from("audio/l16", {"channels": "1"}, None, None, None)
    with pytest.raises(InvalidField, match="sample_rate"):
        raw_format_from("audio/l16", {"rate": "fast"}, None, None, None)
    with pytest.raises(InvalidField, match="channels"):
        raw_format_from("audio/l16", {"rate": "8000", "channels": "0"}, None, None, None)


def test_raw_format_from_fields() -> None:
    assert raw_format_from("application/octet-stream", {}, "PCM_F32LE", "48000", "2") == (
        RawFormat("pcm_f32le", 48000, 2)
    )
    assert raw_format_from("", {}, None, None, None) is None
    assert raw_format_from("audio/wav", {}, None, "16000", "1") is None
    with pytest.raises(MissingField, match="sample_rate"):
        raw_format_from("", {}, "pcm_s16le", None, "1")
    with pytest.raises(MissingField, match="channels"):
        raw_format_from("", {}, "pcm_s16le", "16000", "")
    with pytest.raises(InvalidField, match="encoding must be one of"):
        raw_format_from("", {}, "pcm_alaw", "16000", "1")
    for rate in ("999", "384001", "-16000", "16k", "1e4", "", "²", "9" * 40):
        with pytest.raises((InvalidField, MissingField)):
            raw_format_from("", {}, "pcm_s16le", rate, "1")
    for channels in ("0", str(MAX_CHANNELS + 1), "two"):
        with pytest.raises(InvalidField):
            raw_format_from("", {}, "pcm_s16le", "16000", channels)
    assert raw_format_from("", {}, "pcm_u8", " 384000 ", "8") == RawFormat("pcm_u8", 384000, 8)
