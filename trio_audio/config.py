"""Service configuration: one frozen record, read from ``TRIO_AUDIO_*`` and CLI flags.

Every field is settable as an environment variable named ``TRIO_AUDIO_`` plus the field name
in upper case (``TRIO_AUDIO_DATA_DIR=/srv/audio``) and as a ``--flag`` of ``trio-audio serve``
(``--data-dir``); a flag overrides the environment, which overrides the default.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final, Literal

import attrs

FsyncMode = Literal["always", "interval", "never"]
FSYNC_MODES: Final = ("always", "interval", "never")
ENV_PREFIX: Final = "TRIO_AUDIO_"


def _positive(instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if value <= 0:
        msg = f"{attribute.name} must be positive, got {value!r}"
        raise ValueError(msg)


def _port(instance: object, attribute: attrs.Attribute[Any], value: int) -> None:
    if not 0 <= value <= 65535:
        msg = f"{attribute.name} must be a port number 0..65535 (0 picks a free one), got {value}"
        raise ValueError(msg)


def _fsync(instance: object, attribute: attrs.Attribute[Any], value: str) -> None:
    if value not in FSYNC_MODES:
        msg = f"fsync must be one of {', '.join(FSYNC_MODES)}, got {value!r}"
        raise ValueError(msg)


@attrs.frozen(kw_only=True)
class Config:
    """Everything the service can be told; the defaults are the embedded single-node set-up."""

    # Network.
    host: str = attrs.field(default="127.0.0.1", metadata={"help": "address to listen on"})
    port: int = attrs.field(default=8000, validator=_port, metadata={"help": "HTTP port"})
    ws_port: int = attrs.field(
        default=8001, validator=_port, metadata={"help": "WebSocket listener port"}
    )

    # Storage.
    data_dir: Path = attrs.field(
        default=Path("data"), converter=Path, metadata={"help": "data directory"}
    )
    fsync: str = attrs.field(
        default="always",
        validator=_fsync,
        metadata={"help": "always (no acknowledged chunk is lost), interval (1 s), never"},
    )
    fsync_interval_s: float = attrs.field(
        default=1.0, validator=_positive, metadata={"help": "fsync period in interval mode"}
    )
    segment_max_bytes: int = attrs.field(
        default=256 * 1024 * 1024, validator=_positive, metadata={"help": "log segment size"}
    )
    commit_batch_max: int = attrs.field(
        default=256, validator=_positive, metadata={"help": "most records in one group commit"}
    )
    commit_wait_ms: float = attrs.field(
        default=2.0,
        validator=attrs.validators.ge(0),
        metadata={"help": "how long a group commit waits to fill a batch"},
    )

    # Limits.
    max_body_bytes: int = attrs.field(
        default=16 * 1024 * 1024, validator=_positive, metadata={"help": "largest request body"}
    )
    max_duration_s: float = attrs.field(
        default=600.0, validator=_positive, metadata={"help": "longest decoded chunk"}
    )
    max_parts: int = attrs.field(
        default=32, validator=_positive, metadata={"help": "most files in one multipart upload"}
    )

    # Pipeline.
    ingress_queue: int = attrs.field(
        default=64, validator=_positive, metadata={"help": "ingress queue size (then 503)"}
    )
    stage_queue: int = attrs.field(
        default=8, validator=_positive, metadata={"help": "queue size between stages"}
    )
    stage_workers: int = attrs.field(
        default=2, validator=_positive, metadata={"help": "workers per pipeline stage"}
    )
    cpu_threads: int = attrs.field(
        default=2, validator=_positive, metadata={"help": "threads for CPU work (one limiter)"}
    )
    stage_timeout_s: float = attrs.field(
        default=10.0, validator=_positive, metadata={"help": "per-chunk timeout of each stage"}
    )
    retry_after_s: int = attrs.field(
        default=1, validator=_positive, metadata={"help": "Retry-After sent with a 503"}
    )

    # WebSocket.
    ws_queue: int = attrs.field(
        default=256,
        validator=_positive,
        metadata={"help": "messages queued for one WebSocket reader before it is cut off"},
    )

    # Lifecycle.
    drain_timeout_s: float = attrs.field(
        default=15.0, validator=_positive, metadata={"help": "deadline for a graceful drain"}
    )
    log_level: str = attrs.field(default="info", metadata={"help": "logging level"})

    @classmethod
    def from_sources(
        cls, env: Mapping[str, str] | None = None, overrides: Mapping[str, Any] | None = None
    ) -> Config:
        """Defaults, then ``TRIO_AUDIO_*`` variables from *env*, then *overrides* (CLI flags).

        Raises ``ValueError`` naming the variable or flag when a value is not valid.
        """
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for field in attrs.fields(cls):
            name = ENV_PREFIX + field.name.upper()
            if name in env:
                values[field.name] = _parse(field, env[name], name)
        for key, value in (overrides or {}).items():
            if value is not None:
                values[key] = value
        return cls(**values)


def field_type(field: attrs.Attribute[Any]) -> type:
    """The Python type a field's text value is parsed into."""
    kind = field.type if isinstance(field.type, str) else getattr(field.type, "__name__", "str")
    return {"int": int, "float": float, "Path": Path}.get(str(kind), str)


def _parse(field: attrs.Attribute[Any], text: str, source: str) -> Any:
    kind = field_type(field)
    try:
        return kind(text)
    except ValueError:
        msg = f"{source}={text!r} is not a valid {kind.__name__}"
        raise ValueError(msg) from None
