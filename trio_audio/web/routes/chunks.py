"""``/chunks/{chunk_id}``: a stored chunk's JSON, its audio, its deletion."""

from __future__ import annotations

from quart import Response
from quart_trio import QuartTrio

from ...models import check_id
from ..context import chunk_owner, context
from ..media import CONTAINER_TYPES, OCTETS
from ..responses import chunks_response, json_response


async def get_chunk(chunk_id: str) -> Response:
    check_id("chunk_id", chunk_id)
    chunk_owner(chunk_id)
    return chunks_response(await context().store.get(chunk_id))


async def get_audio(chunk_id: str) -> Response:
    check_id("chunk_id", chunk_id)
    chunk_owner(chunk_id)
    store = context().store
    data, _ = await store.read_audio(chunk_id)
    # The type of what the bytes are (found by their magic), never the uploader's
    # header: a "text/html" upload must not come back as a page a browser runs.
    container = (await store.get(chunk_id))["audio"]["container"]
    headers = {"X-Content-Type-Options": "nosniff"}
    return Response(data, content_type=CONTAINER_TYPES.get(container, OCTETS), headers=headers)


async def delete_chunk(chunk_id: str) -> Response:
    # A durable tombstone; 404 if not stored, 507 when the log cannot take it.
    check_id("chunk_id", chunk_id)
    chunk_owner(chunk_id)
    await context().store.delete_chunk(chunk_id)
    return json_response({"chunk_id": chunk_id, "deleted": True})


def register(app: QuartTrio) -> None:
    app.add_url_rule("/chunks/<chunk_id>", view_func=get_chunk, methods=["GET"])
    app.add_url_rule("/chunks/<chunk_id>/audio", view_func=get_audio, methods=["GET"])
    app.add_url_rule("/chunks/<chunk_id>", view_func=delete_chunk, methods=["DELETE"])
