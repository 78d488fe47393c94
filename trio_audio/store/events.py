"""What goes into the store (writes) and what comes out of it (``Committed`` events).

Writes travel on the committer's one bounded channel: a pipeline ``Job`` (its parts become
CHUNK records), an ``Update`` (replace top-level fields of a chunk: transcripts) or a
``Delete`` (a TOMBSTONE). Each carries a one-shot ``Reply`` the committer answers once the
batch it went in is durable (or has failed).

After each durable batch the committer sends one event per change, in commit order, into the
store's event channel; the service's fan-out hands them to the live watchers and the
transcriber. A distributed backend produces the same events from its replicated log.
"""

from __future__ import annotations

from typing import Any

import attrs

from ..models import Job, Reply


@attrs.define(eq=False)
class Update:
    """Durably replace top-level *fields* of chunk *chunk_id*; answered with its chunk JSON."""

    chunk_id: str
    fields: dict[str, Any]
    reply: Reply = attrs.field(factory=Reply)


@attrs.define(eq=False)
class Delete:
    """Durably delete *chunk_ids* (or, with *session*, every chunk of that session).

    Answered with the ids that were deleted; ``NotFound`` when none of them was stored."""

    chunk_ids: list[str] = attrs.field(factory=list)
    session: tuple[str, str] | None = None  # (user_id, session_id)
    reply: Reply = attrs.field(factory=Reply)


Write = Job | Update | Delete


@attrs.frozen
class ChunkStored:
    """A new chunk is durable. *source* names the connection that sent it (its own socket
    skips the echo); *speech_pcm* is its 16 kHz mono PCM when the pipeline kept it."""

    chunk: dict[str, Any]
    source: str | None = None
    speech_pcm: bytes | None = None


@attrs.frozen
class ChunkUpdated:
    """Fields of a stored chunk changed (its chunk JSON as it is now)."""

    chunk: dict[str, Any]


@attrs.frozen
class ChunksDeleted:
    """Chunks of one session were deleted."""

    user_id: str
    session_id: str
    chunk_ids: list[str]


Committed = ChunkStored | ChunkUpdated | ChunksDeleted
