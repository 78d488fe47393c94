"""Byte budgets (``trio_audio/budget.py``): taken before a buffer is made, given back once."""

from __future__ import annotations

import gc

import numpy as np
import pytest
import trio
import trio.testing

from trio_audio.budget import ByteBudget, Hold, Inflight, UserBudgets
from trio_audio.config import Config


async def test_a_budget_waits_for_room_then_refuses() -> None:
    budget = ByteBudget(100)
    assert budget.take_nowait(60)
    assert not budget.take_nowait(50)
    assert not await budget.take(101, 10)  # more than it holds never fits, at once
    async with trio.open_nursery() as nursery:
        got: list[bool] = []

        async def taker() -> None:
            got.append(await budget.take(50, 5))

        nursery.start_soon(taker)
        await trio.testing.wait_all_tasks_blocked()
        assert budget.statistics().waiting == 1
        budget.give(60)
    assert got == [True] and budget.used == 50
    assert not await budget.take(60, 0.05)
    assert budget.statistics().refused == 2


async def test_room_waits_without_taking() -> None:
    budget = ByteBudget(100)
    budget.take_nowait(80)
    assert await budget.room(20, 0)
    assert not await budget.room(21, 0.05)
    assert budget.used == 80


def test_a_hold_hands_its_bytes_to_what_it_made_and_gives_back_the_rest() -> None:
    budget = ByteBudget(1000)
    assert budget.take_nowait(300)
    hold = Hold(budget, 300)
    assert hold.more(200) and hold.size == 500
    samples = np.zeros(10)
    hold.hand_over(samples, 400)  # the array owns 400 now; the hold keeps 100
    assert (hold.size, budget.used) == (100, 500)
    hold.release()
    assert budget.used == 400
    assert not hold.more(1)  # released: a late decode gets no more
    del samples
    gc.collect()
    assert budget.used == 0


def test_a_hold_that_lacks_bytes_counts_them_all_the_same() -> None:
    budget = ByteBudget(100)
    hold = Hold(budget)
    made = np.zeros(1)
    hold.hand_over(made, 150)  # over the budget: counted, so others wait
    assert budget.used == 150 and not budget.take_nowait(1)
    del made
    gc.collect()
    assert budget.used == 0


async def test_a_senders_bytes_count_for_it_and_its_user_and_come_back_once() -> None:
    users = UserBudgets(100)
    one, two, other = Inflight(80, users), Inflight(80, users), Inflight(80, users)
    assert await one.take("alice", 70, 1)
    assert not await one.take("alice", 20, 0.05)  # its own 80 bytes: 70 taken
    assert not await two.take("alice", 40, 0.05)  # alice's 100 bytes: 70 taken
    assert await other.take("bob", 40, 1)
    assert len(users) == 2
    with pytest.raises(ValueError, match="holds bytes for 'bob'"):
        await other.take("alice", 1, 1)
    one.give(70)
    one.give(70)  # a late answer after the session let go: nothing twice
    assert await two.take("alice", 40, 1)
    two.close()
    other.close()
    assert two.held == other.held == 0 and len(users) == 0  # idle users are forgotten


def test_a_budget_smaller_than_one_body_is_refused() -> None:
    with pytest.raises(
        ValueError, match=r"ws_max_inflight_bytes \(1024\) must be at least max_body_bytes"
    ):
        Config(ws_max_inflight_bytes=1024)
    with pytest.raises(ValueError, match="max_decoded_bytes_inflight"):
        Config(max_decoded_bytes_inflight=1024 * 1024)
