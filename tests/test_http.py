"""End-to-end tests of the HTTP API against a real server on port 0."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import httpx
import numpy as np
import pytest
import trio

from .audio_samples import encode, pcm_s16le, sine, wav
from .conftest import Server, StartServer, upload_params


def assert_problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["code"] == code
    assert body["title"] and body["detail"] and body["type"]
    return body


async def upload(client: httpx.AsyncClient, data: bytes, content_type: str = "audio/wav",
                 **params: Any) -> httpx.Response:  # fmt: skip
    return await client.post(
        "/upload", params=upload_params(**params), content=data,
        headers={"Content-Type": content_type},
    )  # fmt: skip


async def test_health_and_readiness(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready"


async def test_wav_upload_is_analysed_stored_and_served(client: httpx.AsyncClient) -> None:
    data = wav(440.0, seconds=1.0, rate=16000)
    response = await upload(client, data, timestamp="1700000000.5")
    assert response.status_code == 201, response.text
    chunk = response.json()
    assert response.headers["location"] == f"/chunks/{chunk['chunk_id']}"
    assert chunk["user_id"] == "alice" and chunk["session_id"] == "s1" and chunk["seq"] == 0
    assert chunk["checksum"] == hashlib.sha256(data).hexdigest()
    assert chunk["size_bytes"] == len(data)
    assert chunk["timestamp"] == "2023-11-14T22:13:20.500Z"
    assert chunk["audio"] == {
        "container": "wav", "encoding": "pcm_s16le", "sample_rate": 16000,
        "channels": 1, "frames": 16000, "duration_ms": 1000.0,
    }  # fmt: skip
    features = chunk["features"]
    assert abs(features["dominant_hz"] - 440.0) <= features["fft_bin_hz"]
    assert features["rms_dbfs"] == pytest.approx(-9.03, abs=0.1)  # 0.5 amplitude sine
    assert features["silence_ratio"] == 0.0
    assert len(chunk["spectrum"]["bands_hz"]) == len(chunk["spectrum"]["band_db"]) == 16
    assert chunk["transcript"]["status"] == "disabled"
    assert set(chunk["processing_ms"]) >= {"validate", "transform", "metadata"}

    assert (await client.get(f"/chunks/{chunk['chunk_id']}")).json() == chunk
    audio = await client.get(f"/chunks/{chunk['chunk_id']}/audio")
    assert audio.status_code == 200
    assert audio.content == data
    assert audio.headers["content-type"] == "audio/wav"


@pytest.mark.parametrize(
    ("fmt", "subtype", "container", "encoding"),
    [
        ("FLAC", "PCM_16", "flac", "flac"),
        ("OGG", "VORBIS", "ogg", "vorbis"),
        ("MP3", "MPEG_LAYER_III", "mp3", "mp3"),
        ("WAV", "PCM_24", "wav", "pcm_s24le"),
        ("WAV", "FLOAT", "wav", "pcm_f32le"),
    ],
)
async def test_container_formats(
    client: httpx.AsyncClient, fmt: str, subtype: str, container: str, encoding: str
) -> None:
    data = encode(sine(1000.0, 1.0, 44100, channels=2), 44100, fmt, subtype)
    # The Content-Type is not trusted: the container is found by its magic bytes.
    response = await upload(client, data, "application/octet-stream")
    assert response.status_code == 201, response.text
    chunk = response.json()
    assert chunk["audio"]["container"] == container
    assert chunk["audio"]["encoding"] == encoding
    assert chunk["audio"]["channels"] == 2 and chunk["audio"]["sample_rate"] == 44100
    assert abs(chunk["features"]["dominant_hz"] - 1000.0) <= 2 * chunk["features"]["fft_bin_hz"]
    audio = await client.get(f"/chunks/{chunk['chunk_id']}/audio")
    assert audio.content == data


async def test_raw_pcm_from_query_and_from_l16(client: httpx.AsyncClient) -> None:
    le = pcm_s16le(440.0, 0.5, 8000)
    response = await upload(
        client, le, "application/octet-stream",
        encoding="pcm_s16le", sample_rate="8000", channels="1",
    )  # fmt: skip
    assert response.status_code == 201, response.text
    chunk = response.json()
    assert chunk["audio"]["container"] == "raw" and chunk["audio"]["frames"] == 4000
    assert abs(chunk["features"]["dominant_hz"] - 440) <= chunk["features"]["fft_bin_hz"]

    # audio/L16 is big-endian (RFC 2586).
    be = np.frombuffer(le, "<i2").astype(">i2").tobytes()
    response = await upload(client, be, "audio/L16; rate=8000; channels=1")
    assert response.status_code == 201, response.text
    chunk = response.json()
    assert chunk["audio"]["encoding"] == "pcm_s16be"
    assert abs(chunk["features"]["dominant_hz"] - 440) <= chunk["features"]["fft_bin_hz"]


async def test_silence_reports_full_silence(client: httpx.AsyncClient) -> None:
    data = encode(np.zeros((16000, 1), np.float32), 16000, "WAV", "PCM_16")
    chunk = (await upload(client, data)).json()
    assert chunk["features"]["silence_ratio"] == 1.0


async def test_seq_is_assigned_and_retries_are_idempotent(client: httpx.AsyncClient) -> None:
    first = (await upload(client, wav(300))).json()
    second = (await upload(client, wav(400))).json()
    assert (first["seq"], second["seq"]) == (0, 1)

    data = wav(500)
    created = await upload(client, data, seq="7")
    assert created.status_code == 201
    retry = await upload(client, data, seq="7")
    assert retry.status_code == 200
    assert retry.json() == created.json()
    conflict = await upload(client, wav(600), seq="7")
    assert_problem(conflict, 409, "seq_conflict")
    assert (await upload(client, wav(700))).json()["seq"] == 8
    listing = (await client.get("/sessions/alice")).json()
    assert [c["seq"] for c in listing["sessions"][0]["chunks"]] == [0, 1, 7, 8]


async def test_concurrent_retries_of_one_seq_store_it_once(client: httpx.AsyncClient) -> None:
    data = wav(440)
    statuses: list[int] = []

    async def send() -> None:
        statuses.append((await upload(client, data, seq="3")).status_code)

    async with trio.open_nursery() as nursery:
        for _ in range(8):
            nursery.start_soon(send)
    assert sorted(statuses) == [200] * 7 + [201]
    listing = (await client.get("/sessions/alice")).json()
    assert len(listing["sessions"][0]["chunks"]) == 1


async def test_multipart_upload_all_or_nothing(client: httpx.AsyncClient) -> None:
    files = [("file", ("a.wav", wav(300), "audio/wav")), ("file", ("b.flac",
             encode(sine(500), 16000, "FLAC"), "audio/flac"))]  # fmt: skip
    response = await client.post("/upload", data=upload_params(), files=files)
    assert response.status_code == 201, response.text
    chunks = response.json()["chunks"]
    assert [c["seq"] for c in chunks] == [0, 1]
    assert [c["audio"]["container"] for c in chunks] == ["wav", "flac"]

    bad = [("file", ("c.wav", wav(300), "audio/wav")), ("file", ("d.wav", b"RIFF", "audio/wav"))]
    response = await client.post("/upload", data=upload_params(session_id="s2"), files=bad)
    assert_problem(response, 422, "invalid_audio")
    assert (await client.get("/sessions/alice", params={"session_id": "s2"})).json()[
        "sessions"
    ] == []

    response = await client.post("/upload", data=upload_params(), files=[("other", b"x")])
    assert_problem(response, 400, "missing_field")


async def test_session_listing_and_paging(client: httpx.AsyncClient) -> None:
    answered = {}
    for session in ("b", "a"):
        for _ in range(3):
            response = await upload(client, wav(440, 0.2), session_id=session)
            assert response.status_code == 201
            chunk = response.json()
            answered[chunk["chunk_id"]] = chunk
    listing = (await client.get("/sessions/alice")).json()
    # A page, a chunk read alone and the upload's answer are one document per chunk.
    paged = {c["chunk_id"]: c for s in listing["sessions"] for c in s["chunks"]}
    assert paged == answered
    assert {c: (await client.get(f"/chunks/{c}")).json() for c in answered} == answered
    assert listing["user_id"] == "alice" and listing["next_cursor"] is None
    assert [s["session_id"] for s in listing["sessions"]] == ["a", "b"]
    first = listing["sessions"][0]
    assert first["chunk_count"] == 3 and first["duration_ms"] == pytest.approx(600.0)
    assert [c["seq"] for c in first["chunks"]] == [0, 1, 2]
    assert [c["offset_ms"] for c in first["chunks"]] == [0.0, 200.0, 400.0]  # session timeline

    seen: list[tuple[str, int]] = []
    cursor = None
    for _ in range(10):
        params = {"limit": "2", **({"cursor": cursor} if cursor else {})}
        page = (await client.get("/sessions/alice", params=params)).json()
        seen += [(s["session_id"], c["seq"]) for s in page["sessions"] for c in s["chunks"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [("a", 0), ("a", 1), ("a", 2), ("b", 0), ("b", 1), ("b", 2)]

    only = (await client.get("/sessions/alice", params={"session_id": "b"})).json()
    assert [s["session_id"] for s in only["sessions"]] == ["b"]
    nobody = (await client.get("/sessions/nobody")).json()
    assert nobody == {"user_id": "nobody", "sessions": [], "next_cursor": None}


async def test_session_totals_list_sessions_without_their_chunks(
    client: httpx.AsyncClient,
) -> None:
    """``chunks=false`` pages over sessions, not chunks: a long session is one line."""
    for session, n in (("c", 1), ("a", 5), ("b", 2)):
        for _ in range(n):
            assert (await upload(client, wav(440, 0.2), session_id=session)).status_code == 201
    seen = []
    cursor = None
    for _ in range(5):
        params = {"chunks": "false", "limit": "2", **({"cursor": cursor} if cursor else {})}
        page = (await client.get("/sessions/alice", params=params)).json()
        assert all(s["chunks"] == [] for s in page["sessions"])
        seen += [(s["session_id"], s["chunk_count"]) for s in page["sessions"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [("a", 5), ("b", 2), ("c", 1)]
    only = (await client.get("/sessions/alice?chunks=false&session_id=a")).json()["sessions"]
    assert [(s["session_id"], s["duration_ms"]) for s in only] == [("a", pytest.approx(1000.0))]
    bad = await client.get("/sessions/alice?chunks=maybe")
    assert bad.status_code == 400 and bad.json()["code"] == "invalid_field"


@pytest.mark.parametrize(
    ("params", "data", "content_type", "status", "code"),
    [
        ({"user_id": None}, b"x", "audio/wav", 400, "missing_field"),
        ({"session_id": None}, b"x", "audio/wav", 400, "missing_field"),
        ({"user_id": "../etc"}, b"x", "audio/wav", 400, "invalid_field"),
        ({"session_id": "a" * 65}, b"x", "audio/wav", 400, "invalid_field"),
        ({"seq": "-1"}, b"x", "audio/wav", 400, "invalid_field"),
        ({"timestamp": "yesterday"}, b"x", "audio/wav", 400, "invalid_field"),
        ({}, b"", "audio/wav", 422, "invalid_audio"),
        ({}, b"hello, this is text", "text/plain", 415, "unsupported_media_type"),
        ({}, b"\x00" * 1000, "application/octet-stream", 415, "unsupported_media_type"),
        ({}, b"not a wav at all", "audio/wav", 422, "invalid_audio"),
        ({}, wav()[:-1001], "audio/wav", 422, "invalid_audio"),  # data size past the end
        ({"encoding": "pcm_s16le", "sample_rate": "16000"}, b"\x00\x00", "application/octet-stream",
         400, "missing_field"),
        ({"encoding": "pcm_s16le", "sample_rate": "0", "channels": "1"}, b"\x00\x00",
         "application/octet-stream", 400, "invalid_field"),
        ({"encoding": "pcm_s16le", "sample_rate": "8000", "channels": "1"}, b"\x00\x00\x00",
         "application/octet-stream", 422, "invalid_audio"),
    ],
)  # fmt: skip
async def test_bad_uploads_get_clear_problems_and_store_nothing(
    client: httpx.AsyncClient, params: dict[str, Any], data: bytes, content_type: str,
    status: int, code: str,
) -> None:  # fmt: skip
    query = {k: v for k, v in upload_params(**params).items() if v is not None}
    response = await client.post(
        "/upload", params=query, content=data, headers={"Content-Type": content_type}
    )
    assert_problem(response, status, code)
    assert (await client.get("/sessions/alice")).json()["sessions"] == []


async def test_read_errors(client: httpx.AsyncClient) -> None:
    assert_problem(await client.get("/chunks/nope"), 404, "not_found")
    assert_problem(await client.get("/chunks/nope/audio"), 404, "not_found")
    assert_problem(await client.get("/chunks/bad%20id"), 400, "invalid_field")
    assert_problem(await client.get("/no/such/route"), 404, "not_found")
    assert_problem(await client.get("/upload"), 405, "method_not_allowed")
    assert_problem(await client.get("/sessions/alice", params={"limit": "0"}), 400,
                   "invalid_field")  # fmt: skip
    assert_problem(await client.get("/sessions/alice", params={"cursor": "%%%"}), 400,
                   "invalid_field")  # fmt: skip


async def test_body_over_limit_is_refused_unread(start_server: StartServer) -> None:
    server: Server = await start_server(max_body_bytes=64 * 1024)
    async with server.client() as client:
        big = wav(440, seconds=3.0)  # ~96 KB
        assert_problem(await upload(client, big), 413, "payload_too_large")

        async def stream() -> Any:  # chunked: no Content-Length to refuse on
            for i in range(0, len(big), 8192):
                yield big[i : i + 8192]

        response = await client.post(
            "/upload", params=upload_params(), content=stream(),
            headers={"Content-Type": "audio/wav"},
        )  # fmt: skip
        assert_problem(response, 413, "payload_too_large")
        assert (await upload(client, wav(440, 1.0))).status_code == 201


async def test_full_pipeline_refuses_with_503_and_loses_nothing(
    start_server: StartServer,
) -> None:
    server: Server = await start_server(
        ingress_queue=2,
        stage_queue=1,
        stage_workers=1,
        cpu_threads=1,
        retry_after_s=2,
        inline_max_samples=0,  # every CPU step goes through the one thread the test holds
    )
    limiter = server.running.limiter
    results: list[httpx.Response] = []
    # At most 3 uploads can be held: 1 in the blocked validate worker, 2 in the ingress queue.
    others_answered = trio.Event()
    async with server.client() as client:

        async def send(i: int) -> None:
            results.append(await upload(client, wav(200 + i), seq=str(i)))
            if len(results) == 12 - 3:
                others_answered.set()

        # Hold the only CPU thread: the validate worker blocks, then every queue fills.
        await limiter.acquire_on_behalf_of("test")
        async with trio.open_nursery() as nursery:
            for i in range(12):
                nursery.start_soon(send, i)
            with trio.fail_after(10):
                await others_answered.wait()
            assert all(r.status_code == 503 for r in results)
            limiter.release_on_behalf_of("test")
        refused = [r for r in results if r.status_code == 503]
        stored = [r for r in results if r.status_code == 201]
        assert len(refused) + len(stored) == 12
        assert refused and stored
        for response in refused:
            assert_problem(response, 503, "overloaded")
            assert response.headers["retry-after"] == "2"
        for response in stored:
            chunk = response.json()
            again = (await client.get(f"/chunks/{chunk['chunk_id']}")).json()
            # offset_ms may grow: chunks with lower seqs were stored after this one answered.
            assert {**again, "offset_ms": 0} == {**chunk, "offset_ms": 0}
        metrics = (await client.get("/metrics")).text
        assert f'trio_audio_refused_total{{reason="queue_full"}} {len(refused)}' in metrics
        assert f"trio_audio_stored_total {len(stored)}" in metrics


async def test_metrics_are_prometheus_text(client: httpx.AsyncClient) -> None:
    assert (await upload(client, wav())).status_code == 201
    response = await client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert "trio_audio_accepted_total 1" in text
    for stage in ("validate", "analyse", "transform", "metadata", "vad"):  # steps as stages
        assert f'trio_audio_stage_seconds_count{{stage="{stage}"}} 1' in text
    assert 'trio_audio_queue_depth{queue="ingress"} 0' in text
    assert "# TYPE trio_audio_stage_seconds histogram" in text
    assert "trio_audio_meta_cache_misses_total" in text  # chunk metadata read from the log


async def test_server_sent_events_tell_of_stored_and_deleted_chunks(server: Server) -> None:
    events: list[tuple[str, dict[str, Any]]] = []
    with trio.fail_after(20):
        async with (
            server.client() as client,
            server.client() as watcher,
            watcher.stream("GET", "/sessions/alice/sse/events") as response,
        ):
            assert response.headers["content-type"].startswith("text/event-stream")
            lines = response.aiter_lines()
            assert (await anext(lines)).startswith(": watching")
            stored = await client.post(
                "/upload", params=upload_params(session_id="sse"), content=wav(seconds=0.2)
            )
            chunk_id = stored.json()["chunk_id"]
            assert (await client.delete(f"/chunks/{chunk_id}")).status_code == 200
            name = ""
            async for line in lines:
                if line.startswith("event: "):
                    name = line.removeprefix("event: ")
                elif line.startswith("data: "):
                    events.append((name, json.loads(line.removeprefix("data: "))))
                    if name == "deleted":
                        break
    assert [name for name, _ in events] == ["metadata", "deleted"]
    assert events[0][1]["chunk_id"] == chunk_id
    assert events[1][1] == {"type": "deleted", "user_id": "alice", "session_id": "sse",
                            "chunk_ids": [chunk_id], "seqs": [0]}  # fmt: skip


async def test_an_answer_longer_than_the_read_timeout_is_not_cut(
    start_server: StartServer,
) -> None:
    # A stream of server-sent events asks nothing more of its client once its request is in:
    # the read timeout (1 s here) is for what a client owes, so the stream still tells of
    # a chunk stored 2.5 s later.
    server: Server = await start_server(read_timeout_s=1.0)
    with trio.fail_after(20):
        async with (
            server.client() as client,
            server.client() as watcher,
            watcher.stream("GET", "/sessions/alice/slow/events") as response,
        ):
            lines = response.aiter_lines()
            assert (await anext(lines)).startswith(": watching")
            await trio.sleep(2.5)
            stored = await client.post(
                "/upload", params=upload_params(session_id="slow"), content=wav(seconds=0.2)
            )
            async for line in lines:
                if line.startswith("data: "):
                    assert (
                        json.loads(line.removeprefix("data: "))["chunk_id"]
                        == (stored.json()["chunk_id"])
                    )
                    break
