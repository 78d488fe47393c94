"""Service configuration: one frozen record, read from ``TRIO_AUDIO_*`` and CLI flags, made of
the groups of ``settings.py`` (one per part of the service).

Every field is settable as an environment variable named ``TRIO_AUDIO_`` plus the field name
in upper case (``TRIO_AUDIO_DATA_DIR=/srv/audio``) and as a ``--flag`` of ``trio-audio serve``
(``--data-dir``); a flag overrides the environment, which overrides the default.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import attrs

from .settings import DECODED_BYTES_PER_SAMPLE as DECODED_BYTES_PER_SAMPLE
from .settings import FSYNC_MODES as FSYNC_MODES
from .settings import MAX_ASR_PARTITIONS as MAX_ASR_PARTITIONS
from .settings import (
    Cluster,
    Lifecycle,
    Limits,
    Network,
    Pipeline,
    Security,
    Speech,
    Storage,
    WebSocket,
)

ENV_PREFIX: Final = "TRIO_AUDIO_"


@attrs.frozen(kw_only=True)
class Config(Lifecycle, Security, Speech, WebSocket, Pipeline, Limits, Cluster, Storage, Network):
    """Everything the service can be told; the defaults are the embedded single-node set-up.

    Its fields are those of its groups (``settings.py``: ``Network``, ``Storage``,
    ``Cluster``, ``Limits``, ``Pipeline``, ``WebSocket``, ``Speech``, ``Security``,
    ``Lifecycle``), in that order (attrs takes a base's fields before those of the bases
    listed before it); here, the rules that tie fields of several groups together."""

    def __attrs_post_init__(self) -> None:
        for name in ("max_body_bytes_inflight", "ws_max_inflight_bytes", "ws_user_inflight_bytes"):
            if getattr(self, name) < self.max_body_bytes:
                msg = (f"{name} ({getattr(self, name)}) must be at least max_body_bytes "
                       f"({self.max_body_bytes}): a body of that size must fit")  # fmt: skip
                raise ValueError(msg)
        if self.max_decoded_bytes_inflight < self.max_decoded_samples * DECODED_BYTES_PER_SAMPLE:
            msg = (f"max_decoded_bytes_inflight ({self.max_decoded_bytes_inflight}) must hold "
                   f"one upload of max_decoded_samples ({self.max_decoded_samples} x "
                   f"{DECODED_BYTES_PER_SAMPLE} bytes)")  # fmt: skip
            raise ValueError(msg)
        if self.asr_transcribe != "auto" and not self.store:
            msg = (
                "asr_transcribe applies to a cluster store (--store nats://...), whose workers "
                "may run elsewhere; on the local log the node's own engine decides"
            )
            raise ValueError(msg)

        if bool(self.store_tls_cert) != bool(self.store_tls_key):
            msg = "store_tls_cert and store_tls_key go together (a client certificate and its key)"
            raise ValueError(msg)
        for name in ("store_tls_ca", "store_tls_cert", "store_tls_key", "store_creds"):
            path = getattr(self, name)
            if path and not Path(path).is_file():
                msg = f"{name}: no such file {path!r}"
                raise ValueError(msg)

    def transcript_status(self) -> str:
        """What a new chunk's ``transcript.status`` starts as (see ``asr_transcribe``)."""
        if self.asr_transcribe == "auto":
            return "disabled" if self.asr_engine == "none" else "pending"
        return "pending" if self.asr_transcribe == "on" else "disabled"

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
    return {"int": int, "float": float, "Path": Path, "bool": bool}.get(str(kind), str)


TRUE: Final = ("1", "true", "yes", "on")
FALSE: Final = ("0", "false", "no", "off", "")


def _parse(field: attrs.Attribute[Any], text: str, source: str) -> Any:
    kind = field_type(field)
    if kind is bool:
        if text.lower() not in TRUE + FALSE:
            msg = f"{source}={text!r} is not a boolean (use 1/0, true/false, yes/no)"
            raise ValueError(msg)
        return text.lower() in TRUE
    try:
        return kind(text)
    except ValueError:
        msg = f"{source}={text!r} is not a valid {kind.__name__}"
        raise ValueError(msg) from None


def redact(url: str) -> str:
    """*url* with its password or token replaced by ``***`` (safe to log)."""
    scheme, sep, rest = url.partition("://")
    authority, slash, path = rest.partition("/")
    if not sep or "@" not in authority:
        return url
    userinfo, _, host = authority.rpartition("@")  # a password may hold an "@" itself
    user = userinfo.split(":", 1)[0] if ":" in userinfo else ""
    return f"{scheme}://{user + ':' if user else ''}***@{host}{slash}{path}"


def redacted(store: str) -> str:
    """A ``--store`` value (URLs, comma-separated) safe to log: passwords and tokens masked."""
    return ",".join(redact(url.strip()) for url in store.split(",")) if store else store
