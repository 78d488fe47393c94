"""Declared raw PCM stays PCM end to end, whatever its first bytes look like.

PCM can begin with any container's magic (``RIFF``, ``fLaC``, ``OggS``, ``ID3``, an MPEG
frame sync); a client that declared its format must get back exactly that format's length.
"""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest

from .audio_samples import CONTAINER_MAGIC, pcm_with_magic
from .conftest import Server, upload_params
from .test_ws import FORMAT, connect, receive_type, start, ws_url

RAW_FIELDS = {"encoding": "pcm_s16le", "sample_rate": "16000", "channels": "1"}
BODIES = [pcm_with_magic(magic) for magic in CONTAINER_MAGIC.values()]
ONE_SECOND = {"container": "raw", "encoding": "pcm_s16le", "sample_rate": 16000,
              "channels": 1, "frames": 16000, "duration_ms": 1000.0}  # fmt: skip


async def test_declared_pcm_over_http_is_never_sniffed(client: httpx.AsyncClient) -> None:
    for body in BODIES:
        response = await client.post(
            "/upload", params=upload_params(**RAW_FIELDS), content=body,
            headers={"Content-Type": "application/octet-stream"},
        )  # fmt: skip
        assert response.status_code == 201, response.text
        assert response.json()["audio"] == ONE_SECOND
        audio = await client.get(f"/chunks/{response.json()['chunk_id']}/audio")
        assert audio.content == body
    # The session timeline holds every second.
    session = (await client.get("/sessions/alice")).json()["sessions"][0]
    assert session["duration_ms"] == 1000.0 * len(BODIES)
    assert [c["offset_ms"] for c in session["chunks"]] == [1000.0 * n for n in range(len(BODIES))]

    # audio/L16 declares big-endian PCM in the Content-Type alone.
    for body in BODIES:
        response = await client.post(
            "/upload", params=upload_params(session_id="l16"), content=body,
            headers={"Content-Type": "audio/L16; rate=16000; channels=1"},
        )  # fmt: skip
        assert response.status_code == 201, response.text
        assert response.json()["audio"] == {**ONE_SECOND, "encoding": "pcm_s16be"}

    # Multipart: the fields declare the format of every file part.
    files = [("file", (f"{n}.pcm", body, "application/octet-stream"))
             for n, body in enumerate(BODIES)]  # fmt: skip
    response = await client.post(
        "/upload", data=upload_params(session_id="parts", **RAW_FIELDS), files=files
    )
    assert response.status_code == 201, response.text
    assert [c["audio"] for c in response.json()["chunks"]] == [ONE_SECOND] * len(BODIES)


@pytest.fixture(params=["listener", "http-port"])
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.mark.parametrize("magic", CONTAINER_MAGIC.values(), ids=CONTAINER_MAGIC.keys())
async def test_declared_pcm_over_websocket_is_never_sniffed(
    server: Server, transport: str, magic: bytes
) -> None:
    body = pcm_with_magic(magic)
    async with connect(ws_url(server, transport)) as ws:
        await start(ws, format=FORMAT)
        await ws.send_message(body)
        await ws.send_message(body)
        for seq in range(2):
            ack = await receive_type(ws, "ack")
            assert ack["seq"] == seq, ack
            meta = await receive_type(ws, "metadata")
            assert meta["audio"] == ONE_SECOND
            assert meta["offset_ms"] == 1000.0 * seq
        await ws.send_message(json.dumps({"type": "end"}))
        end = await receive_type(ws, "session_end", skip=("ack", "metadata"))
    assert end["summary"]["stored"] == 2
    async with server.client() as client:
        stored = (await client.get(f"/chunks/{meta['chunk_id']}/audio")).content
    assert np.array_equal(np.frombuffer(stored, "<i2"), np.frombuffer(body, "<i2"))
