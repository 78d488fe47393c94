"""The data dir's lock: one process owns a data dir, a second is told who does."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from trio_audio.errors import DataDirLocked
from trio_audio.store.files import lock_data_dir


def test_lock_twice_in_one_process(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    fd = lock_data_dir(data_dir)
    try:
        assert (data_dir / "log").is_dir()
        with pytest.raises(DataDirLocked) as info:
            lock_data_dir(data_dir)
        message = str(info.value)
        assert str(data_dir) in message and f"pid {os.getpid()}" in message
        assert "in use by another trio-audio process" in message
    finally:
        os.close(fd)
    os.close(lock_data_dir(data_dir))


_LOCK_CHILD = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    from trio_audio.errors import DataDirLocked
    from trio_audio.store.files import lock_data_dir
    try:
        fd = lock_data_dir(Path(sys.argv[1]))
    except DataDirLocked as exc:
        print("LOCKED", exc, flush=True)
        sys.exit(3)
    print("OWNER", os.getpid(), flush=True)
    sys.stdin.read()
    """
)


def test_lock_across_processes(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    fd = lock_data_dir(data_dir)
    try:
        child = subprocess.run(
            [sys.executable, "-c", _LOCK_CHILD, str(data_dir)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert child.returncode == 3, child.stderr
        assert f"pid {os.getpid()}" in child.stdout and str(data_dir) in child.stdout
    finally:
        os.close(fd)

    with subprocess.Popen(
        [sys.executable, "-c", _LOCK_CHILD, str(data_dir)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as owner:
        assert owner.stdout is not None and owner.stdin is not None
        line = owner.stdout.readline().split()
        assert line == ["OWNER", str(owner.pid)]
        with pytest.raises(DataDirLocked, match=f"pid {owner.pid}"):
            lock_data_dir(data_dir)
        owner.stdin.close()
        assert owner.wait(timeout=60) == 0
    os.close(lock_data_dir(data_dir))  # released when its owner exited
