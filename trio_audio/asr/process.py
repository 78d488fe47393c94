"""One transcription worker process (``python -m trio_audio.asr.worker``) and its pipe.

Resource handling: ``start`` runs the process with ``trio.run_process`` in the nursery it is
given, under a cancel scope of its own, so the process never outlives that nursery.
``aclose`` closes its stdin (the worker exits), waits ``STOP_GRACE_S``, then cancels the
scope, which kills it. Shielded and bounded, so it is safe in ``finally``.

Error handling: a worker that exits, breaks the protocol or does not answer in time raises
``WorkerDied`` and is closed; the caller starts a new one for the next request.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Final

import trio

from .engine import EngineError
from .protocol import HEADER, decode_body, encode_frame, frame_length

logger = logging.getLogger("trio_audio.asr")

PACKAGE_ROOT: Final = str(Path(__file__).resolve().parent.parent.parent)  # holds trio_audio
STOP_GRACE_S: Final = 2.0  # a worker gets this long to exit after its stdin closes
START_TIMEOUT_S: Final = 120.0  # loading a model can take a while on a busy machine


class WorkerDied(Exception):
    """The worker process exited, broke the protocol or timed out."""


class WorkerProcess:
    """One worker process and its framed request/answer pipe."""

    def __init__(self, index: int, init: dict[str, Any]) -> None:
        self.index = index
        self.init = init
        self.engine = ""
        self._process: trio.Process | None = None
        self._scope: trio.CancelScope | None = None
        self._buffer = bytearray()

    @property
    def running(self) -> bool:
        return self._process is not None

    @property
    def pid(self) -> int:
        return self._process.pid if self._process is not None else 0

    async def start(self, nursery: trio.Nursery) -> None:
        """Run the process in *nursery* and load its engine (``EngineError`` if it cannot)."""
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
        scope = self._scope = trio.CancelScope()

        async def run(*, task_status: trio.TaskStatus[trio.Process]) -> None:
            with scope:
                await trio.run_process(
                    [sys.executable, "-m", "trio_audio.asr.worker"],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    env=env,
                    check=False,
                    # Not in the terminal's process group: a Ctrl-C is the service's to
                    # handle (it closes the worker's stdin), even while the worker imports.
                    start_new_session=True,
                    task_status=task_status,
                )

        self._process = await nursery.start(run)
        self._buffer.clear()
        answer = await self.request(self.init, timeout_s=START_TIMEOUT_S)
        if not answer.get("ok"):
            await self.aclose()
            raise EngineError(answer.get("error", "the worker could not start"))
        self.engine = answer["engine"]
        logger.info("transcription worker %d: pid %d, %s", self.index, self.pid, self.engine)

    async def request(self, message: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        """Send one request, return its answer; ``WorkerDied`` (and closed) on any failure."""
        process = self._process
        if process is None or process.stdin is None or process.stdout is None:
            raise WorkerDied("the worker is not running")
        try:
            with trio.fail_after(timeout_s):
                await process.stdin.send_all(encode_frame(message))
                length = frame_length(await self._read(process, HEADER.size))
                answer = decode_body(await self._read(process, length))
        except trio.TooSlowError:
            await self.aclose()
            msg = f"worker {self.index} gave no answer within {timeout_s:g} s"
            raise WorkerDied(msg) from None
        except (trio.BrokenResourceError, trio.ClosedResourceError, ValueError) as exc:
            await self.aclose()
            raise WorkerDied(f"worker {self.index} failed: {exc!r}") from exc
        return answer

    async def _read(self, process: trio.Process, n: int) -> bytes:
        assert process.stdout is not None
        while len(self._buffer) < n:
            data = await process.stdout.receive_some(max(65536, n - len(self._buffer)))
            if not data:
                msg = f"worker {self.index} exited (status {process.poll()})"
                raise trio.BrokenResourceError(msg)
            self._buffer += data
        out = bytes(self._buffer[:n])
        del self._buffer[:n]
        return out

    async def aclose(self) -> None:
        """Close stdin (the worker exits), wait a little, then kill. Shielded, bounded."""
        process, self._process = self._process, None
        scope, self._scope = self._scope, None
        if process is None:
            return
        with trio.CancelScope(shield=True):
            if process.stdin is not None:
                with trio.move_on_after(STOP_GRACE_S):
                    await process.stdin.aclose()
            with trio.move_on_after(STOP_GRACE_S):
                await process.wait()
            if scope is not None:
                scope.cancel()  # run_process kills it if it has not exited
            with trio.move_on_after(STOP_GRACE_S):
                await process.wait()
