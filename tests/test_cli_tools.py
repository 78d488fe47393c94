"""``trio-audio upload``, ``sessions`` and ``token list|revoke`` against a real server."""

from __future__ import annotations

import json
import stat
import threading
from pathlib import Path

import pytest
import trio

from trio_audio.__main__ import main
from trio_audio.web.auth import Tokens, add_token, digest, locked

from .conftest import StartServer
from .speech import OTHER_SENTENCE, SENTENCE, speak, to_wav


async def run(*argv: str) -> int:
    """The CLI in a thread (it blocks on HTTP) while this thread's Trio serves."""
    with trio.fail_after(60):
        code: int = await trio.to_thread.run_sync(main, list(argv))
    return code


def speech_files(directory: Path) -> list[Path]:
    files = []
    for i, text in enumerate([SENTENCE, OTHER_SENTENCE, SENTENCE]):
        path = directory / f"{i}.wav"
        path.write_bytes(to_wav(speak(text)))
        files.append(path)
    return files


async def test_upload_prints_each_chunk_and_a_summary_then_sessions_lists_them(
    start_server: StartServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server = await start_server()
    files = speech_files(tmp_path)
    bad = tmp_path / "notes.txt"
    bad.write_text("not audio")
    code = await run("upload", *map(str, files), str(bad), "--user", "alice",
                     "--session", "cli", "--url", server.url)  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 1  # one file failed
    lines = out.splitlines()
    assert len(lines) == len(files) + 1
    ids = [line.split()[0] for line in lines[:-1]]
    assert [line.split()[2] for line in lines[:-1]] == ["0", "1", "2"]  # seqs in file order
    assert all(str(f) in line for f, line in zip(files, lines, strict=False))
    assert "3 stored, 0 already stored, 1 failed" in lines[-1]
    assert f"{bad}: 415 unsupported_media_type" in err
    assert "4/4 files" in err  # the progress bar reached the end

    async with server.client() as client:
        listing = (await client.get("/sessions/alice")).json()
    assert [c["chunk_id"] for c in listing["sessions"][0]["chunks"]] == ids

    assert await run("sessions", "alice", "--url", server.url) == 0
    table = capsys.readouterr().out
    assert "session cli: 3 chunks" in table
    assert all(chunk_id in table for chunk_id in ids)
    assert "alice: 1 session, 3 chunks" in table

    assert await run("sessions", "alice", "--session", "cli", "--json", "--url", server.url) == 0
    assert [
        c["chunk_id"] for c in json.loads(capsys.readouterr().out)["sessions"][0]["chunks"]
    ] == (ids)


async def test_sessions_follows_every_page(
    start_server: StartServer, capsys: pytest.CaptureFixture[str]
) -> None:
    server = await start_server()
    async with server.client() as client:
        for session in ("a", "b"):
            for _ in range(3):
                response = await client.post(
                    "/upload", params={"user_id": "bob", "session_id": session},
                    content=to_wav(speak(SENTENCE)),
                )  # fmt: skip
                assert response.status_code == 201
    # Pages of 2 chunks: 3 requests, session "b" split across the last two.
    assert await run("sessions", "bob", "--json", "--page-size", "2", "--url", server.url) == 0
    listing = json.loads(capsys.readouterr().out)
    assert [(s["session_id"], [c["seq"] for c in s["chunks"]]) for s in listing["sessions"]] == [
        ("a", [0, 1, 2]),
        ("b", [0, 1, 2]),
    ]


async def test_upload_and_sessions_with_a_token(
    start_server: StartServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tokens = tmp_path / "tokens"
    token = add_token(tokens, "alice")
    server = await start_server(tokens_file=str(tokens))
    files = speech_files(tmp_path)[:1]
    args = ("--url", server.url)
    assert await run("upload", str(files[0]), "--user", "alice", "--session", "s", *args) == 1
    assert "401 unauthorized" in capsys.readouterr().err
    assert await run("upload", str(files[0]), "--user", "alice", "--session", "s",
                     f"--token={token}", *args) == 0  # fmt: skip
    assert await run("sessions", "bob", f"--token={token}", *args) == 1
    assert "404 not_found" in capsys.readouterr().err
    assert await run("sessions", "alice", f"--token={token}", *args) == 0
    assert "session s: 1 chunk" in capsys.readouterr().out


def test_token_list_and_revoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "tokens"
    a1, a2, b = add_token(path, "alice"), add_token(path, "alice"), add_token(path, "bob")
    with path.open("a") as f:
        f.write("# a comment stays\n")
    assert main(["token", "list", "--tokens-file", str(path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [f"{user}  sha256:{digest(t)[:16]}" for user, t in
                   [("alice", a1), ("alice", a2), ("bob", b)]]  # fmt: skip
    assert all(t not in "".join(out) for t in (a1, a2, b))  # never the tokens themselves

    # One of alice's tokens, by a digest prefix; then the rest of hers.
    assert main(["token", "revoke", "alice", "--digest", digest(a1)[:10],
                 "--tokens-file", str(path)]) == 0  # fmt: skip
    users = {d: u for d, u in Tokens.load(path).entries}
    assert users == {digest(a2): "alice", digest(b): "bob"}
    assert main(["token", "revoke", "alice", "--tokens-file", str(path)]) == 0
    assert Tokens.load(path).entries == ((digest(b), "bob"),)
    assert "# a comment stays" in path.read_text()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600

    assert main(["token", "revoke", "alice", "--tokens-file", str(path)]) == 1
    assert "no token of 'alice'" in capsys.readouterr().err
    assert main(["token", "list"]) == 2  # no file named


def test_a_token_added_while_a_revoke_rewrites_the_file_is_not_lost(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    add_token(path, "bob")
    added: list[str] = []
    with locked(path):  # what a revoke holds while it reads and replaces the file
        adder = threading.Thread(target=lambda: added.append(add_token(path, "carol")))
        adder.start()
        adder.join(timeout=0.5)
        assert adder.is_alive()  # the add waits for the rewrite to finish
        assert main(["token", "list", "--tokens-file", str(path)]) == 0  # reading never waits
        path.write_text(path.read_text())  # the rewrite (as revoke's replace)
    adder.join(timeout=10)
    assert [u for _, u in Tokens.load(path).entries] == ["bob", "carol"]
    assert main(["token", "revoke", "bob", "--tokens-file", str(path)]) == 0
    assert Tokens.load(path).entries == ((digest(added[0]), "carol"),)
