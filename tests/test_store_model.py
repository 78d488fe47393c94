"""A stateful property test: the real service against a plain dict.

Hypothesis drives uploads, deletes of chunks and sessions, compactions, clean restarts and
crashes (the data dir copied as a kill -9 leaves it, and a new server started on the copy)
in any order; after every step the store holds exactly the model's chunks, with their
session, seq and audio bytes. The machine runs in a worker thread and calls into the test's
Trio loop (``trio.from_thread.run``), where the servers run.
"""

from __future__ import annotations

import hashlib
import itertools
import shutil
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import httpx
import trio
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from .conftest import Server, StartServer

T = TypeVar("T")
SESSIONS = st.sampled_from(["a", "b", "c"])
BODIES = st.binary(min_size=2, max_size=3000)


async def test_store_equals_a_dict_through_uploads_deletes_compactions_and_crashes(
    start_server: StartServer, tmp_path: Path
) -> None:
    dirs = itertools.count()

    def call(fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        return trio.from_thread.run(partial(fn, *args, **kwargs))

    async def start(data_dir: Path) -> Server:
        server: Server = await start_server(
            data_dir=data_dir, segment_max_bytes=8192, compact_min_bytes=1 << 40
        )
        return server

    class StoreMachine(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.data_dir = tmp_path / f"run{next(dirs)}"
            self.server = call(start, self.data_dir)
            # chunk_id -> (session, seq, body)
            self.model: dict[str, tuple[str, int, bytes]] = {}

        async def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
            async with self.server.client() as client:
                return await client.request(method, url, **kwargs)

        @initialize(uploads=st.lists(st.tuples(SESSIONS, BODIES), min_size=1, max_size=6))
        def seed(self, uploads: list[tuple[str, bytes]]) -> None:
            for session, body in uploads:
                self.upload(session, body)

        @rule(session=SESSIONS, body=BODIES)
        def upload(self, session: str, body: bytes) -> None:
            body = b"\0\0" + body[: len(body) // 2 * 2]  # whole samples, no container magic
            params = {"user_id": "u", "session_id": session, "encoding": "pcm_s16le",
                      "sample_rate": 8000, "channels": 1}  # fmt: skip
            response = call(self.request, "POST", "/upload", params=params, content=body)
            assert response.status_code == 201, response.text
            chunk = response.json()
            self.model[chunk["chunk_id"]] = (session, chunk["seq"], body)

        @precondition(lambda self: self.model)
        @rule(data=st.data())
        def delete_chunk(self, data: st.DataObject) -> None:
            chunk_id = data.draw(st.sampled_from(sorted(self.model)))
            response = call(self.request, "DELETE", f"/chunks/{chunk_id}")
            assert response.status_code == 200, response.text
            del self.model[chunk_id]

        @rule(session=SESSIONS)
        def delete_session(self, session: str) -> None:
            response = call(self.request, "DELETE", "/sessions/u", params={"session_id": session})
            doomed = {c for c, (s, _, _) in self.model.items() if s == session}
            assert response.status_code == (200 if doomed else 404), response.text
            if doomed:
                assert set(response.json()["chunk_ids"]) == doomed
            for chunk_id in doomed:
                del self.model[chunk_id]

        @rule()
        def compact(self) -> None:
            call(self.server.running.store.compact)

        @rule()
        def restart(self) -> None:
            call(self.server.stop)
            self.server = call(start, self.data_dir)

        @rule()
        def crash(self) -> None:
            # Between requests the files are what a kill -9 would leave: copy them, then
            # run a new server on the copy (the old one stops on its own directory).
            copy = tmp_path / f"run{next(dirs)}"
            shutil.copytree(self.data_dir, copy)
            (copy / "LOCK").unlink()
            call(self.server.stop)
            self.data_dir = copy
            self.server = call(start, copy)

        @invariant()
        def store_equals_model(self) -> None:
            store = self.server.running.store
            assert set(store.chunk_ids()) == set(self.model)
            for chunk_id, (session, seq, body) in self.model.items():
                chunk = call(store.get, chunk_id)
                assert (chunk["session_id"], chunk["seq"]) == (session, seq)
                assert chunk["checksum"] == hashlib.sha256(body).hexdigest()
                assert call(store.read_audio, chunk_id)[0] == body
            by_session: dict[str, list[int]] = {}
            for session, seq, _ in self.model.values():
                by_session.setdefault(session, []).append(seq)
            stored = {
                name: [seq for seq, _ in store.chunks_after("u", name, None)]
                for name in store.session_ids("u")
            }
            assert stored == {s: sorted(seqs) for s, seqs in by_session.items()}

        def teardown(self) -> None:
            call(self.server.stop)

    run = settings(
        max_examples=15,
        stateful_step_count=20,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    await trio.to_thread.run_sync(lambda: run_state_machine_as_test(StoreMachine, settings=run))
