"""The service as a whole: restart and replay, torn and corrupt logs, signals, the lock."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from trio_audio.store.files import MANIFEST_FILE
from trio_audio.store.record import Manifest, Record, pack_manifest
from trio_audio.store.replay import replay

from .audio_samples import encode, pcm_s16le, sine, wav
from .conftest import StartServer, upload_params
from .processes import Process


def segments(data_dir: Path) -> list[Path]:
    return sorted((data_dir / "log").glob("*.seg"))


async def test_restart_replays_everything_byte_for_byte(start_server: StartServer) -> None:
    server = await start_server()
    uploads = [
        (wav(440), "audio/wav", {}),
        (encode(sine(880, 1.0, 22050, 2), 22050, "FLAC"), "audio/flac", {}),
        (pcm_s16le(300), "application/octet-stream",
         {"encoding": "pcm_s16le", "sample_rate": "16000", "channels": "1"}),
    ]  # fmt: skip
    chunks = []
    async with server.client() as client:
        for data, content_type, extra in uploads:
            response = await client.post(
                "/upload", params=upload_params(**extra), content=data,
                headers={"Content-Type": content_type},
            )  # fmt: skip
            assert response.status_code == 201, response.text
            chunks.append(response.json())
        before = (await client.get("/sessions/alice")).json()
    await server.stop()

    again = await start_server()
    async with again.client() as client:
        assert (await client.get("/readyz")).json()["replayed_records"] == 3
        for chunk, (data, content_type, _) in zip(chunks, uploads, strict=True):
            assert (await client.get(f"/chunks/{chunk['chunk_id']}")).json() == chunk
            audio = await client.get(f"/chunks/{chunk['chunk_id']}/audio")
            assert audio.content == data
            assert audio.headers["content-type"] == content_type
        assert (await client.get("/sessions/alice")).json() == before
        # The session goes on where it stopped.
        response = await client.post("/upload", params=upload_params(), content=wav(220))
        assert response.json()["seq"] == 3


async def test_torn_tail_is_cut_and_the_service_starts(
    start_server: StartServer, data_dir: Path
) -> None:
    server = await start_server()
    async with server.client() as client:
        ids = [
            (await client.post("/upload", params=upload_params(), content=wav(f))).json()[
                "chunk_id"
            ]
            for f in (300, 400, 500)
        ]
    await server.stop()
    segment = segments(data_dir)[-1]
    size = segment.stat().st_size
    records: list[Record] = []
    replay(data_dir, records.append, dry_run=True)
    last = records[-1]  # the manifest was last rewritten before it, and then ...
    manifest = Manifest(int(segment.name[:16]), last.offset, last.seq - 1)
    (segment.parent / MANIFEST_FILE).write_bytes(pack_manifest(manifest))
    with segment.open("r+b") as f:  # ... a crash in the middle of writing it
        f.truncate(size - 100)

    again = await start_server()
    async with again.client() as client:
        assert (await client.get(f"/chunks/{ids[0]}")).status_code == 200
        assert (await client.get(f"/chunks/{ids[1]}")).status_code == 200
        assert (await client.get(f"/chunks/{ids[2]}")).status_code == 404
        response = await client.post("/upload", params=upload_params(), content=wav(600))
        assert response.status_code == 201
        assert response.json()["seq"] == 2
    assert list(segment.parent.glob("*.torn*"))


def test_corruption_before_the_tail_refuses_to_start(spawn: type[Process], data_dir: Path) -> None:
    first = spawn()
    url = first.wait_ready()
    with httpx.Client(base_url=url) as client:
        for f in (300, 400, 500):
            response = client.post("/upload", params=upload_params(), content=wav(f))
            assert response.status_code == 201
    assert first.stop()[0] == 0
    segment = segments(data_dir)[-1]
    raw = bytearray(segment.read_bytes())
    raw[len(raw) // 3] ^= 0x10  # a bit flip inside the first records
    segment.write_bytes(bytes(raw))

    second = spawn()
    code = second.proc.wait(timeout=30)
    _, err = second.proc.communicate()
    assert code == 3
    assert "corrupt" in err and segment.name in err and "offset" in err


def test_sigterm_drains_and_exits_zero_and_a_second_process_is_refused(
    spawn: type[Process], data_dir: Path
) -> None:
    server = spawn()
    url = server.wait_ready()
    with httpx.Client(base_url=url, timeout=30) as client:
        response = client.post("/upload", params=upload_params(), content=wav())
        assert response.status_code == 201
        chunk = response.json()

    intruder = spawn()
    assert intruder.proc.wait(timeout=30) == 3
    assert "in use by another trio-audio process" in intruder.proc.communicate()[1]

    code, log = server.stop(signal.SIGTERM)
    assert code == 0, log
    assert "SIGTERM received" in log

    restarted = spawn()
    url = restarted.wait_ready()
    with httpx.Client(base_url=url, timeout=30) as client:
        stored = client.get(f"/chunks/{chunk['chunk_id']}").json()
    # The transcript may have moved on since (a tone has no speech: done, with no words).
    assert stored.pop("transcript")["words"] == chunk.pop("transcript")["words"] == []
    assert stored == chunk
    assert restarted.stop(signal.SIGINT)[0] == 0


def test_bad_flags_and_environment_are_refused(tmp_path: Path) -> None:
    env_dir = tmp_path / "from-env"
    proc = subprocess.run(
        [sys.executable, "-m", "trio_audio", "serve", "--port", "not-a-port"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert proc.returncode == 2
    proc = subprocess.run(
        [sys.executable, "-m", "trio_audio", "serve", "--data-dir", str(env_dir)],
        capture_output=True, text=True, timeout=30,
        env={**os.environ, "TRIO_AUDIO_FSYNC": "sometimes"},
    )  # fmt: skip
    assert proc.returncode == 2
    assert "fsync must be one of" in proc.stderr
