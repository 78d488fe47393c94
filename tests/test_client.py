"""``trio-audio stream`` as a user runs it: a subprocess against a real server."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import trio

from trio_audio.web.auth import add_token

from .audio_samples import encode, sine
from .conftest import Server, StartServer
from .processes import on_a_terminal, terminal_lines
from .speech import NAME, NAME_SENTENCE, OTHER_SENTENCE, RATE, SENTENCE, grammar_file, speak


def stream_command(path: Path, url: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "trio_audio", "stream", str(path), "--url", url,
            "--user-id", "carol", "--session-id", "take1", "--json", *extra]  # fmt: skip


def pcm_of(path: Path) -> bytes:
    """The 16-bit PCM the client reads from *path* (what must arrive, whole)."""
    data, _ = sf.read(path, dtype="int16")
    return np.ascontiguousarray(data, "<i2").tobytes()


def messages(output: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in output.decode().splitlines() if line.strip()]


async def stored_pcm(server: Server) -> tuple[list[int], bytes]:
    async with server.client() as client:
        session = (await client.get("/sessions/carol")).json()["sessions"][0]
        audio = b""
        for chunk in session["chunks"]:
            audio += (await client.get(f"/chunks/{chunk['chunk_id']}/audio")).content
    return [c["seq"] for c in session["chunks"]], audio


async def test_streams_a_file_and_prints_results(server: Server, tmp_path: Path) -> None:
    samples = sine(440.0, seconds=1.0, rate=16000)
    path = tmp_path / "tone.flac"
    path.write_bytes(encode(samples, 16000, "FLAC", "PCM_16"))
    with trio.fail_after(60):
        done = await trio.run_process(
            stream_command(path, server.running.ws_url), capture_stdout=True
        )
    out = messages(done.stdout)
    assert [m["seq"] for m in out if m["type"] == "ack"] == list(range(10))
    assert sum(m["type"] == "metadata" for m in out) == 10
    assert out[-1]["type"] == "session_end" and out[-1]["summary"]["chunk_count"] == 10
    seqs, audio = await stored_pcm(server)
    assert seqs == list(range(10))
    assert audio == pcm_of(path)  # the file's samples, whole and in order


async def test_prints_the_transcript_a_line_per_final_and_no_sentence_is_missing(
    start_server: StartServer, tmp_path: Path
) -> None:
    server = await start_server(asr_engine="pocketsphinx", asr_grammar=str(grammar_file(tmp_path)),
                                asr_idle_timeout_s=300)  # fmt: skip
    path = tmp_path / "talk.flac"
    # The file ends inside the last sentence's utterance: only `end` can finalize it.
    audio = np.concatenate([speak(SENTENCE), speak(OTHER_SENTENCE, tail_s=0.0)])
    sf.write(path, audio, RATE, format="FLAC")
    command = [sys.executable, "-m", "trio_audio", "stream", str(path), "--url",
               server.running.ws_url, "--session-id", "talk"]  # fmt: skip
    with trio.fail_after(60):
        done = await trio.run_process(command, capture_stdout=True, capture_stderr=True)
    assert done.stdout.decode().splitlines() == [SENTENCE, OTHER_SENTENCE]  # not a terminal:
    assert "done: " in done.stderr.decode()  # no partials, and the rest goes to stderr


async def test_on_a_terminal_partials_rewrite_one_line_until_the_final_replaces_them(
    start_server: StartServer, tmp_path: Path
) -> None:
    server = await start_server(asr_engine="pocketsphinx", asr_grammar=str(grammar_file(tmp_path)),
                                asr_idle_timeout_s=300, asr_partial_interval_s=0.2)  # fmt: skip
    path = tmp_path / "talk.flac"
    audio = np.concatenate([speak(SENTENCE), speak(OTHER_SENTENCE, tail_s=0.0)])
    sf.write(path, audio, RATE, format="FLAC")
    command = [sys.executable, "-m", "trio_audio", "stream", str(path), "--url",
               server.running.ws_url, "--session-id", "tty", "--realtime"]  # fmt: skip
    with trio.fail_after(60):
        screen = await trio.to_thread.run_sync(on_a_terminal, command)
    shown = terminal_lines(screen)
    assert [line for line in shown if line and not line.startswith("done: ")] == [
        SENTENCE,
        OTHER_SENTENCE,
    ], shown
    # While it was spoken, partial words were drawn in place on that line, those a next
    # hypothesis may still change faint (finals never are).
    drawn = re.findall(r"\r\x1b\[K([^\r\n]+)", screen)
    faint = [d for d in drawn if "\x1b[2m" in d]
    assert faint, drawn
    heard = [w for d in faint for w in re.sub(r"\x1b\[2?2?m", "", d).split()]
    assert set(heard) <= set(SENTENCE.split()) | set(OTHER_SENTENCE.split()), faint


async def test_resumes_by_itself_across_a_server_restart(
    start_server: StartServer, tmp_path: Path
) -> None:
    first: Server = await start_server()
    ws_port = int(first.running.ws_url.rsplit(":", 1)[1].split("/")[0])
    samples = sine(300.0, seconds=3.0, rate=16000)
    path = tmp_path / "speech.wav"
    path.write_bytes(encode(samples, 16000, "WAV", "PCM_16"))
    command = stream_command(path, first.running.ws_url, "--realtime")
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            run = partial(trio.run_process, command, stdout=subprocess.PIPE, check=False)
            client = await nursery.start(run)
            assert client.stdout is not None
            output = b""
            async for data in client.stdout:  # until the stream is well under way
                output += data
                if output.count(b'"type": "ack"') >= 5:
                    break
            await first.stop()  # closes the stream with 1001, mid-file
            second: Server = await start_server(ws_port=ws_port)
            async for data in client.stdout:
                output += data
    assert client.returncode == 0
    out = messages(output)
    assert any(m["type"] == "reconnecting" for m in out)
    assert out[-1]["type"] == "session_end"
    seqs, audio = await stored_pcm(second)
    assert seqs == list(range(30))  # every chunk once, in order
    assert audio == pcm_of(path)


async def test_streams_with_a_token_to_a_server_with_auth(
    start_server: StartServer, tmp_path: Path
) -> None:
    tokens = tmp_path / "tokens"
    token = add_token(tokens, "carol")
    server: Server = await start_server(tokens_file=str(tokens))
    path = tmp_path / "tone.wav"
    path.write_bytes(encode(sine(440.0, seconds=0.3, rate=16000), 16000, "WAV", "PCM_16"))
    url = server.running.ws_url
    with trio.fail_after(60):
        refused = await trio.run_process(stream_command(path, url), capture_stdout=True,
                                         capture_stderr=True, check=False)  # fmt: skip
        done = await trio.run_process(stream_command(path, url, "--token", token),
                                      capture_stdout=True)  # fmt: skip
    assert refused.returncode == 1 and b"unauthorized" in refused.stderr
    assert messages(done.stdout)[-1]["summary"]["chunk_count"] == 3


async def test_names_words_to_expect_with_vocabulary(
    start_server: StartServer, tmp_path: Path
) -> None:
    server = await start_server(asr_engine="whisper", asr_workers=1, asr_idle_timeout_s=300)
    path = tmp_path / "name.flac"
    sf.write(path, speak(NAME_SENTENCE), RATE, format="FLAC")
    command = [sys.executable, "-m", "trio_audio", "stream", str(path), "--url",
               server.running.ws_url, "--session-id", "name", "--vocabulary", NAME]  # fmt: skip
    with trio.fail_after(90):
        done = await trio.run_process(command, capture_stdout=True, capture_stderr=True)
    (line,) = done.stdout.decode().splitlines()
    assert NAME in line  # tiny.en alone writes "Cuba needs"
