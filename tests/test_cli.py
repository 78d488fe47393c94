"""The command line's failures, as a user meets them: one clear line and a documented exit."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from trio_audio.__main__ import build_parser

from .audio_samples import wav

EXIT_LISTEN = 4  # documented: a port cannot be listened on


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port someone else is listening on."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        yield taken.getsockname()[1]


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "trio_audio", *args], capture_output=True,
                          text=True, timeout=timeout, check=False)  # fmt: skip


@pytest.mark.parametrize(
    ("flag", "other", "name"),
    [("--port", "--ws-port", "HTTP"), ("--ws-port", "--port", "WebSocket")],
)
def test_a_busy_port_is_one_line_and_exit_4(
    busy_port: int, tmp_path: Path, flag: str, other: str, name: str
) -> None:
    done = run("serve", flag, str(busy_port), other, "0", "--data-dir", str(tmp_path),
               "--asr-engine", "none", "--log-level", "warning")  # fmt: skip
    assert done.returncode == EXIT_LISTEN, done.stderr
    assert done.stderr.splitlines() == [
        f"trio-audio: cannot listen on the {name} port 127.0.0.1:{busy_port}: "
        "address already in use"
    ]


def test_stream_to_a_server_that_is_down_says_connection_refused(tmp_path: Path) -> None:
    audio = tmp_path / "a.wav"
    audio.write_bytes(wav(440, 0.2))
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"ws://127.0.0.1:{port}/ws"
    done = run("stream", str(audio), "--url", url, "--retries", "1")
    assert done.returncode == 1
    assert done.stdout == ""  # stdout is the transcript; what went wrong goes to stderr
    assert f'"reason": "connection refused: {url}"' in done.stderr
    assert done.stderr.splitlines()[-1] == (
        f"trio-audio: gave up after 1 retries: connection refused: {url}"
    )


@pytest.mark.parametrize("command", ["stream", "bench"])
def test_help_shows_every_default(command: str) -> None:
    done = run(command, "--help")
    assert done.returncode == 0
    text = " ".join(done.stdout.split())  # as one line, however argparse wrapped it
    parser = build_parser()
    sub = next(a for a in parser._subparsers._group_actions  # type: ignore[union-attr]
               if hasattr(a, "choices")).choices[command]  # fmt: skip
    for action in sub._actions:
        if action.dest == "help" or action.required:
            continue
        assert action.help and "default" in action.help, action.dest
        if action.default not in (None, False, "", []) and action.dest != "token":
            assert f"default: {action.default}" in text, action.dest
