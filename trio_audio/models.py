"""The records that flow through the service: a Job with its Parts, and its one-shot Reply.

A ``Job`` is one client request (one HTTP upload, possibly multipart, or one WebSocket frame).
Each stage of the pipeline fills in fields of its ``Part``s; the store's committer commits
every part of a job together (all or none) and answers the job's ``Reply`` once the records
are durable. The committer alone decides what is new and what is an idempotent retry.
"""

from __future__ import annotations

import re
import secrets
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

import attrs
import trio

from .errors import InvalidField, MissingField, ServiceError

if TYPE_CHECKING:
    import numpy as np

    from .audio.decode import Decoded, RawFormat
    from .audio.features import PowerSpectrum

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
        if self._error is not None:
            raise self._error
        return self._value


@attrs.define(eq=False)
class Part:
    """One audio chunk of a job, as received, then as each stage leaves it."""

    body: bytes
    content_type: str
    raw: RawFormat | None = None
    seq: int | None = None
    timestamp: str | None = None
    # Filled by the stages.
    checksum: str = ""
    container: str | None = None  # what its magic says (validate sniffs it once); None: PCM
    decoded: Decoded | None = None
    mono: np.ndarray | None = None
    spectrum: PowerSpectrum | None = None
    analysis: dict[str, Any] | None = None
    audio_info: dict[str, Any] | None = None
    speech_pcm: bytes | None = None  # 16 kHz 16-bit mono, handed to the transcriber
    timings: dict[str, float] = attrs.field(factory=dict)


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
