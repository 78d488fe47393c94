"""The reorder buffer: a session's chunks go on in seq order, and a gap is waited out."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from trio_audio.asr.reorder import Reorder


def test_in_order_chunks_go_on_at_once() -> None:
    order: Reorder[str] = Reorder(next_seq=0, limit=4)
    assert order.add(0, "a", now=0.0) == ["a"]
    assert order.add(1, "b", now=0.0) == ["b"]
    assert order.next_seq == 2 and not order.waiting


def test_a_chunk_ahead_waits_for_the_one_before_it() -> None:
    order: Reorder[str] = Reorder(next_seq=0, limit=4)
    assert order.add(2, "c", now=1.0) == []
    assert order.add(1, "b", now=1.5) == []
    assert order.add(0, "a", now=2.0) == ["a", "b", "c"]
    assert order.next_seq == 3 and not order.waiting


def test_a_gap_that_never_fills_is_waited_out() -> None:
    order: Reorder[str] = Reorder(next_seq=0, limit=4)
    order.add(1, "b", now=10.0)
    order.add(3, "d", now=10.2)
    assert not order.overdue(now=10.9, wait_s=1.0)
    assert order.overdue(now=11.0, wait_s=1.0)  # timed from the first wait
    assert order.release(now=11.0, everything=True) == ["b", "d"]
    assert order.next_seq == 4 and not order.overdue(now=20.0, wait_s=1.0)


def test_a_full_buffer_lets_everything_go_rather_than_grow() -> None:
    order: Reorder[int] = Reorder(next_seq=0, limit=2)
    order.add(5, 5, now=0.0)
    order.add(3, 3, now=0.0)
    assert len(order) == 2
    assert order.add(9, 9, now=0.0) == [9, 3, 5]  # over the limit: the newcomer and the rest
    assert not order.waiting


def test_a_late_chunk_from_before_the_start_goes_on_at_once() -> None:
    order: Reorder[str] = Reorder(next_seq=5, limit=4)
    assert order.add(2, "old", now=0.0) == ["old"]  # already past: nothing to wait for
    assert order.next_seq == 5


@given(st.permutations(list(range(12))))
def test_any_arrival_order_comes_out_in_seq_order(arrivals: list[int]) -> None:
    order: Reorder[int] = Reorder(next_seq=0, limit=len(arrivals))
    out: list[int] = []
    for seq in arrivals:
        out += order.add(seq, seq, now=0.0)
    assert out == sorted(arrivals)
