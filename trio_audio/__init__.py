"""trio-audio: an audio-ingestion service on Trio structured concurrency.

The public surface is re-exported here, lazily: importing ``trio_audio`` (as every ASR
worker process does) loads nothing heavy; ``serve`` and ``Running`` bring in the web stack
only when they are first used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .config import Config
from .errors import ServiceError, StoreError

if TYPE_CHECKING:
    from .service import Running, serve

__all__ = ["Config", "Running", "ServiceError", "StoreError", "serve"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in ("Running", "serve"):
        from . import service

        return getattr(service, name)
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)
