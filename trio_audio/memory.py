"""The most memory the service's buffers can hold at once, as a formula of the settings.

``docs/limits.md`` states it and a test (``tests/test_limits.py``) feeds a running server the
inputs that used to take gigabytes and checks its peak RSS against it. Each term is a budget
the code enforces, times the copies the code makes of what it counts:

- upload bodies: ``BODY_COPIES x max_body_bytes_inflight`` (the chunks the front door read,
  the app's buffer, the body as one ``bytes``), for all uploads together;
- decoded audio: ``max_decoded_bytes_inflight`` (counted at 32 bytes a sample: the samples
  with their analysis at its peak);
- each open WebSocket: ``WS_FRAMES x message_limit`` read by the libraries before the session
  sees it (the frames read ahead, the frame being assembled and its joining copy), plus its
  unanswered chunks: ``ws_max_inflight_bytes`` per socket, ``ws_user_inflight_bytes`` per
  user, whichever is smaller in all.

Beyond these: the process's own baseline (code, models: measured at start), the store's
index and read cache, and what the memory allocator keeps of what was freed.
"""

from __future__ import annotations

from typing import Final

from .config import Config
from .web.messages import MAX_CONTROL_BYTES

BODY_COPIES: Final = 3
# Frames read ahead of a session, plus the one being assembled and its joining copy: hypercorn
# queues up to its max_app_queue_size (10) on the HTTP port's /ws (a smaller queue wedges a
# connection whose client sends on after its session ended); the listener reads one ahead.
WS_FRAMES: Final = 10 + 2


def message_limit(config: Config) -> int:
    """The WebSocket libraries' frame limit: a chunk as base64 inside JSON, plus its envelope."""
    return config.max_body_bytes * 4 // 3 + MAX_CONTROL_BYTES


def worst_case_bytes(
    config: Config, *, sockets: int | None = None, users: int | None = None
) -> int:
    """The bytes the budgets allow at once, above the baseline, with *sockets* WebSockets of
    *users* users open (default: ``ws_max_sessions``, each of its own user)."""
    sockets = config.ws_max_sessions if sockets is None else sockets
    users = sockets if users is None else users
    unanswered = min(sockets * config.ws_max_inflight_bytes, users * config.ws_user_inflight_bytes)
    return (
        BODY_COPIES * config.max_body_bytes_inflight
        + config.max_decoded_bytes_inflight
        + sockets * WS_FRAMES * message_limit(config)
        + unanswered
    )
