"""The web console: a static page at ``/`` (live capture, browse, health), ``/docs`` (the
OpenAPI document, rendered and tryable) and their files under ``/static/``.

Everything is served from the package (``trio_audio/web/static``): no build step, no third
party. Each response carries a strict Content-Security-Policy (scripts, styles and the
AudioWorklet only from this origin, no inline code, connections only back to this origin), so
a stored chunk or a crafted query cannot make the page run anything it did not ship.

Caching: the files are read once, at start-up; each has a strong ``ETag`` (its SHA-256) and
``Cache-Control: no-cache``, so a browser revalidates cheaply (304) and never runs a stale
script after an upgrade.
"""

from __future__ import annotations

import hashlib
from importlib import resources
from importlib.resources.abc import Traversable
from typing import Final

import attrs
from quart import Blueprint, Response, request
from quart_trio import QuartTrio

from ..errors import NotFound

CONTENT_TYPES: Final = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".png": "image/png",
    ".svg": "image/svg+xml",
    ".txt": "text/plain; charset=utf-8",
}
CSP: Final = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' blob: data:",
        "media-src 'self' blob:",
        "connect-src 'self'",
        "worker-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)
SECURITY_HEADERS: Final = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
}
PAGES: Final = {"/": "index.html", "/docs": "docs.html"}


@attrs.frozen
class Asset:
    body: bytes
    content_type: str
    etag: str


def load_assets() -> dict[str, Asset]:
    """Every file under ``static/`` by its relative path (read once; a few tens of kB)."""
    assets: dict[str, Asset] = {}
    root = resources.files(__package__).joinpath("static")

    def walk(node: Traversable, prefix: str) -> None:
        for child in node.iterdir():
            name = prefix + child.name
            if child.is_dir():
                walk(child, name + "/")
                continue
            suffix = "." + child.name.rsplit(".", 1)[-1] if "." in child.name else ""
            if suffix not in CONTENT_TYPES:
                continue
            body = child.read_bytes()
            etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
            assets[name] = Asset(body, CONTENT_TYPES[suffix], etag)

    walk(root, "")
    return assets


def register_console(app: QuartTrio) -> None:
    """Add ``GET /``, ``GET /docs`` and ``GET /static/<path>`` to *app*, as the blueprint
    ``console`` (pages, not API: the OpenAPI document leaves them out). No auth is needed:
    the page holds no data; what it shows comes from the API, with the user's token."""
    assets = load_assets()
    missing = [name for name in PAGES.values() if name not in assets]
    if missing:  # a broken install; fail at start-up, not on the first visit
        msg = f"the console's files are missing from the package: {', '.join(missing)}"
        raise RuntimeError(msg)

    def send(asset: Asset) -> Response:
        headers = {**SECURITY_HEADERS, "ETag": asset.etag, "Cache-Control": "no-cache"}
        if asset.etag in request.headers.get("If-None-Match", ""):
            return Response(b"", status=304, headers=headers)
        return Response(asset.body, content_type=asset.content_type, headers=headers)

    console = Blueprint("console", __name__)

    @console.get("/")
    async def console_page() -> Response:
        return send(assets[PAGES["/"]])

    @console.get("/docs")
    async def docs_page() -> Response:
        return send(assets[PAGES["/docs"]])

    @console.get("/static/<path:name>")
    async def static_file(name: str) -> Response:
        asset = assets.get(name)
        if asset is None:
            raise NotFound(f"no static file {name[:100]!r}")
        return send(asset)

    app.register_blueprint(console)
