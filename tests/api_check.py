"""Run schemathesis against a live server from its own OpenAPI document: ``nox -s api``.

Starts ``trio-audio serve`` on port 0 with a scratch data dir, runs schemathesis with the
``not_a_server_error`` check (no 500s, whatever it sends), stops the server, and exits with
schemathesis' status.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

SERVING = re.compile(r"serving HTTP on (http://\S+),")


def main(extra: list[str]) -> int:
    with tempfile.TemporaryDirectory() as data:
        server = subprocess.Popen(
            [sys.executable, "-m", "trio_audio", "serve", "--port", "0", "--ws-port", "0",
             "--data-dir", data, "--asr-engine", "none", "--rate-limit-per-s", "0"],
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert server.stderr is not None
        url = None
        for line in server.stderr:
            sys.stderr.write(line)
            if match := SERVING.search(line):
                url = match.group(1)
                break
        if url is None:
            server.kill()
            return 1
        # Keep reading the server's log so it never blocks on a full pipe.
        threading.Thread(target=lambda: sys.stderr.writelines(server.stderr), daemon=True).start()
        schemathesis = str(Path(sys.executable).with_name("schemathesis"))
        try:
            return subprocess.call(
                [schemathesis, "run", f"{url}/openapi.json", "--checks", "not_a_server_error",
                 "--max-examples", "60", *extra],
            )  # fmt: skip
        finally:
            server.terminate()
            server.wait(timeout=30)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
