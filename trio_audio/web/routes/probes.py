"""``/healthz``, ``/readyz``, ``/metrics`` and ``/openapi.json``: open without a token."""

from __future__ import annotations

from typing import Any, Final

import attrs
from quart import Response
from quart_trio import QuartTrio

from ..context import context
from ..openapi import SPEC
from ..responses import json_response

OPEN_PATHS: Final = frozenset({"/healthz", "/readyz", "/metrics", "/openapi.json"})


async def openapi() -> Response:
    return json_response(SPEC)


async def healthz() -> Response:
    return json_response({"status": "ok"})


async def readyz() -> Response:
    ctx = context()
    stats = ctx.store.stats()
    readiness = ctx.readiness
    body: dict[str, Any] = {
        "status": "ready" if readiness.ready else "not_ready",
        **attrs.asdict(readiness),
        "chunks": stats.chunks,
        "replayed_records": stats.replayed_records,
    }
    return json_response(body, 200 if readiness.ready else 503)


async def metrics_text() -> Response:
    return Response(context().metrics.render(), content_type="text/plain; version=0.0.4")


def register(app: QuartTrio) -> None:
    app.add_url_rule("/openapi.json", view_func=openapi, methods=["GET"])
    app.add_url_rule("/healthz", view_func=healthz, methods=["GET"])
    app.add_url_rule("/readyz", view_func=readyz, methods=["GET"])
    app.add_url_rule("/metrics", view_func=metrics_text, methods=["GET"])
