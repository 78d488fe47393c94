"""Errors at the HTTP edges say what happened, and expected events leave no traceback."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from trio_audio.web.openapi import SPEC

from .audio_samples import wav
from .conftest import Server, StartServer, upload_params
from .test_http import assert_problem
from .test_openapi import ref, validate

ROOT = Path(__file__).resolve().parent.parent


async def test_slow_bodies_are_cut_with_408_and_no_traceback(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    # Room for all of them inside at once: each is to be cut for its pace, not refused.
    server: Server = await start_server(
        min_upload_bytes_per_s=8000, upload_grace_s=0.2, admit_max=200
    )
    caplog.set_level(logging.INFO)
    with trio.fail_after(60):
        done = await trio.run_process(
            [sys.executable, "-m", "tests.slow_clients", server.url, "100"],
            cwd=ROOT, capture_stdout=True,
        )  # fmt: skip
    statuses = json.loads(done.stdout)
    assert sum(statuses.values()) == 100
    assert all(line.startswith("HTTP/1.1 408") for line in statuses), statuses
    noisy = [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]
    assert noisy == [], "\n".join(f"{r.name}: {r.getMessage()}" for r in noisy[:5])


def wav_files(count: int, bad: dict[int, bytes] | None = None) -> list[tuple[str, Any]]:
    bad = bad or {}
    return [("file", (f"{n}.wav", bad.get(n, wav(300 + 10 * n, 0.1)), "audio/wav"))
            for n in range(count)]  # fmt: skip


async def test_too_many_multipart_parts_is_a_413_about_parts(start_server: StartServer) -> None:
    server: Server = await start_server(max_parts=2)
    async with server.client() as client:
        # Past the parser's own cap (max_parts + 16 parts in all).
        response = await client.post("/upload", data=upload_params(), files=wav_files(20))
        problem = assert_problem(response, 413, "payload_too_large")
        assert "more than 18 parts" in problem["detail"]
        assert "at most 2 files" in problem["detail"]
        assert "byte" not in problem["detail"]
        # Under the parser's cap but over max_parts.
        response = await client.post("/upload", data=upload_params(), files=wav_files(3))
        problem = assert_problem(response, 413, "payload_too_large")
        assert problem["detail"] == "3 files in one upload, over the limit of 2"
        # A text field over the form-field limit says so.
        response = await client.post(
            "/upload", data=upload_params(note="x" * 600_000), files=wav_files(1)
        )
        problem = assert_problem(response, 413, "payload_too_large")
        assert "text field is over the 500000 byte limit" in problem["detail"]
        assert (await client.get("/sessions/alice")).json()["sessions"] == []


async def test_a_multipart_body_over_the_byte_limit_says_bytes(start_server: StartServer) -> None:
    server: Server = await start_server(max_body_bytes=5000)
    async with server.client() as client:
        response = await client.post("/upload", data=upload_params(), files=wav_files(2))
    problem = assert_problem(response, 413, "payload_too_large")
    assert problem["detail"] == "the body is over the 5000 byte limit"


async def test_a_multipart_error_names_the_part(start_server: StartServer) -> None:
    server: Server = await start_server(max_part_bytes=5000)
    async with server.client() as client:
        files = wav_files(3, bad={1: b"RIFF\x00\x00\x00\x00WAVEjunk"})
        response = await client.post("/upload", data=upload_params(), files=files)
        problem = assert_problem(response, 422, "invalid_audio")
        assert problem["part"] == {"index": 1, "filename": "1.wav"}
        validate(problem, ref("Problem"))
        assert problem["detail"].startswith("file part 1 (filename '1.wav'): WAV ")

        files = wav_files(3, bad={2: b"not audio at all"})
        response = await client.post("/upload", data=upload_params(), files=files)
        problem = assert_problem(response, 422, "invalid_audio")
        assert problem["part"] == {"index": 2, "filename": "2.wav"}
        assert "declared audio/wav but the bytes are not a WAV file" in problem["detail"]

        files = wav_files(3, bad={2: wav(440, 1.0)})  # 32 KB: over the part limit
        response = await client.post("/upload", data=upload_params(), files=files)
        problem = assert_problem(response, 413, "payload_too_large")
        assert problem["part"] == {"index": 2, "filename": "2.wav"}
        assert "over the 5000 byte limit" in problem["detail"]
        assert (await client.get("/sessions/alice")).json()["sessions"] == []


async def test_a_multipart_201_locates_every_chunk(client: httpx.AsyncClient) -> None:
    files = wav_files(3)
    response = await client.post("/upload", data=upload_params(seq="4"), files=files)
    assert response.status_code == 201, response.text
    ids = [chunk["chunk_id"] for chunk in response.json()["chunks"]]
    validate(response.json(), SPEC["paths"]["/upload"]["post"]["responses"]["201"]["content"][
        "application/json"]["schema"])  # fmt: skip
    assert response.headers["location"] == f"/chunks/{ids[0]}"
    assert response.headers["link"] == ", ".join(f'</chunks/{i}>; rel="item"' for i in ids)
    for link in response.links.values():  # every link resolves to its chunk
        assert (await client.get(link["url"])).status_code == 200
    retry = await client.post("/upload", data=upload_params(seq="4"), files=files)
    assert retry.status_code == 200
    assert retry.headers["link"] == response.headers["link"]


async def test_a_response_sent_before_the_body_was_read_closes_the_connection(
    start_server: StartServer,
) -> None:
    server: Server = await start_server(
        max_parts=2, min_upload_bytes_per_s=8000, upload_grace_s=0.2, read_timeout_s=30
    )
    # A keep-alive client refused partway through its body can send its next request.
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        with trio.fail_after(10):
            response = await client.post("/upload", data=upload_params(), files=wav_files(20))
            assert response.status_code == 413
            response = await client.post("/upload", data=upload_params(), files=wav_files(1))
            assert response.status_code == 201

    # A body cut off for being slow gets its 408, then the connection is closed (not left
    # open, the rest of the body unread, until the read timeout).
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    head = (b"POST /upload?user_id=alice&session_id=s HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: audio/wav\r\nContent-Length: 8000\r\n\r\n")  # fmt: skip
    await stream.send_all(head + b"RIFF")
    response_bytes = b""
    with trio.fail_after(10):
        while data := await stream.receive_some():
            response_bytes += data
    assert response_bytes.startswith(b"HTTP/1.1 408")
    await stream.aclose()


def multipart_body(*files: bytes) -> bytes:
    out = b""
    for name, value in (("user_id", b"alice"), ("session_id", b"s")):
        out += b'--XyZ\r\nContent-Disposition: form-data; name="%s"\r\n\r\n%s\r\n' % (
            name.encode(), value)  # fmt: skip
    for n, data in enumerate(files):
        out += (b'--XyZ\r\nContent-Disposition: form-data; name="file"; filename="%d.wav"\r\n'
                b"Content-Type: audio/wav\r\n\r\n%s\r\n" % (n, data))  # fmt: skip
    return out + b"--XyZ--\r\n"


async def test_a_chunked_multipart_body_is_held_to_the_byte_limit(
    start_server: StartServer,
) -> None:
    server: Server = await start_server(max_body_bytes=20_000, max_part_bytes=100_000)

    async def chunked(body: bytes) -> AsyncIterator[bytes]:  # no Content-Length
        for i in range(0, len(body), 4000):
            yield body[i : i + 4000]

    headers = {"Content-Type": "multipart/form-data; boundary=XyZ"}
    async with server.client() as client:
        small = multipart_body(wav(440, 0.25))  # 8 KB
        response = await client.post("/upload", content=chunked(small), headers=headers)
        assert response.status_code == 201, response.text
        big = multipart_body(wav(440, 1.5))  # 48 KB
        response = await client.post("/upload", content=chunked(big), headers=headers)
        problem = assert_problem(response, 413, "payload_too_large")
        assert problem["detail"] == "the body is over the 20000 byte limit"
        sessions = (await client.get("/sessions/alice")).json()["sessions"]
        assert [len(s["chunks"]) for s in sessions] == [1]
