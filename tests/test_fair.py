"""The fair queue: finals round robin across sessions, partials when no final waits or their turn
comes."""

from __future__ import annotations

from trio_audio.asr.fair import FINALS_PER_PARTIAL, FairQueue


def drain(queue: FairQueue[str, str]) -> list[str]:
    out = []
    while (taken := queue.take()) is not None:
        key, job, _ = taken
        out.append(job)
        queue.done(key)
    return out


def test_a_long_session_takes_one_turn_a_round() -> None:
    queue: FairQueue[str, str] = FairQueue()
    for n in range(4):
        queue.put_final("file", f"file{n}")
    queue.put_final("short", "short0")
    assert drain(queue) == ["file0", "short0", "file1", "file2", "file3"]


def test_one_final_in_flight_per_session() -> None:
    queue: FairQueue[str, str] = FairQueue()
    queue.put_final("a", "a0")
    queue.put_final("a", "a1")
    assert queue.take() == ("a", "a0", True)
    assert queue.take() is None  # a1 waits for a0: a session's words stay in order
    queue.done("a")
    assert queue.take() == ("a", "a1", True)


def test_finals_go_before_partials_and_only_the_newest_partial_is_kept() -> None:
    queue: FairQueue[str, str] = FairQueue()
    queue.put_partial("a", "a-old")
    queue.put_partial("a", "a-new")  # the old one is dropped, not queued
    queue.put_final("b", "b0")
    assert queue.take() == ("b", "b0", True)
    assert queue.take() == ("a", "a-new", False)
    assert queue.take() is None


def test_a_final_makes_the_sessions_partial_stale() -> None:
    queue: FairQueue[str, str] = FairQueue()
    queue.put_partial("a", "a-partial")
    queue.put_final("a", "a0")
    assert drain(queue) == ["a0"]
    assert queue.partials_waiting == 0 and queue.finals_waiting() == 0


def test_partials_can_be_held_back_while_finals_still_go() -> None:
    queue: FairQueue[str, str] = FairQueue()
    queue.put_partial("a", "a-partial")
    assert queue.take(partials=False) is None
    queue.put_final("b", "b-final")
    assert queue.take(partials=False) == ("b", "b-final", True)
    assert queue.take() == ("a", "a-partial", False)


def test_a_waiting_partial_gets_a_turn_while_finals_keep_coming() -> None:
    # Busy workers: other sessions always have a final waiting. The live talker's partial
    # still goes, after FINALS_PER_PARTIAL finals, instead of never.
    queue: FairQueue[str, str] = FairQueue()
    for n in range(6):
        queue.put_final(f"s{n}", f"final{n}")
    queue.put_partial("live", "live-partial")
    order = drain(queue)
    assert order.index("live-partial") == FINALS_PER_PARTIAL
    assert order[:FINALS_PER_PARTIAL] == [f"final{n}" for n in range(FINALS_PER_PARTIAL)]  # first
    assert sorted(order) == sorted([*(f"final{n}" for n in range(6)), "live-partial"])


def test_a_final_not_yet_taken_can_be_taken_back() -> None:
    # An early final whose utterance went on: taken back, the session's others keep their
    # order; one already taken (being decoded) cannot be.
    queue: FairQueue[str, str] = FairQueue()
    queue.put_final("a", "a0")
    queue.put_final("a", "early")
    queue.put_final("b", "b0")
    assert queue.withdraw("a", "early") and not queue.withdraw("a", "early")
    assert queue.finals_waiting("a") == 1
    assert queue.take() == ("a", "a0", True)
    assert not queue.withdraw("a", "a0")
    queue.done("a")
    assert drain(queue) == ["b0"]
    queue.put_final("c", "c0")
    assert queue.withdraw("c", "c0") and queue.finals_waiting() == 0 and queue.take() is None
