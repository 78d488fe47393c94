"""``POST /upload``: one chunk (a raw body) or several (multipart ``file`` parts) into the
pipeline, answered once durably stored.

Refused with 503 + ``Retry-After`` when the ingress queue is full, checked before the body is
read; bodies over ``max_body_bytes`` get 413 without being read into memory (see ``App`` in
``web/app.py``); a body sent slower than ``min_upload_bytes_per_s`` gets 408. A multipart
part that cannot be stored is named in the problem (``part: {index, filename}``).
"""

from __future__ import annotations

import attrs
from quart import Response, current_app, g, request
from quart_trio import QuartTrio
from werkzeug.datastructures import MultiDict
from werkzeug.exceptions import RequestEntityTooLarge

from ...asr.context import parse_vocabulary
from ...audio.decode import parse_media_type, raw_format_from
from ...config import Config
from ...errors import (
    Forbidden,
    MissingField,
    PayloadTooLarge,
    ServiceError,
)
from ...models import Job, Part, check_id, parse_seq, parse_timestamp
from ...store.index import Stored
from ..context import context
from ..media import OCTETS
from ..responses import json_response, problem_response


async def upload() -> Response:
    ctx = context()
    config, ingress, access = ctx.config, ctx.ingress, ctx.access
    if ingress.full:  # refuse before reading the body
        raise ingress.refuse("queue_full")
    content_type = request.headers.get("Content-Type", "")
    media = parse_media_type(content_type)  # parsed once: the job's part keeps it
    media_type = media[0]
    user = g.get("user_id")
    multipart = media_type == "multipart/form-data"
    # A raw body's user was counted by the front door before the body was read.
    filenames: list[str | None] = []
    # The front door has read the body already, within its rate and size rules.
    if media_type == "multipart/form-data":
        try:
            form = await request.form
        except RequestEntityTooLarge as exc:
            raise form_too_large(config, exc) from None
        files = (await request.files).getlist("file")
        fields = MultiDict(list(request.args.items(multi=True)))
        fields.update(form)
        uploads = [upload_of(f.read(config.max_part_bytes + 1), f.content_type or OCTETS)
                   for f in files]  # fmt: skip
        filenames = [f.filename for f in files]
    else:
        fields = request.args
        body = await request.get_data(cache=False, as_text=False)
        assert isinstance(body, bytes)
        uploads = [Upload(body, content_type, *media)]
    if media_type == "multipart/form-data":
        if not uploads:
            raise MissingField("multipart upload has no 'file' part")
        if len(uploads) > config.max_parts:
            msg = f"{len(uploads)} files in one upload, over the limit of {config.max_parts}"
            raise PayloadTooLarge(msg)
        for index, one in enumerate(uploads):
            if len(one.body) > config.max_part_bytes:
                msg = f"the file part is over the {config.max_part_bytes} byte limit"
                return part_problem(PayloadTooLarge(msg), index, filenames[index])
        if owner := user or fields.get("user_id"):
            access.take(owner, len(uploads))  # one upload per file part
    fields = authorize_fields(fields, user)
    job = build_job(fields, uploads)
    terms = upload_vocabulary(fields)
    ingress.submit_nowait(job)
    if terms is not None and ctx.ws.transcriber is not None:  # before its chunks are stored
        ctx.ws.transcriber.set_vocabulary(job.user_id, job.session_id, terms)
    try:
        results: list[Stored] = await job.reply.wait()
    except ServiceError as exc:
        if not multipart or exc.part is None:  # not one part's fault (or only one part)
            raise
        return part_problem(exc, exc.part, filenames[exc.part])
    status = 201 if any(r.created for r in results) else 200
    locations = [f"/chunks/{r.chunk['chunk_id']}" for r in results]
    headers = {"Location": locations[0]}
    if media_type == "multipart/form-data":
        # Location names the first chunk; Link names every chunk, in part order.
        headers["Link"] = ", ".join(f'<{url}>; rel="item"' for url in locations)
        return json_response({"chunks": [r.chunk for r in results]}, status, headers)
    return json_response(results[0].chunk, status, headers)


def register(app: QuartTrio) -> None:
    app.add_url_rule("/upload", view_func=upload, methods=["POST"])


def form_too_large(config: Config, exc: RequestEntityTooLarge) -> PayloadTooLarge:
    """The 413 for a multipart body, naming the limit it broke.

    werkzeug's multipart parser raises the same exception for too many parts, a text field
    over ``MAX_FORM_MEMORY_SIZE`` and a body over the byte limit; where it was raised tells
    them apart (the part count is checked as each part's headers are parsed).
    """
    where = exc.__traceback__
    while where is not None and where.tb_next is not None:
        where = where.tb_next
    raised_in = where.tb_frame.f_code.co_name if where is not None else ""
    if raised_in == "next_event":
        most = current_app.config["MAX_FORM_PARTS"]
        msg = (f"the multipart body has more than {most} parts; an upload takes at most "
               f"{config.max_parts} files and a few fields")  # fmt: skip
    elif raised_in == "parse":
        msg = (f"a multipart text field is over the "
               f"{current_app.config['MAX_FORM_MEMORY_SIZE']} byte limit")  # fmt: skip
    else:
        msg = f"the body is over the {config.max_body_bytes} byte limit"
    return PayloadTooLarge(msg)


def part_problem(error: ServiceError, index: int, filename: str | None) -> Response:
    """*error* as a problem that names the multipart file part it is about."""
    detail = f"file part {index} (filename {filename!r}): {error.detail}"
    return problem_response(error, detail, part={"index": index, "filename": filename})


def authorize_fields(fields: MultiDict[str, str], user: str | None) -> MultiDict[str, str]:
    """With auth on, the upload is the token's user's: naming another is refused (403)."""
    if user is None:
        return fields
    named = fields.get("user_id")
    if named and named != user:
        msg = f"this token uploads as {user!r}, not {named[:64]!r}"
        raise Forbidden(msg)
    if named:
        return fields
    out = MultiDict(list(fields.items(multi=True)))
    out["user_id"] = user
    return out


@attrs.frozen
class Upload:
    """One body of a request (the whole body, or a multipart file part) and its type, as
    sent and as parsed."""

    body: bytes
    content_type: str
    media_type: str
    params: dict[str, str]


def upload_of(body: bytes, content_type: str) -> Upload:
    return Upload(body, content_type, *parse_media_type(content_type))


def build_job(fields: MultiDict[str, str], uploads: list[Upload]) -> Job:
    """A job from the request's fields (query or form) and its bodies; 400 on bad fields."""
    user_id = check_id("user_id", fields.get("user_id"))
    session_id = check_id("session_id", fields.get("session_id"))
    assert user_id is not None and session_id is not None
    seq = parse_seq(fields.get("seq"))
    timestamp = parse_timestamp(fields.get("timestamp"))
    parts = []
    for index, one in enumerate(uploads):
        raw = raw_format_from(
            one.media_type,
            one.params,
            fields.get("encoding"),
            fields.get("sample_rate"),
            fields.get("channels"),
        )
        parts.append(
            Part(
                body=one.body,
                content_type=one.content_type or OCTETS,
                raw=raw,
                seq=None if seq is None else seq + index,
                timestamp=timestamp,
            )
        )
    return Job(user_id=user_id, session_id=session_id, parts=parts)


def upload_vocabulary(fields: MultiDict[str, str]) -> tuple[str, ...] | None:
    """The ``vocabulary`` field of an upload (query or form): comma-separated terms, or the
    field repeated, a term each; None when it is not given. 400 when it is too big."""
    given = fields.getlist("vocabulary")
    if not given:
        return None
    return parse_vocabulary(given[0] if len(given) == 1 else given)
