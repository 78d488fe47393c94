"""The records that flow through the service: a Job with its Parts, what each stage makes of
them, and the job's one-shot Reply.

A ``Job`` is one client request (one HTTP upload, possibly multipart, or one WebSocket frame):
its ``Part``s as received, never changed. Each stage hands on its own result: validation a
``Checked`` per part (checksum, container, decoded audio), analysis a ``ChunkRecord`` per part
(the chunk as stored, built once and packed once). The store's committer commits every part of
a job together (all or none) and answers the job's ``Reply`` once the records are durable.
The committer alone decides what is new and what is an idempotent retry.
"""

from __future__ import annotations

import re
import secrets
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

import attrs
import msgpack
import trio

from .errors import InvalidField, MissingField, ServiceError

if TYPE_CHECKING:
    from .audio.decode import Decoded, RawFormat

ID_PATTERN: Final = re.compile(r"[A-Za-z0-9._-]{1,64}")
MAX_SEQ: Final = 2**53  # exact in JSON numbers everywhere
ASCII_DIGITS: Final = re.compile(r"[0-9]+")  # str.isdigit() and int() take any Unicode digit
EPOCH_SECONDS: Final = re.compile(r"-?[0-9]+(\.[0-9]*)?")


def check_id(name: str, value: str | None, *, required: bool = True) -> str | None:
    """*value* if it matches ``^[A-Za-z0-9._-]{1,64}$``; else 400 missing_field/invalid_field."""
    if value is None or value == "":
        if required:
            msg = f"{name} is required"
            raise MissingField(msg)
        return None
    if not ID_PATTERN.fullmatch(value) or value in (".", ".."):
        msg = f"{name} must match ^[A-Za-z0-9._-]{{1,64}}$ (and not be . or ..), got {value[:80]!r}"
        raise InvalidField(msg)
    return value


def parse_seq(value: str | int | None) -> int | None:
    """A client seq: a non-negative integer below 2**53, or None when absent.

    As text it is ASCII digits only: ``int()`` would also take full-width or other Unicode
    digits, signs, spaces and underscores (``"\\uff11"``, a full-width one, or ``" +1_0 "``).
    """
    if value is None or value == "":
        return None
    seq = -1
    if isinstance(value, str) and ASCII_DIGITS.fullmatch(value):
        seq = int(value)
    elif isinstance(value, int) and not isinstance(value, bool):
        seq = value
    if not 0 <= seq < MAX_SEQ:
        msg = f"seq must be an integer 0..2^53-1 in ASCII digits, got {str(value)[:40]!r}"
        raise InvalidField(msg)
    return seq


def parse_timestamp(value: str | float | None) -> str | None:
    """A client capture time (epoch seconds or ISO 8601) normalised to ISO 8601 UTC.

    Text is ASCII only: epoch seconds as ``[-]digits[.digits]``, or an ISO 8601 time.
    """
    if value is None or value == "":
        return None
    msg = f"timestamp must be epoch seconds or ISO 8601 in ASCII, got {str(value)[:40]!r}"
    if isinstance(value, bool) or (isinstance(value, str) and not value.isascii()):
        raise InvalidField(msg)
    try:
        if isinstance(value, str) and not EPOCH_SECONDS.fullmatch(value):
            when = None  # not epoch seconds: try ISO 8601
        else:
            when = datetime.fromtimestamp(float(value), UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        when = None
    if when is None:
        try:
            when = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError:
            raise InvalidField(msg) from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def new_chunk_id() -> str:
    """A unique, roughly time-ordered id: 12 hex digits of ms time, 16 random."""
    return f"{time.time_ns() // 1_000_000:012x}{secrets.token_hex(8)}"


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Reply:
    """A one-shot slot: the pipeline sets a result or an error once, the requester waits."""

    def __init__(self) -> None:
        self._event = trio.Event()
        self._value: Any = None
        self._error: ServiceError | None = None

    @property
    def done(self) -> bool:
        return self._event.is_set()

    def set(self, value: Any) -> None:
        if not self._event.is_set():
            self._value = value
            self._event.set()

    def fail(self, error: ServiceError) -> None:
        if not self._event.is_set():
            self._error = error
            self._event.set()

    async def wait(self) -> Any:
        """The result, or raise the error the pipeline reported."""
        await self._event.wait()
        return self.result()

    def result(self) -> Any:
        """The result of a reply that is ``done`` (or raise its error), without waiting."""
        if not self._event.is_set():
            msg = "the reply is not done yet"
            raise RuntimeError(msg)
        if self._error is not None:
            raise self._error
        return self._value


@attrs.frozen
class Part:
    """One audio chunk of a job, as received; the stages leave it as it is and hand on what
    they make of it (``Checked``, then a ``ChunkRecord``)."""

    body: bytes
    content_type: str
    raw: RawFormat | None = None
    seq: int | None = None
    timestamp: str | None = None


@attrs.frozen
class Checked:
    """What validation made of a part: its checksum, the container its magic names (None:
    PCM, or not sniffed), its decoded audio, and the CPU seconds that took."""

    checksum: str
    container: str | None
    decoded: Decoded
    seconds: float


def _entries(fields: dict[str, Any]) -> bytes:
    """The msgpack bytes of *fields*' key-value pairs, without the map header."""
    packed: bytes = msgpack.packb(fields)
    return packed[_map_header_size(len(fields)) :]


def _map_header_size(n: int) -> int:
    return len(_map_header(n))


def _map_header(n: int) -> bytes:
    if n < 16:
        return bytes((0x80 | n,))
    if n < 1 << 16:
        return b"\xde" + n.to_bytes(2, "big")
    return b"\xdf" + n.to_bytes(4, "big")


# The fields only the committer decides go in after these: a chunk's JSON keeps its order.
_THEN: Final = {"session_id": "seq", "spectrum": "transcript"}


@attrs.frozen
class ChunkRecord:
    """One chunk as stored, built once when its analysis ends: the chunk JSON's fields in
    their order, less those only the committer decides (``seq``, ``transcript``, and the
    ``group`` of a multipart job), with its msgpack bytes made once with it.

    ``meta`` and ``packed`` add the committer's fields: the log's CHUNK record and the
    metadata cache take ``packed`` (the same bytes), the answer and the events ``meta``.
    A new chunk-JSON field is a field here, set in ``build`` (and named in
    ``web/openapi.py``). ``speech_pcm`` (16 kHz 16-bit mono, for the transcriber) is
    carried beside the record, never stored.
    """

    chunk_id: str
    user_id: str
    session_id: str
    received_at: str
    timestamp: str | None
    size_bytes: int
    checksum: str
    content_type: str
    audio: dict[str, Any]
    features: dict[str, Any]
    spectrum: dict[str, Any]
    processing_ms: dict[str, float]
    speech_pcm: bytes | None = attrs.field(default=None, repr=False, metadata={"stored": False})
    # The stored fields packed, split where the committer's go in: made as it is built.
    pieces: tuple[bytes, ...] = attrs.field(init=False, repr=False, metadata={"stored": False})

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "pieces", self._pieces())  # frozen: attrs' way to set it

    @classmethod
    def build(
        cls,
        job: Job,
        part: Part,
        checked: Checked,
        analysis: dict[str, Any],
        timings: dict[str, float],
        speech_pcm: bytes | None,
    ) -> ChunkRecord:
        """The record of *part* of *job*: *checked* by validation, *analysis* the features
        (voice activity included) and spectrum, *timings* the seconds each step took."""
        decoded = checked.decoded
        return cls(
            chunk_id=new_chunk_id(),
            user_id=job.user_id,
            session_id=job.session_id,
            received_at=job.received_at,
            timestamp=part.timestamp,
            size_bytes=len(part.body),
            checksum=checked.checksum,
            content_type=part.content_type,
            audio={
                "container": decoded.container,
                "encoding": decoded.encoding,
                "sample_rate": decoded.sample_rate,
                "channels": decoded.channels,
                "frames": decoded.frames,
                "duration_ms": round(decoded.duration_ms, 3),
            },
            features=analysis["features"],
            spectrum=analysis["spectrum"],
            processing_ms={k: round(v * 1000, 3) for k, v in timings.items()},
            speech_pcm=speech_pcm,
        )

    def _stored(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _STORED}

    def _pieces(self) -> tuple[bytes, ...]:
        """The stored fields' msgpack entries in runs, one run before each committer field."""
        runs: list[dict[str, Any]] = [{}]
        for name, value in self._stored().items():
            runs[-1][name] = value
            if name in _THEN:
                runs.append({})
        return tuple(_entries(run) for run in runs)

    def meta(self, seq: int, status: str, group: list[Any] | None = None) -> dict[str, Any]:
        """The record as a map: the chunk JSON (less ``offset_ms``) plus the store's own
        ``group``; unpacking ``packed`` with the same arguments gives this map."""
        meta: dict[str, Any] = {}
        for name, value in self._stored().items():
            meta[name] = value
            if name in _THEN:
                meta[_THEN[name]] = self._committed(_THEN[name], seq, status)
        if group is not None:
            meta["group"] = group
        return meta

    def packed(self, seq: int, status: str, group: list[Any] | None = None) -> bytes:
        """``meta(seq, status, group)`` as msgpack, from the bytes packed at ``build``."""
        extra = {"group": group} if group is not None else {}
        count = len(_STORED) + len(_THEN) + len(extra)
        out = [_map_header(count), self.pieces[0]]
        for name, piece in zip(_THEN.values(), self.pieces[1:], strict=True):
            out += [_entries({name: self._committed(name, seq, status)}), piece]
        if extra:
            out.append(_entries(extra))
        return b"".join(out)

    @staticmethod
    def _committed(name: str, seq: int, status: str) -> Any:
        if name == "seq":
            return seq
        return {"status": status, "text": "", "words": []}


_STORED: Final = tuple(f.name for f in attrs.fields(ChunkRecord) if f.metadata.get("stored", True))


@attrs.define(eq=False)
class Job:
    """One request's worth of chunks for one session, with the reply slot its sender awaits."""

    user_id: str
    session_id: str
    parts: list[Part]
    received_at: str = attrs.field(factory=utc_now)
    enqueued: float = 0.0
    reply: Reply = attrs.field(factory=Reply)
    source: str | None = None  # the id of the connection that sent it (it skips the echo)
    # What the stages made of its parts, one per part: validate sets ``checked`` (analysis
    # lets it go, and the decoded samples with it), analysis sets ``records``.
    checked: tuple[Checked, ...] = ()
    records: tuple[ChunkRecord, ...] = ()
