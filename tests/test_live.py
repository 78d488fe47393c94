"""The live port's results: rendered for watchers, and carried between cluster nodes."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from trio_audio.hub import Hub
from trio_audio.live import Partial, SpeechChange, live_from_dict, live_to_dict
from trio_audio.web.messages import live_message, transcript_message
from trio_audio.web.watchers import Watchers

WORDS = [{"word": "hello", "start_ms": 120.0, "end_ms": 480.0}]


def test_a_partial_has_the_keys_of_a_final() -> None:
    chunk: dict[str, Any] = {
        "chunk_id": "c1", "seq": 3, "offset_ms": 300.0, "audio": {"duration_ms": 100.0},
        "transcript": {"status": "done", "text": "hello", "words": WORDS},
    }  # fmt: skip
    final = transcript_message(chunk)
    partial = live_message(Partial("u", "s", 3, WORDS, 100.0, 500.0))
    assert final is not None and final.keys() == partial.keys()
    assert (final["start_ms"], final["end_ms"], final["is_final"]) == (300.0, 400.0, True)
    assert (partial["status"], partial["chunk_id"], partial["text"]) == ("partial", None, "hello")
    assert transcript_message({**chunk, "transcript": {"status": "pending"}}) is None


def test_live_results_cross_nodes_unchanged_and_anything_else_is_refused() -> None:
    for item in (
        Partial("u", "s", 3, WORDS, 100.0, 500.0),
        SpeechChange("u", "s", "speech_started", 5.0),
    ):
        assert live_from_dict(json.loads(json.dumps(live_to_dict(item)))) == item
    bad = [
        {},
        {"kind": "Nope"},
        {"kind": "SpeechChange", "user_id": "u", "session_id": "s", "event": "x", "at_ms": 1},
        {"kind": "SpeechChange", "user_id": "u", "session_id": "s", "event": "speech_started",
         "at_ms": math.nan},
        {"kind": "Partial", "user_id": "u", "session_id": "s", "seq": "1", "words": [],
         "start_ms": 0, "end_ms": 1},
        {"kind": "Partial", "user_id": "u", "session_id": "s", "seq": 1, "words": [{"w": 1}],
         "start_ms": 0, "end_ms": 1},
        {"kind": "Partial", "user_id": 5, "session_id": "s", "seq": 1, "words": [],
         "start_ms": 0, "end_ms": 1, "extra": True},
    ]  # fmt: skip
    for data in bad:
        with pytest.raises(ValueError):
            live_from_dict(data)


async def test_watchers_get_each_message_rendered_once_and_nothing_is_rendered_unwatched() -> None:
    hub = Hub(queue_size=8)
    watchers = Watchers(hub)
    watchers.publish(SpeechChange("u", "s", "speech_started", 5.0))  # nobody watches: dropped
    with hub.subscribe("u", "s") as one, hub.subscribe("u", "s") as two:
        watchers.publish(SpeechChange("u", "s", "speech_stopped", 9.04))
        got = one.receive.receive_nowait()
        assert got is two.receive.receive_nowait()  # the same rendering for both
        assert json.loads(got.text) == {"type": "vad", "event": "speech_stopped", "at_ms": 9.0}
    assert hub.published == 2
