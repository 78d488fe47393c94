"""The OpenAPI 3.1 description of the HTTP API, served at ``GET /openapi.json``.

Written by hand and kept true by tests: every route the app serves is described here (and
nothing else), and real responses validate against these schemas.
"""

from __future__ import annotations

from typing import Any, Final

ID: Final = {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,64}$"}
NUMBER: Final = {"type": "number"}
NUMBERS: Final = {"type": "array", "items": NUMBER}

PROBLEM: Final = {
    "type": "object",
    "required": ["type", "title", "status", "detail", "code"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "code": {"type": "string"},
        "retryable": {"type": "boolean"},
        "instance": {"type": "string"},
        "part": {
            "description": "multipart: the file part the problem is about (index from 0)",
            "type": "object",
            "required": ["index", "filename"],
            "properties": {
                "index": {"type": "integer", "minimum": 0},
                "filename": {"type": ["string", "null"]},
            },
        },
    },
}

TRANSCRIPT: Final = {
    "type": "object",
    "required": ["status", "text", "words"],
    "properties": {
        "status": {"enum": ["disabled", "pending", "done", "failed"]},
        "text": {"type": "string"},
        "words": {"type": "array", "items": {"type": "object"}},
        "short_window": {"type": "boolean"},  # decoded in the short window (a late final)
    },
}

CHUNK: Final = {
    "type": "object",
    "required": [
        "chunk_id", "user_id", "session_id", "seq", "received_at", "timestamp", "size_bytes",
        "checksum", "audio", "features", "spectrum", "transcript", "processing_ms", "offset_ms",
    ],
    "properties": {
        "chunk_id": ID,
        "user_id": ID,
        "session_id": ID,
        "seq": {"type": "integer", "minimum": 0},
        "received_at": {"type": "string"},
        "timestamp": {"type": ["string", "null"]},
        "size_bytes": {"type": "integer", "minimum": 1},
        "checksum": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
        "content_type": {"type": "string"},
        "offset_ms": NUMBER,
        "audio": {
            "type": "object",
            "required": ["container", "encoding", "sample_rate", "channels", "frames",
                         "duration_ms"],
            "properties": {
                "container": {"enum": ["wav", "flac", "ogg", "mp3", "raw"]},
                "encoding": {"type": "string"},
                "sample_rate": {"type": "integer"},
                "channels": {"type": "integer", "minimum": 1, "maximum": 8},
                "frames": {"type": "integer", "minimum": 1},
                "duration_ms": NUMBER,
            },
        },
        "features": {
            "type": "object",
            "required": [
                "rms_dbfs", "peak_dbfs", "dominant_hz", "spectral_centroid_hz",
                "spectral_rolloff_hz", "spectral_flatness", "zero_crossing_rate",
                "clipping_ratio", "silence_ratio",
            ],
            "additionalProperties": True,
        },
        "spectrum": {
            "type": "object",
            "required": ["bands_hz", "band_db"],
            "properties": {"bands_hz": NUMBERS, "band_db": NUMBERS, "band_edges_hz": NUMBERS},
        },
        "transcript": TRANSCRIPT,
        "processing_ms": {"type": "object", "additionalProperties": NUMBER},
    },
}  # fmt: skip

SESSIONS: Final = {
    "type": "object",
    "required": ["user_id", "sessions", "next_cursor"],
    "properties": {
        "user_id": ID,
        "next_cursor": {"type": ["string", "null"]},
        "sessions": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["session_id", "chunk_count", "duration_ms", "transcript", "chunks"],
                "properties": {
                    "session_id": ID,
                    "chunk_count": {"type": "integer"},
                    "duration_ms": NUMBER,
                    "transcript": {"type": "object"},
                    "chunks": {"type": "array", "items": {"$ref": "#/components/schemas/Chunk"}},
                },
            },
        },
    },
}


SESSION_END: Final = {
    "type": "object",
    "required": ["user_id", "session_id", "chunk_count", "duration_ms", "transcript"],
    "properties": {
        "user_id": ID,
        "session_id": ID,
        "chunk_count": {"type": "integer", "minimum": 1},
        "duration_ms": NUMBER,
        "transcript": {
            "type": "object",
            "required": ["status", "text", "words"],
            "properties": {
                "status": {"enum": ["disabled", "pending", "done", "failed"]},
                "text": {"type": "string"},
                "words": {"type": "array", "items": {"type": "object"}},
                "words_truncated": {"type": "boolean"},
            },
        },
    },
}


SESSION_TRANSCRIPT: Final = {
    "type": "object",
    "required": [
        "user_id",
        "session_id",
        "status",
        "duration_ms",
        "text",
        "words",
        "missing_seqs",
        "gaps_ms",
        "chunks",
    ],
    "properties": {
        "user_id": ID,
        "session_id": ID,
        "status": {"enum": ["disabled", "pending", "done", "failed"]},
        "duration_ms": NUMBER,
        "text": {"type": "string"},
        "words": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["word", "start_ms", "end_ms", "seq"],
                "properties": {
                    "word": {"type": "string"},
                    "start_ms": NUMBER,
                    "end_ms": NUMBER,
                    "seq": {"type": "integer"},
                    "confidence": NUMBER,
                },
            },
        },
        "missing_seqs": {
            "description": "inclusive [first, last] ranges, silence in the audio",
            "type": "array",
            "items": {"type": "array", "items": {"type": "integer"}},
        },
        "gaps_ms": NUMBER,
        "chunks": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["seq", "chunk_id", "start_ms", "duration_ms", "status"],
                "properties": {
                    "seq": {"type": "integer"},
                    "chunk_id": ID,
                    "start_ms": NUMBER,
                    "duration_ms": NUMBER,
                    "status": {"type": "string"},
                },
            },
        },
    },
}

DELETED: Final = {
    "type": "object",
    "required": ["user_id", "session_id", "deleted", "chunk_ids"],
    "properties": {
        "user_id": ID,
        "session_id": ID,
        "deleted": {"type": "integer"},
        "chunk_ids": {"type": "array", "items": ID},
    },
}


def _json(schema: str) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}}}


def _problems(*statuses: int) -> dict[str, Any]:
    problem = {"content": {"application/problem+json": {"schema": {
        "$ref": "#/components/schemas/Problem"}}}}  # fmt: skip
    return {str(s): {"description": "a problem (RFC 9457) with a stable code", **problem}
            for s in statuses}  # fmt: skip


def _param(name: str, where: str, schema: dict[str, Any], required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": where, "required": required, "schema": schema}


SESSION_PATH: Final = [
    _param("user_id", "path", ID, required=True),
    _param("session_id", "path", ID, required=True),
]

WAV: Final = {
    "headers": {
        "Accept-Ranges": {"schema": {"type": "string"}},
        "Content-Range": {"description": "206 only", "schema": {"type": "string"}},
        "X-Missing-Seqs": {
            "description": "seqs heard as silence, as 3-5,9",
            "schema": {"type": "string"},
        },
        "X-Gaps-Ms": {
            "description": "milliseconds of silence for missing seqs",
            "schema": {"type": "string"},
        },
        "X-Duration-Ms": {"schema": {"type": "string"}},
    },
    "content": {"audio/wav": {"schema": {"type": "string", "format": "binary"}}},
}

UPLOAD_FIELDS: Final = [
    _param("user_id", "query", ID),
    _param("session_id", "query", ID),
    _param("seq", "query", {"type": "integer", "minimum": 0}),
    _param("timestamp", "query", {"type": "string"}),
    _param("encoding", "query", {"type": "string"}),
    _param("sample_rate", "query", {"type": "integer"}),
    _param("channels", "query", {"type": "integer"}),
    # Words the session expects: comma-separated, or the field repeated (a term each).
    _param("vocabulary", "query", {"type": "string", "maxLength": 4096}),
]

# A multipart upload: its 'file' parts, in order, and the same fields as form fields.
MULTIPART_UPLOAD: Final = {
    "type": "object",
    "required": ["file"],
    "properties": {
        "file": {"type": "array", "items": {"type": "string", "format": "binary"}},
        **{field["name"]: field["schema"] for field in UPLOAD_FIELDS},
    },
}

# A raw body stores one chunk; multipart stores {"chunks": [...]} in part order.
UPLOADED: Final = {
    "headers": {
        "Location": {
            "description": "the chunk (multipart: the first chunk)",
            "schema": {"type": "string"},
        },
        "Link": {
            "description": 'multipart only: every chunk in part order, as </chunks/ID>; rel="item"',
            "schema": {"type": "string"},
        },
    },
    "content": {"application/json": {"schema": {"oneOf": [
        {"$ref": "#/components/schemas/Chunk"},
        {"type": "object", "required": ["chunks"], "properties": {
            "chunks": {"type": "array", "items": {"$ref": "#/components/schemas/Chunk"}}}},
    ]}}},
}  # fmt: skip

SPEC: Final[dict[str, Any]] = {
    "openapi": "3.1.0",
    "info": {
        "title": "trio-audio",
        "version": "0.1.0",
        "description": "Audio ingestion: upload chunks, read their analysis and audio back. "
        "Live streaming is a WebSocket at /ws (not described by OpenAPI).",
    },
    "components": {
        "schemas": {"Chunk": CHUNK, "Problem": PROBLEM, "Sessions": SESSIONS,
                    "Transcript": SESSION_TRANSCRIPT},
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
    },
    "security": [{"bearer": []}, {}],
    "paths": {
        "/upload": {
            "post": {
                "summary": "Upload one chunk (raw body) or several (multipart 'file' parts)",
                "parameters": UPLOAD_FIELDS,
                "requestBody": {"required": True, "content": {
                    "audio/wav": {"schema": {"type": "string", "format": "binary"}},
                    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                    "multipart/form-data": {"schema": MULTIPART_UPLOAD},
                }},
                "responses": {
                    "201": {"description": "stored", **UPLOADED},
                    "200": {"description": "stored before (idempotent retry)", **UPLOADED},
                    **_problems(400, 401, 403, 408, 409, 413, 415, 422, 429, 503, 507),
                },
            }
        },
        "/chunks/{chunk_id}": {
            "parameters": [_param("chunk_id", "path", ID, required=True)],
            "get": {
                "summary": "A chunk's JSON",
                "responses": {"200": {"description": "the chunk", **_json("Chunk")},
                              **_problems(400, 401, 404)},
            },
            "delete": {
                "summary": "Delete a chunk (a durable tombstone)",
                "responses": {"200": {"description": "deleted"}, **_problems(400, 401, 404, 507)},
            },
        },
        "/chunks/{chunk_id}/audio": {
            "parameters": [_param("chunk_id", "path", ID, required=True)],
            "get": {
                "summary": "The exact bytes uploaded, with their content type",
                "responses": {"200": {"description": "audio", "content": {
                    "*/*": {"schema": {"type": "string", "format": "binary"}}}},
                    **_problems(400, 401, 404)},
            },
        },
        "/sessions/{user_id}": {
            "parameters": [_param("user_id", "path", ID, required=True)],
            "get": {
                "summary": "A user's sessions with their chunks in seq order (or totals), paged",
                "parameters": [
                    _param("session_id", "query", ID),
                    _param("limit", "query", {"type": "integer", "minimum": 1, "maximum": 1000}),
                    _param("cursor", "query", {"type": "string"}),
                    {**_param("chunks", "query", {"type": "boolean", "default": True}),
                     "description": "false: pages of sessions' totals and transcripts "
                                    "(limit counts sessions), chunks left out"},
                ],
                "responses": {"200": {"description": "a page", **_json("Sessions")},
                              **_problems(400, 401, 404)},
            },
            "delete": {
                "summary": "Delete one session of a user",
                "parameters": [_param("session_id", "query", ID, required=True)],
                "responses": {"200": {"description": "deleted"}, **_problems(400, 401, 404, 507)},
            },
        },
        "/sessions/{user_id}/{session_id}": {
            "parameters": SESSION_PATH,
            "delete": {
                "summary": "Delete a session: every chunk of it, durably",
                "responses": {"200": {"description": "deleted", "content": {
                                  "application/json": {"schema": DELETED}}},
                              **_problems(400, 401, 404, 507)},
            },
        },
        "/sessions/{user_id}/{session_id}/audio": {
            "parameters": SESSION_PATH,
            "get": {
                "summary": "The session's audio as one 16-bit PCM WAV on its timeline; missing "
                           "seqs are silence (X-Missing-Seqs, X-Gaps-Ms); byte ranges served",
                "parameters": [_param("Range", "header", {"type": "string"})],
                "responses": {
                    "200": {"description": "the whole WAV", **WAV},
                    "206": {"description": "the range asked for (Content-Range)", **WAV},
                    **_problems(400, 401, 404, 409, 416),
                },
            },
        },
        "/sessions/{user_id}/{session_id}/transcript": {
            "parameters": SESSION_PATH,
            "get": {
                "summary": "The session's durable transcript with word times on the audio's "
                           "timeline: JSON, plain text, SRT or WebVTT",
                "parameters": [_param("format", "query",
                                      {"enum": ["json", "txt", "srt", "vtt"], "default": "json"})],
                "responses": {"200": {"description": "the transcript", "content": {
                                  "application/json": {"schema": {
                                      "$ref": "#/components/schemas/Transcript"}},
                                  "text/plain": {"schema": {"type": "string"}},
                                  "application/x-subrip": {"schema": {"type": "string"}},
                                  "text/vtt": {"schema": {"type": "string"}}}},
                              **_problems(400, 401, 404, 409)},
            },
        },
        "/sessions/{user_id}/{session_id}/end": {
            "parameters": [_param("user_id", "path", ID, required=True),
                           _param("session_id", "path", ID, required=True)],
            "post": {
                "summary": "End the session's utterance now: its final words, stored, "
                           "then session_end to its watchers",
                "responses": {"200": {"description": "the session's summary", "content": {
                                  "application/json": {"schema": SESSION_END}}},
                              **_problems(400, 401, 404)},
            },
        },
        "/sessions/{user_id}/{session_id}/events": {
            "parameters": [_param("user_id", "path", ID, required=True),
                           _param("session_id", "path", ID, required=True)],
            "get": {
                "summary": "Server-sent events: metadata, transcript, vad, deleted, session_end",
                "responses": {"200": {"description": "an event stream", "content": {
                                  "text/event-stream": {"schema": {"type": "string"}}}},
                              **_problems(400, 401, 404)},
            },
        },
        "/healthz": {"get": {"summary": "Liveness", "security": [],
                             "responses": {"200": {"description": "alive"}}}},
        "/readyz": {"get": {"summary": "Readiness: replayed, pipeline running, listening",
                            "security": [],
                            "responses": {"200": {"description": "ready"},
                                          "503": {"description": "not ready"}}}},
        "/metrics": {"get": {"summary": "Prometheus text", "security": [],
                             "responses": {"200": {"description": "metrics", "content": {
                                 "text/plain": {"schema": {"type": "string"}}}}}}},
        "/openapi.json": {"get": {"summary": "This document", "security": [],
                                  "responses": {"200": {"description": "OpenAPI 3.1"}}}},
    },
}  # fmt: skip
