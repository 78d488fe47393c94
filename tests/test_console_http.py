"""The console's routes over HTTP: pages, static files, their headers; no browser needed."""

from __future__ import annotations

import fnmatch
import re
import tomllib
from pathlib import Path

import httpx
import pytest

from trio_audio.web.auth import add_token
from trio_audio.web.console import load_assets

from .conftest import StartServer


@pytest.mark.parametrize(
    ("path", "content_type", "marker"),
    [
        ("/", "text/html; charset=utf-8", b"/static/app.js"),
        ("/docs", "text/html; charset=utf-8", b"/static/docs.js"),
        ("/static/app.js", "text/javascript; charset=utf-8", b'from "./browse.js"'),
        ("/static/live.js", "text/javascript; charset=utf-8", b"new WebSocket("),
        ("/static/pcm-worklet.js", "text/javascript; charset=utf-8", b"registerProcessor"),
        ("/static/app.css", "text/css; charset=utf-8", b"--accent"),
    ],
)
async def test_pages_and_files_with_their_types_and_csp(
    client: httpx.AsyncClient, path: str, content_type: str, marker: bytes
) -> None:
    response = await client.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"] == content_type
    assert marker in response.content
    csp = response.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp
    assert "unsafe" not in csp and "http" not in csp  # no inline code, no other origin
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["cache-control"] == "no-cache"

    again = await client.get(path, headers={"If-None-Match": response.headers["etag"]})
    assert again.status_code == 304 and again.content == b""


async def test_the_pages_hold_no_inline_script_or_style() -> None:
    for name, asset in load_assets().items():
        if name.endswith(".html"):
            text = asset.body.decode()
            assert "<script>" not in text and "<style" not in text, name
            assert not re.search(r"\son[a-z]+\s*=", text), name  # no onclick= handlers


def test_every_console_file_is_in_the_wheel() -> None:
    """pyproject's package-data names every file the console serves (``pip install .``
    would leave the others out)."""
    root = Path(__file__).parent.parent
    patterns = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]["trio_audio.web"]
    assets = load_assets()
    scripts = {"app.js", "api.js", "ui.js", "live.js", "browse.js", "chunk.js", "health.js"}
    assert {"index.html", "docs.html", "docs.js", "pcm-worklet.js", *scripts} <= set(assets)
    for name in assets:
        assert any(fnmatch.fnmatch(f"static/{name}", p) and "/" not in name for p in patterns), name


@pytest.mark.parametrize("path", ["/static/nope.js", "/static/../app.py", "/static/"])
async def test_unknown_static_files_are_404_problems(client: httpx.AsyncClient, path: str) -> None:
    response = await client.get(path)
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"


async def test_the_console_needs_no_token_but_the_data_does(
    start_server: StartServer, tmp_path: Path
) -> None:
    tokens = tmp_path / "tokens"
    add_token(tokens, "alice")
    server = await start_server(tokens_file=str(tokens))
    async with server.client() as client:
        for path in ("/", "/docs", "/static/app.js", "/static/api.js"):
            assert (await client.get(path)).status_code == 200, path
        assert (await client.get("/sessions/alice")).status_code == 401
