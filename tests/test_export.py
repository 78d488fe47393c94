"""A whole session taken away over HTTP: one WAV with ranges, transcripts a parser reads."""

from __future__ import annotations

import io
import itertools
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import soundfile as sf
import srt
import trio
import webvtt

from trio_audio.web.auth import add_token

from .audio_samples import encode, sine
from .conftest import Server, StartServer
from .speech import OTHER_SENTENCE, SENTENCE, grammar_file, speak, to_wav

RATE = 16000


def pcm16(body: bytes) -> np.ndarray:
    """The 16-bit samples an audio file holds."""
    return sf.read(io.BytesIO(body), dtype="int16")[0]


async def put(client: httpx.AsyncClient, seq: int, body: bytes, **params: Any) -> None:
    response = await client.post(
        "/upload", params={"user_id": "alice", "session_id": "s", "seq": seq, **params},
        content=body,
    )  # fmt: skip
    assert response.status_code == 201, response.text


async def test_session_audio_is_its_chunks_end_to_end_with_missing_seqs_as_silence(
    client: httpx.AsyncClient,
) -> None:
    a, b, c = sine(300, 0.5), sine(500, 0.25), sine(700, 0.4)
    wav_a, flac_b = encode(a, RATE, "WAV", "PCM_16"), encode(b, RATE, "FLAC", "PCM_16")
    await put(client, 0, wav_a)
    await put(client, 1, flac_b)
    raw = (c[:, 0] * 32767).astype("<i2")
    await put(client, 4, raw.tobytes(), encoding="pcm_s16le", sample_rate=RATE, channels=1)
    response = await client.get("/sessions/alice/s/audio")
    assert response.status_code == 200
    assert response.headers["content-type"] == "audio/wav"
    assert response.headers["accept-ranges"] == "bytes"
    assert response.headers["x-missing-seqs"] == "2-3"
    assert float(response.headers["x-gaps-ms"]) == 500.0  # two seqs, each as long as seq 1
    samples, rate = sf.read(io.BytesIO(response.content), dtype="int16")
    assert rate == RATE
    gap = 2 * len(b)
    assert len(samples) == len(a) + len(b) + gap + len(c)
    assert int(response.headers["content-length"]) == len(response.content) == 44 + 2 * len(samples)
    expected = np.concatenate([pcm16(wav_a), pcm16(flac_b), np.zeros(gap, np.int16), raw])
    assert np.array_equal(samples, expected)


async def test_a_player_seeks_with_byte_ranges(start_server: StartServer) -> None:
    server = await start_server(export_block_s=0.05)  # many blocks per chunk
    async with server.client() as client:
        bodies = [encode(sine(200 + 100 * seq, 0.3), RATE, kind, subtype)
                  for seq, (kind, subtype) in enumerate([("OGG", "VORBIS"), ("MP3", None),
                                                         ("FLAC", None)])]  # fmt: skip
        for seq, body in enumerate(bodies):
            await put(client, seq, body)
        whole = (await client.get("/sessions/alice/s/audio")).content
        total = len(whole)
        samples = sf.read(io.BytesIO(whole), dtype="int16")[0]
        at = 0
        for body in bodies:  # each chunk as its decoder hears it (MP3: to the rounding)
            expected = pcm16(body)
            heard = samples[at : at + len(expected)].astype(int)
            assert np.abs(heard - expected).max() <= 1
            at += len(expected)
        assert at == len(samples)
        for asked, start, end in [
            ("bytes=0-43", 0, 43),
            ("bytes=10-20000", 10, 20000),
            ("bytes=9601-", 9601, total - 1),  # odd: inside a frame
            ("bytes=12000-12999", 12000, 12999),  # inside the MP3
            ("bytes=-1001", total - 1001, total - 1),
            (f"bytes=100-{total + 50}", 100, total - 1),
        ]:
            response = await client.get("/sessions/alice/s/audio", headers={"Range": asked})
            assert response.status_code == 206, asked
            assert response.headers["content-range"] == f"bytes {start}-{end}/{total}"
            assert response.content == whole[start : end + 1], asked
        for asked in (f"bytes={total}-", "bytes=-0"):
            response = await client.get("/sessions/alice/s/audio", headers={"Range": asked})
            assert response.status_code == 416
            assert response.headers["content-range"] == f"bytes */{total}"
            assert response.json()["code"] == "range_not_satisfiable"
        ignored = await client.get("/sessions/alice/s/audio", headers={"Range": "bytes=0-1,5-9"})
        assert ignored.status_code == 200 and ignored.content == whole


async def test_chunks_of_other_rates_are_refused_clearly(client: httpx.AsyncClient) -> None:
    await put(client, 0, encode(sine(300, 0.2), RATE, "WAV", "PCM_16"))
    await put(client, 1, encode(sine(300, 0.2, rate=8000), 8000, "WAV", "PCM_16"))
    response = await client.get("/sessions/alice/s/audio")
    assert response.status_code == 409
    problem = response.json()
    assert problem["code"] == "not_exportable"
    assert "8000 Hz x 1, 16000 Hz x 1" in problem["detail"]


async def test_unknown_sessions_bad_formats_and_delete(client: httpx.AsyncClient) -> None:
    assert (await client.get("/sessions/alice/nope/audio")).status_code == 404
    assert (await client.get("/sessions/alice/nope/transcript")).status_code == 404
    await put(client, 0, encode(sine(300, 0.2), RATE, "WAV", "PCM_16"))
    response = await client.get("/sessions/alice/s/transcript", params={"format": "doc"})
    assert response.status_code == 400 and response.json()["code"] == "invalid_field"
    assert (await client.get("/sessions/alice/s/transcript")).json()["status"] == "disabled"
    deleted = await client.delete("/sessions/alice/s")
    assert deleted.status_code == 200 and deleted.json()["deleted"] == 1
    assert (await client.get("/sessions/alice/s/audio")).status_code == 404
    again = await client.delete("/sessions/alice/s")
    assert again.status_code == 404 and again.json()["code"] == "not_found"


async def test_a_session_longer_than_a_page_exports_whole_and_in_order(
    client: httpx.AsyncClient,
) -> None:
    # 1,003 chunks of 10 ms, chunk n holding the sample value n: the export reads the
    # session a page of 1,000 at a time, and must join the pages in seq order.
    total, frames = 1003, 160

    async def upload(first: int) -> None:
        for seq in range(first, total, 8):
            raw = np.full(frames, seq, "<i2").tobytes()
            await put(client, seq, raw, encoding="pcm_s16le", sample_rate=RATE, channels=1)

    async with trio.open_nursery() as nursery:
        for first in range(8):
            nursery.start_soon(upload, first)
    response = await client.get("/sessions/alice/s/audio")
    assert response.status_code == 200 and not response.headers["x-missing-seqs"]
    samples = pcm16(response.content).reshape(total, frames)
    assert np.array_equal(samples, np.repeat(np.arange(total, dtype="<i2")[:, None], frames, 1))
    chunks = (await client.get("/sessions/alice/s/transcript")).json()["chunks"]
    assert [chunk["seq"] for chunk in chunks] == list(range(total))


async def transcribed(client: httpx.AsyncClient) -> dict[str, Any]:
    with trio.fail_after(30):
        while True:
            body: dict[str, Any] = (await client.get("/sessions/alice/s/transcript")).json()
            if body["status"] != "pending":
                return body
            await trio.sleep(0.05)


async def test_transcripts_read_by_subtitle_parsers(
    start_server: StartServer, tmp_path: Path
) -> None:
    server: Server = await start_server(
        asr_engine="pocketsphinx", asr_grammar=str(grammar_file(tmp_path))
    )
    async with server.client() as client:
        await put(client, 0, to_wav(speak(SENTENCE)))
        await put(client, 1, to_wav(speak(OTHER_SENTENCE)))
        await put(client, 3, to_wav(speak(SENTENCE)))  # seq 2 missing: silence
        body = await transcribed(client)
        assert body["status"] == "done"
        assert body["text"] == f"{SENTENCE} {OTHER_SENTENCE} {SENTENCE}"
        assert body["missing_seqs"] == [[2, 2]]
        chunks = {c["seq"]: c for c in body["chunks"]}
        words = body["words"]
        assert [w["start_ms"] for w in words] == sorted(w["start_ms"] for w in words)
        for word in words:  # each word inside its chunk, on the audio's timeline
            chunk = chunks[word["seq"]]
            assert chunk["start_ms"] <= word["start_ms"] < chunk["start_ms"] + chunk["duration_ms"]
            assert word["start_ms"] <= word["end_ms"] <= body["duration_ms"]
        # The last chunk starts after the gap: one missing seq as long as seq 1.
        assert chunks[3]["start_ms"] == chunks[1]["start_ms"] + 2 * chunks[1]["duration_ms"]

        text = (await client.get("/sessions/alice/s/transcript?format=txt")).text
        assert text.split() == body["text"].split()
        assert len(text.splitlines()) == 2  # a new line after the silence of seq 2

        response = await client.get("/sessions/alice/s/transcript?format=srt")
        assert response.headers["content-type"].startswith("application/x-subrip")
        subtitles = list(srt.parse(response.text, ignore_errors=False))
        assert " ".join(s.content.replace("\n", " ") for s in subtitles) == body["text"]
        assert [s.index for s in subtitles] == list(range(1, len(subtitles) + 1))
        first = words[0]["start_ms"] / 1000
        assert abs(subtitles[0].start.total_seconds() - first) < 0.002
        for one, two in itertools.pairwise(subtitles):
            assert one.start < one.end <= two.start

        response = await client.get("/sessions/alice/s/transcript?format=vtt")
        assert response.headers["content-type"].startswith("text/vtt")
        captions = webvtt.from_buffer(io.StringIO(response.text)).captions
        assert [c.text for c in captions] == [s.content for s in subtitles]
        assert [c.start_in_seconds for c in captions] == [
            int(s.start.total_seconds()) for s in subtitles
        ]


async def test_another_users_session_is_not_found(
    start_server: StartServer, tmp_path: Path
) -> None:
    tokens = tmp_path / "tokens"
    alice, bob = add_token(tokens, "alice"), add_token(tokens, "bob")
    server: Server = await start_server(tokens_file=str(tokens))
    async with server.client() as client:
        own = {"Authorization": f"Bearer {alice}"}
        response = await client.post(
            "/upload", params={"session_id": "s"}, content=encode(sine(), RATE, "WAV"), headers=own
        )
        assert response.status_code == 201
        for method, url in [
            ("GET", "/sessions/alice/s/audio"),
            ("GET", "/sessions/alice/s/transcript?format=srt"),
            ("DELETE", "/sessions/alice/s"),
        ]:
            anonymous = await client.request(method, url)
            assert anonymous.status_code == 401
            other = await client.request(method, url, headers={"Authorization": f"Bearer {bob}"})
            assert other.status_code == 404, (method, url)
            assert other.json()["code"] == "not_found"
        assert (await client.get("/sessions/alice/s/audio", headers=own)).status_code == 200
        assert (await client.delete("/sessions/alice/s", headers=own)).status_code == 200
