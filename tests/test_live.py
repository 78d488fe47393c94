"""The live port's results: rendered for watchers, and carried between cluster nodes."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest
import trio
from trio.testing import wait_all_tasks_blocked

from trio_audio.asr.reorder import Reorder
from trio_audio.asr.results import Results
from trio_audio.asr.state import Board, SessionState
from trio_audio.asr.utterances import Assembler, single
from trio_audio.audio import vad
from trio_audio.config import Config
from trio_audio.fanout import FanOut
from trio_audio.hub import Hub
from trio_audio.live import Live, Partial, SpeechChange, live_from_dict, live_to_dict
from trio_audio.metrics import Metrics
from trio_audio.store.events import ChunkStored, ChunkUpdated, Committed
from trio_audio.web.messages import live_message, transcript_message
from trio_audio.web.watchers import Watchers

WORDS = [{"word": "hello", "start_ms": 120.0, "end_ms": 480.0}]


def test_a_partial_has_the_keys_of_a_final() -> None:
    chunk: dict[str, Any] = {
        "chunk_id": "c1", "seq": 3, "offset_ms": 300.0, "audio": {"duration_ms": 100.0},
        "transcript": {"status": "done", "text": "hello", "words": WORDS},
    }  # fmt: skip
    final = transcript_message(chunk)
    partial = live_message(Partial("u", "s", 3, WORDS, 100.0, 500.0, stable=0))
    assert final is not None and partial.keys() == final.keys() | {"stable"}
    assert partial["stable"] == 0  # none of its words held yet
    assert (final["start_ms"], final["end_ms"], final["is_final"]) == (300.0, 400.0, True)
    assert (partial["status"], partial["chunk_id"], partial["text"]) == ("partial", None, "hello")
    assert transcript_message({**chunk, "transcript": {"status": "pending"}}) is None


def test_live_results_cross_nodes_unchanged_and_anything_else_is_refused() -> None:
    for item in (
        Partial("u", "s", 3, WORDS, 100.0, 500.0),
        Partial("u", "s", 3, WORDS, 100.0, 500.0, stable=1),
        SpeechChange("u", "s", "speech_started", 5.0),
    ):
        assert live_from_dict(json.loads(json.dumps(live_to_dict(item)))) == item
    bad: list[dict[str, Any]] = [
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
        {"kind": "Partial", "user_id": "u", "session_id": "s", "seq": 1, "words": WORDS,
         "start_ms": 0, "end_ms": 1, "stable": 2},
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


class NoTranscriber:
    def offer(self, event: ChunkStored) -> None:
        raise AssertionError("only new chunks go to the transcriber")


def final(seq: int) -> ChunkUpdated:
    return ChunkUpdated({
        "user_id": "u", "session_id": "s", "chunk_id": f"c{seq}", "seq": seq,
        "offset_ms": 100.0 * seq, "audio": {"duration_ms": 100.0},
        "transcript": {"status": "done", "text": "hello", "words": WORDS},
    })  # fmt: skip


async def test_session_end_reaches_watchers_after_the_finals_committed_before_it() -> None:
    # POST .../end says session_end once the finals are stored; their events may still be
    # on their way through the fan-out. The watchers must get the finals first.
    hub = Hub(queue_size=16)
    watchers = Watchers(hub)
    send, receive = trio.open_memory_channel[Committed](8)
    fan = FanOut(receive, watchers, NoTranscriber())
    watchers.after_pending = fan.after_pending
    end = {"type": "session_end", "summary": {}}
    with hub.subscribe("u", "s") as sub:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(fan.run)
            await wait_all_tasks_blocked()  # the fan-out waits in receive
            for seq in range(3):  # the first is handed to it, the others wait in the buffer
                send.send_nowait(final(seq))
            watchers.say("u", "s", end)
            await wait_all_tasks_blocked()
            said = [json.loads(sub.receive.receive_nowait().text) for _ in range(4)]
            assert [m["type"] for m in said] == ["transcript"] * 3 + ["session_end"]
            assert [m["seq"] for m in said[:3]] == [0, 1, 2]
            watchers.say("u", "s", end)  # nothing pending: at once
            assert json.loads(sub.receive.receive_nowait().text)["type"] == "session_end"
            send.send_nowait(final(3))
            await send.aclose()
            watchers.say("u", "s", end)  # pending when the store ends: still said, after it
    said = [json.loads(sub.receive.receive_nowait().text)["type"] for _ in range(2)]
    assert said == ["transcript", "session_end"]


class Seen:
    """A live port that keeps what it is given."""

    def __init__(self) -> None:
        self.items: list[Live] = []

    def publish(self, item: Live) -> None:
        self.items.append(item)


async def test_a_talker_sees_each_new_hypothesis_at_once_and_how_much_of_it_held() -> None:
    config = Config()
    seen = Seen()
    board = Board(config, None, seen, Metrics(), trio.CapacityLimiter(1))  # type: ignore[arg-type]
    assembler = Assembler(config.vad_gap_ms, 30_000)
    session = SessionState(("u", "s"), vad.SessionActivity(config.vad_gap_ms), 0.0,
                           Reorder(0, 8), assembler)  # fmt: skip
    assembler.add(0.0, np.zeros(16_000, np.int16), [(0.0, 1000.0)])  # speech, still open
    open_utterance = assembler.partial()
    assert open_utterance is not None
    pack = single(open_utterance)

    def decoded(*said: str) -> dict[str, Any]:
        words = [{"word": w, "start_ms": 100.0 * i, "end_ms": 100.0 * i + 90} for i, w in
                 enumerate(said)]  # fmt: skip
        return {"ok": True, "words": words}

    results = Results(board)
    for said in [("turn", "of"), ("turn", "of"), ("turn", "on", "the"), ("turn", "on", "the"),
                 ("turn", "on", "the"), ()]:  # fmt: skip
        results.apply_partial(session, pack, decoded(*said))
    shown = [([w["word"] for w in p.words], p.stable) for p in seen.items if isinstance(p, Partial)]
    assert shown == [
        (["turn", "of"], 0),  # the first hypothesis at once, none of it held yet
        (["turn", "of"], 2),  # the next agrees
        (["turn", "on", "the"], 1),  # a new one: only "turn" held
        (["turn", "on", "the"], 3),
    ]  # the same again, or nothing heard: nothing new to show
