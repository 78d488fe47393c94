"""The log's stream as every part of the JetStream store names it: the headers a record
carries, a subject token, this node's connection while the store runs (``Stream``), and
what the parts share (``Shared``).

Subjects (``<user>`` and ``<session>`` with ``.`` written as ``~``, see ``token``)::

    AUDIO.<user>.<session>.chunk.<seq>          one chunk: its audio in the body
    AUDIO.<user>.<session>.work.<seq>           its reference for transcription (no body)
    AUDIO.<user>.<session>.update.<chunk_id>    new top-level fields of a chunk
    AUDIO.<user>.<session>.tombstone            chunks deleted (by id, or the whole session)

The metadata of every record is a JSON header (``META``, written by ``to_header`` and read
by ``from_header``); ``NODE`` names the node that published it and ``SOURCE`` the
connection that sent a chunk.
"""

from __future__ import annotations

import json
from typing import Any, Final

import attrs
import msgspec

from ..config import Config
from ..errors import StoreUnavailable
from ..metrics import Metrics
from ..store.index import Index
from .connect import Nats

META: Final = "Trio-Audio"  # the header holding a record's metadata (JSON)
SOURCE: Final = "Trio-Audio-Source"  # the connection that sent a chunk (skips its echo)
NODE: Final = "Trio-Audio-Node"  # the node that published a record
EXPECT_EMPTY: Final = {"Nats-Expected-Last-Subject-Sequence": "0"}


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode


def to_header(value: Any) -> str:
    """*value* as compact JSON for a header (msgspec: a chunk's metadata, with its many
    floats, in a fraction of ``json.dumps``'s time). Headers are ASCII: text that is not is
    escaped, as ``json.dumps`` does, which also writes what msgspec refuses."""
    try:
        data = _encode(value)
        if data.isascii():
            return data.decode("ascii")
    except (TypeError, ValueError):  # (UnicodeEncodeError: a lone surrogate)
        pass
    return json.dumps(value, separators=(",", ":"))


def from_header(text: str) -> Any:
    """What ``to_header`` wrote (or ``json.dumps``: ``NaN`` too); ``ValueError`` for what
    is not JSON."""
    try:
        return _decode(text)
    except msgspec.DecodeError:
        return json.loads(text)  # (raises ValueError for what is not JSON)


def token(value: str) -> str:
    """An id as one subject token (ids may hold ``.``, which separates tokens)."""
    return value.replace(".", "~")


@attrs.define(eq=False)
class Stream:
    """The stream this node writes and follows: its name (also the subjects' first token),
    this node's id on the cluster, and the connection (set while ``JetStreamStore.run``
    runs)."""

    name: str
    node: str
    nats: Nats | None = None

    def connection(self) -> Nats:
        """The connection; ``StoreUnavailable`` while there is none."""
        if self.nats is None:
            msg = "the store is closed"
            raise StoreUnavailable(msg)
        return self.nats


@attrs.frozen
class Shared:
    """What the parts of the JetStream store (the follower, the committer, the reads) work
    with: the settings, the metrics, the stream and this node's index."""

    config: Config
    metrics: Metrics
    stream: Stream
    index: Index
