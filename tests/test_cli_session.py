"""``export``, ``delete``, ``demo`` and the CLI's edges (refusals, re-runs, pipes, terminals),
each against a real server."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import srt
import trio

from trio_audio import __version__
from trio_audio.__main__ import main

from .audio_samples import encode, sine
from .conftest import StartServer
from .processes import on_a_terminal, terminal_lines
from .test_cli_tools import speech_files

RATE = 16000


async def run(*argv: str) -> int:
    """The CLI in a thread (it blocks on HTTP) while this thread's Trio serves."""
    with trio.fail_after(60):
        code: int = await trio.to_thread.run_sync(main, list(argv))
    return code


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "trio_audio", *args]


async def subprocess_run(args: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    def go() -> subprocess.CompletedProcess[str]:
        return subprocess.run(args, capture_output=True, text=True, timeout=60, check=False,
                              **kwargs)  # type: ignore[call-overload,no-any-return]  # fmt: skip

    return await trio.to_thread.run_sync(go)


def test_version() -> None:
    done = subprocess.run(command("--version"), capture_output=True, text=True, check=True)
    assert done.stdout.strip() == f"trio-audio {__version__}"


async def test_export_every_format_then_delete_a_chunk_and_the_session(
    start_server: StartServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server = await start_server()
    async with server.client() as client:
        for seq in (0, 2):
            response = await client.post(
                "/upload", params={"user_id": "alice", "session_id": "s", "seq": seq},
                content=encode(sine(440, 0.5), RATE, "WAV", "PCM_16"),
            )  # fmt: skip
            assert response.status_code == 201
    url = ("--url", server.url)
    assert await run("export", "alice", "s", "-o", str(tmp_path / "s.wav"), *url) == 0
    samples, rate = sf.read(tmp_path / "s.wav", dtype="int16")
    assert rate == RATE and len(samples) == 3 * RATE // 2  # seq 1 is half a second of silence
    assert not samples[RATE // 2 : RATE].any()
    assert "seqs 1 missing: 500.0 ms of silence" in capsys.readouterr().err
    for kind in ("json", "txt", "srt", "vtt"):
        out = tmp_path / f"s.{kind}"
        assert await run("export", "alice", "s", "--format", kind, "-o", str(out), *url) == 0
        assert out.exists() and not out.with_name(out.name + ".part").exists()
    assert json.loads((tmp_path / "s.json").read_text())["status"] == "disabled"
    assert list(srt.parse((tmp_path / "s.srt").read_text())) == []  # no words: no cues
    assert (tmp_path / "s.vtt").read_text().startswith("WEBVTT")

    assert await run("export", "alice", "nope", "-o", str(tmp_path / "n.wav"), *url) == 1
    assert "404 not_found: user 'alice' has no session 'nope'" in capsys.readouterr().err
    assert not (tmp_path / "n.wav").exists()

    async with server.client() as client:
        first = (await client.get("/sessions/alice")).json()["sessions"][0]["chunks"][0]
    assert await run("delete", "--chunk", first["chunk_id"], *url) == 0
    assert await run("delete", "alice", "s", *url) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"deleted chunk {first['chunk_id']}",
        "deleted session alice/s: 1 chunk",
    ]
    assert await run("delete", "alice", "s", *url) == 1
    assert "404 not_found" in capsys.readouterr().err
    assert await run("delete", "alice", *url) == 2  # a session needs both ids


async def test_a_refused_upload_says_what_the_server_said(
    start_server: StartServer, tmp_path: Path
) -> None:
    server = await start_server()
    big = tmp_path / "big.wav"
    noise = np.random.default_rng(1).integers(-3000, 3000, (1_500_000, 8), dtype=np.int16)
    sf.write(big, noise, RATE, subtype="PCM_16")  # 24 MB, over the 16 MiB body limit
    done = await subprocess_run(command("upload", str(big), "--user", "a", "--session", "s",
                                        "--url", server.url))  # fmt: skip
    assert done.returncode == 1
    assert f"{big}: 413 payload_too_large: the body is over the 16777216 byte limit" in done.stderr
    assert "Broken pipe" not in done.stderr
    assert "0 stored, 0 already stored, 1 failed" in done.stdout


async def test_running_an_upload_again_stores_nothing_twice(
    start_server: StartServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server = await start_server()
    files = speech_files(tmp_path)  # the first and last are the same bytes
    args = ("--user", "alice", "--session", "s", "--url", server.url)
    assert await run("upload", str(files[0]), *args) == 0  # a run that stopped after one file
    capsys.readouterr()
    assert await run("upload", *map(str, files), *args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "skipped: already stored" in lines[0] and str(files[0]) in lines[0]
    assert [line.split()[2] for line in lines[:3]] == ["0", "1", "2"]
    assert "2 stored, 1 already stored, 0 failed" in lines[-1]
    assert await run("upload", *map(str, files), *args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert all("skipped: already stored" in line for line in lines[:3])
    assert "0 stored, 3 already stored, 0 failed" in lines[-1]
    async with server.client() as client:
        listing = (await client.get("/sessions/alice")).json()
    assert [c["seq"] for c in listing["sessions"][0]["chunks"]] == [0, 1, 2]


async def test_a_pipe_closed_early_ends_quietly(start_server: StartServer) -> None:
    server = await start_server()
    async with server.client() as client:
        for seq in range(40):  # a listing well over a pipe's 64 KiB buffer
            response = await client.post(
                "/upload", params={"user_id": "alice", "session_id": "s", "seq": seq},
                content=encode(sine(300 + seq, 0.5), RATE, "WAV", "PCM_16"),
            )  # fmt: skip
            assert response.status_code == 201

    def first_line_then_close(args: list[str]) -> tuple[bytes, int, bytes]:
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert proc.stdout is not None and proc.stderr is not None
        line = proc.stdout.readline()
        proc.stdout.close()  # as `| head -1` does
        err = proc.stderr.read()
        return line, proc.wait(timeout=60), err

    for args in (
        command("sessions", "alice", "--json", "--url", server.url),
        command("export", "alice", "s", "--format", "wav", "--url", server.url),
    ):
        line, code, err = await trio.to_thread.run_sync(first_line_then_close, args)
        assert line
        assert code == 141, err.decode()
        assert b"Traceback" not in err and b"BrokenPipe" not in err


async def test_result_lines_never_share_the_progress_bars_line(
    start_server: StartServer, tmp_path: Path
) -> None:
    server = await start_server()
    files = speech_files(tmp_path)

    upload = command("upload", *map(str, files), "--user", "a", "--session", "s", "--url",
                     server.url)  # fmt: skip
    screen = await trio.to_thread.run_sync(on_a_terminal, upload)
    shown = terminal_lines(screen)
    results = [line for line in shown if " seq " in line]
    assert len(results) == 3
    assert all(re.match(r"^[0-9a-f]{28}  seq ", line) for line in results), shown
    assert any(line.startswith("[####") for line in shown)  # the bar was drawn


async def test_demo_shows_the_words_of_the_shipped_sample(start_server: StartServer) -> None:
    server = await start_server(asr_engine="whisper")  # the default engine and weights
    done = await subprocess_run(command("demo", "--url", server.url))
    assert done.returncode == 0, done.stderr
    last = done.stdout.splitlines()[-1]
    assert last.startswith("transcript done:")
    said = re.sub(r"[^a-z ]", "", last.removeprefix("transcript done:").lower()).split()
    assert said == ["hello", "please", "turn", "on", "the", "kitchen", "light"]
    assert "uploaded hello.flac" in done.stderr
    again = await subprocess_run(command("demo", "--url", server.url))
    assert again.returncode == 0
    assert "holds the sample already" in again.stderr
    async with server.client() as client:
        listing = (await client.get("/sessions/demo")).json()
    assert listing["sessions"][0]["chunk_count"] == 1


def test_serve_says_where_its_data_is_as_an_absolute_path(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        command("serve", "--port", "0", "--ws-port", "0", "--data-dir", "data",
                "--asr-engine", "none"),
        cwd=tmp_path, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stderr is not None
    try:
        for line in proc.stderr:
            if "serving HTTP on" in line:
                assert line.rstrip().endswith(f", data in {(tmp_path / 'data').resolve()}")
                break
        else:
            raise AssertionError("serve did not start")
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


async def test_upload_sample_sends_the_shipped_speech(
    start_server: StartServer, capsys: pytest.CaptureFixture[str]
) -> None:
    server = await start_server()
    args = ("--user", "u", "--session", "s", "--url", server.url)
    assert await run("upload", "--sample", *args) == 0
    line = capsys.readouterr().out.splitlines()[0]
    assert line.endswith("samples/hello.flac") and " stored " in line
    assert await run("upload", *args) == 2  # nothing to upload
    sample = Path(__file__).parent.parent / "trio_audio" / "samples" / "hello.flac"
    assert sample.stat().st_size < 100_000
