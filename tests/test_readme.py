"""The README's curl walk-through runs as written, from a fresh shell, against a real server."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import trio

from .conftest import Server

ROOT = Path(__file__).resolve().parent.parent
FRESH_PATH = "/usr/bin:/bin"  # a fresh shell: the system python3, no numpy on it


def curl_block() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Try it with curl") :]
    match = re.search(r"```sh\n(.*?)```", section, re.S)
    assert match is not None
    return match.group(1)


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
