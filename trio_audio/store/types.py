"""Types every store backend shares, beside the ``StoreBackend`` protocol."""

from __future__ import annotations

import attrs


@attrs.frozen
class StoreStats:
    """A reader's copy of the store's totals."""

    chunks: int
    audio_bytes: int
    log_bytes: int
    dead_bytes: int
    compactions: int
    replayed_records: int | None
    snapshot: str | None
    backend: str = "local"
