"""The OpenAPI description stays true: same routes as the app, real responses validate."""

from __future__ import annotations

from typing import Any

import httpx
import jsonschema
import pytest

from trio_audio.models import ChunkRecord, utc_now
from trio_audio.web.openapi import CHUNK, SPEC

from .audio_samples import wav
from .conftest import Server


def validate(body: Any, schema: dict[str, Any]) -> None:
    resolver_schema = {**schema, "components": SPEC["components"]}
    jsonschema.validate(body, resolver_schema, cls=jsonschema.Draft202012Validator)


def ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


async def test_the_document_describes_every_route_and_no_other(server: Server) -> None:
    async with server.client() as client:
        spec = (await client.get("/openapi.json")).json()
    assert spec == SPEC
    served: set[tuple[str, str]] = set()
    assert server.running.app is not None
    for rule in server.running.app.url_map.iter_rules():
        if rule.endpoint in ("static", "ws_session") or rule.endpoint.startswith("console."):
            continue
        path = str(rule.rule).replace("<", "{").replace(">", "}")
        served |= {(path, m.lower()) for m in rule.methods or () if m not in ("HEAD", "OPTIONS")}
    described = {(p, m) for p, ops in SPEC["paths"].items() for m in ops if m != "parameters"}
    assert served == described


async def test_real_responses_match_their_schemas(client: httpx.AsyncClient) -> None:
    created = await client.post(
        "/upload", params={"user_id": "alice", "session_id": "s", "timestamp": "1700000000"},
        content=wav(),
    )  # fmt: skip
    validate(created.json(), ref("Chunk"))
    chunk_id = created.json()["chunk_id"]
    validate((await client.get(f"/chunks/{chunk_id}")).json(), ref("Chunk"))
    validate((await client.get("/sessions/alice")).json(), ref("Sessions"))
    for response in [
        await client.get("/chunks/missing"),
        await client.post("/upload", params={"user_id": "a"}, content=b"x"),
        await client.post("/upload", params={"user_id": "a", "session_id": "s"}, content=b"x"),
    ]:
        validate(response.json(), ref("Problem"))
        assert (
            str(response.status_code)
            in SPEC["paths"][
                "/upload" if response.request.method == "POST" else "/chunks/{chunk_id}"
            ][response.request.method.lower()]["responses"]
        )
    with pytest.raises(jsonschema.ValidationError):  # the schemas do reject wrong shapes
        validate({**created.json(), "seq": -1}, ref("Chunk"))


def test_every_field_of_the_chunk_record_is_in_the_chunk_schema() -> None:
    """A chunk-JSON field is a field of ``ChunkRecord`` and a property of the schema: adding one
    without the other fails here."""
    record = ChunkRecord("c", "u", "s", utc_now(), None, 3, "ab", "audio/wav", {}, {}, {}, {})
    chunk = {k: v for k, v in record.meta(0, "pending").items() if k != "group"}
    chunk["offset_ms"] = 0.0
    assert set(chunk) == set(CHUNK["properties"])
    assert set(CHUNK["required"]) <= set(chunk)
