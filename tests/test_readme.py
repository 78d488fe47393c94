"""The README's curl walk-through runs as written, from a fresh shell, against a real server."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import trio

from .conftest import Server, StartServer

ROOT = Path(__file__).resolve().parent.parent
FRESH_PATH = "/usr/bin:/bin"  # a fresh shell: the system python3, no numpy on it


def sh_block(heading: str) -> str:
    """The first ``sh`` block under the README's *heading*."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index(heading) :]
    match = re.search(r"```sh\n(.*?)```", section, re.S)
    assert match is not None
    return match.group(1)


def curl_block() -> str:
    return sh_block("## Try it with curl")


async def test_the_first_run_shows_a_real_transcript(
    start_server: StartServer, tmp_path: Path
) -> None:
    """The README's first run, as written, against the default speech engine: the words of
    the shipped sample come back, not an empty transcript."""
    server = await start_server(asr_engine="whisper")
    (tmp_path / ".venv").symlink_to(sys.prefix, target_is_directory=True)
    env = {"PATH": FRESH_PATH, "HOME": os.environ.get("HOME", str(tmp_path)),
           "TRIO_AUDIO_URL": server.url}  # fmt: skip
    with trio.fail_after(180):
        done = await trio.run_process(
            ["bash", "-e", "-o", "pipefail", "-c", sh_block("## First run")], cwd=tmp_path,
            env=env, capture_stdout=True, capture_stderr=True, check=False,
        )  # fmt: skip
    out = done.stdout.decode().lower()
    assert done.returncode == 0, done.stderr.decode()
    assert "kitchen light" in out


async def test_the_curl_block_runs_as_written(server: Server, tmp_path: Path) -> None:
    # The set-up section's venv (this one, with the package installed), where the block
    # expects it: in the current directory.
    (tmp_path / ".venv").symlink_to(sys.prefix, target_is_directory=True)
    assert (tmp_path / ".venv" / "bin" / "python3").exists()
    block = curl_block().replace("localhost:8000", server.url.removeprefix("http://"))
    env = {"PATH": FRESH_PATH, "HOME": os.environ.get("HOME", str(tmp_path))}
    with trio.fail_after(120):
        done = await trio.run_process(
            ["bash", "-e", "-o", "pipefail", "-c", block], cwd=tmp_path, env=env,
            capture_stdout=True, capture_stderr=True, check=False,
        )  # fmt: skip
    out, err = done.stdout.decode(), done.stderr.decode()
    assert done.returncode == 0, err
    assert "identical" in out
    assert out.count('"chunk_id"') >= 6  # three uploads, two in one multipart, the chunk read
    assert '"code"' not in out  # no problem document anywhere
