"""The audio containers the web layer names, and their media types.

One table for both directions: a WebSocket ``start`` declares ``{"container": "wav"}``, and
``GET /chunks/{id}/audio`` answers with the media type of the container the bytes are in.
"""

from __future__ import annotations

from typing import Final

OCTETS: Final = "application/octet-stream"
CONTAINER_TYPES: Final = {"wav": "audio/wav", "flac": "audio/flac", "ogg": "audio/ogg",
                          "mp3": "audio/mpeg"}  # fmt: skip
