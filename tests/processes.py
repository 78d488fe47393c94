"""The service as a child process: ``trio-audio serve`` on port 0, ready once it logs its URL."""

from __future__ import annotations

import errno
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

SERVING = re.compile(r"serving HTTP on (http://\S+),")


def _hangup_as_from_a_terminal() -> None:
    """In the child: SIGHUP back to its default. The service leaves SIGHUP alone when it
    starts with it ignored (``nohup``), and a test run under ``nohup`` would pass that on."""
    signal.signal(signal.SIGHUP, signal.SIG_DFL)


class Process:
    """``trio-audio serve`` as a child process on port 0."""

    def __init__(self, data_dir: Path, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "trio_audio", "serve", "--port", "0", "--ws-port", "0",
             "--data-dir", str(data_dir), *args],
            stderr=subprocess.PIPE, text=True, preexec_fn=_hangup_as_from_a_terminal,
        )  # fmt: skip
        self.log: list[str] = []
        self.url = ""

    def wait_ready(self, timeout: float = 30) -> str:
        assert self.proc.stderr is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                break
            self.log.append(line)
            match = SERVING.search(line)
            if match:
                self.url = match.group(1)
                return self.url
        self.proc.kill()
        raise AssertionError("server did not start:\n" + "".join(self.log))

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> tuple[int, str]:
        self.proc.send_signal(sig)
        _, rest = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, "".join(self.log) + rest


def on_a_terminal(command: list[str], timeout_s: float = 60) -> str:
    """Run *command* with a pseudo-terminal as its stdout and stderr; all it wrote there
    (it must exit 0)."""
    main_fd, terminal = pty.openpty()
    proc = subprocess.Popen(command, stdout=terminal, stderr=terminal)
    os.close(terminal)
    out = b""
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([main_fd], [], [], left)[0]:
                shown = out.decode(errors="replace")[-500:]
                raise AssertionError(f"no end after {timeout_s} s: {shown!r}")
            try:
                data = os.read(main_fd, 65536)
            except OSError as exc:  # EIO: the terminal closed
                assert exc.errno == errno.EIO
                break
            if not data:
                break
            out += data
        assert proc.wait(timeout=max(1.0, deadline - time.monotonic())) == 0
    finally:
        os.close(main_fd)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return out.decode()


def terminal_lines(screen: str) -> list[str]:
    """What a terminal shows of each line written: the text after its last carriage return."""
    return [re.sub(r"\x1b\[K", "", line.rstrip("\r")).rsplit("\r", 1)[-1]
            for line in screen.split("\n")]  # fmt: skip
