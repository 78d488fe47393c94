"""The upload gate: a bounded number inside, a short wait, then an explicit refusal."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from trio_audio.errors import Overloaded
from trio_audio.web import admission
from trio_audio.web.admission import Admission


async def hold(gate: Admission, seconds: float) -> None:
    async with gate.admit():
        await trio.sleep(seconds)


async def test_waiters_get_slots_in_turn_within_the_wait(autojump_clock: trio.abc.Clock) -> None:
    gate = Admission(2, max_wait_s=1.0, target_s=10.0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(hold, gate, 0.5)
        nursery.start_soon(hold, gate, 0.5)
        await trio.testing.wait_all_tasks_blocked()
        assert gate.statistics().inside == 2
        started = trio.current_time()
        async with gate.admit():  # waits for one of the two, not runnable meanwhile
            assert trio.current_time() - started == pytest.approx(0.5)
    stats = gate.statistics()
    assert (stats.inside, stats.waiting, stats.admitted, stats.refused) == (0, 0, 3, 0)


async def test_no_slot_within_the_wait_is_an_explicit_retryable_refusal(
    autojump_clock: trio.abc.Clock,
) -> None:
    gate = Admission(1, max_wait_s=0.2, retry_after_s=3)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(hold, gate, 5.0)
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(Overloaded) as refused:
            async with gate.admit():
                pytest.fail("admitted with no slot")
        assert refused.value.retry_after == 3 and refused.value.retryable
        assert gate.statistics().refused == 1
        nursery.cancel_scope.cancel()
    assert gate.statistics().inside == 0  # the held slot came back on cancellation


async def test_a_standing_queue_turns_waiting_into_refusing_at_once_until_it_drains(
    autojump_clock: trio.abc.Clock,
) -> None:
    gate = Admission(1, max_wait_s=1.0, target_s=0.05, interval_s=0.5)
    refused_at: list[float] = []

    async def client(delay: float) -> None:
        await trio.sleep(delay)
        started = trio.current_time()
        try:
            async with gate.admit():
                await trio.sleep(0.2)  # each upload takes 0.2 s: capacity 5/s
        except Overloaded:
            refused_at.append(trio.current_time() - started)

    async with trio.open_nursery() as nursery:
        for n in range(40):  # 20/s offered for 2 s: 4x capacity
            nursery.start_soon(client, n * 0.05)
    assert refused_at, "overload must be refused"
    assert min(refused_at) == 0.0  # once the delay stood above target: refused without a wait
    assert not gate.overloaded(trio.current_time() + 10)  # the last admissions were quick
    gate_after = gate.statistics()
    assert gate_after.inside == 0 and gate_after.waiting == 0


async def test_a_zero_wait_refuses_at_once_when_full(autojump_clock: trio.abc.Clock) -> None:
    gate = Admission(1, max_wait_s=0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(hold, gate, 1.0)
        await trio.testing.wait_all_tasks_blocked()
        before = trio.current_time()
        with pytest.raises(Overloaded):
            await gate.acquire()
        assert trio.current_time() == before


async def test_refusals_are_paced_per_connection_by_their_retry_after(
    autojump_clock: trio.abc.Clock,
) -> None:
    gate = Admission(1, max_wait_s=0, retry_after_s=3)
    never = trio.Event()
    started = trio.current_time()
    await gate.pace(("10.0.0.1", 5000), never)  # a connection's first refusal: at once
    await gate.pace(("10.0.0.2", 5000), never)  # another connection's: at once too
    assert trio.current_time() == started
    await trio.sleep(1)
    await gate.pace(("10.0.0.1", 5000), never)  # sent again at once: held until its Retry-After
    assert trio.current_time() - started == pytest.approx(3)
    stats = gate.statistics()
    assert (stats.held, stats.paced) == (0, 1)
    await trio.sleep(3)  # a client that waits what it was told is never held
    before = trio.current_time()
    await gate.pace(("10.0.0.1", 5000), never)
    assert trio.current_time() == before
    await gate.pace(None, never)  # no known connection: nothing to pace by
    await gate.pace(None, never)
    assert trio.current_time() == before and gate.statistics().paced == 1


async def test_a_held_refusal_is_let_go_at_once_when_the_service_drains(
    autojump_clock: trio.abc.Clock,
) -> None:
    gate = Admission(1, max_wait_s=0, retry_after_s=30)
    draining = trio.Event()
    await gate.pace("connection", draining)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(gate.pace, "connection", draining)
        await trio.testing.wait_all_tasks_blocked()
        assert gate.statistics().held == 1
        await trio.sleep(2)
        draining.set()
    assert trio.current_time() == pytest.approx(2)
    assert gate.statistics().held == 0


async def test_pacing_remembers_a_bounded_number_of_connections(
    autojump_clock: trio.abc.Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(admission, "PACED_CONNECTIONS_MAX", 2)
    gate = Admission(1, max_wait_s=0, retry_after_s=3)
    never = trio.Event()
    await gate.pace("a", never)
    await gate.pace("b", never)
    await gate.pace("c", never)  # past the bound: "a", the oldest, is forgotten
    started = trio.current_time()
    await gate.pace("a", never)  # so it is not held (and "b" is forgotten now)
    assert trio.current_time() == started
    await gate.pace("c", never)  # still remembered: held until its Retry-After
    assert trio.current_time() - started == pytest.approx(3)
    await trio.sleep(10)  # all let go: each is at once again, and only the last two are kept
    before = trio.current_time()
    for connection in "abcd":
        await gate.pace(connection, never)
    assert trio.current_time() == before
    await gate.pace("a", never)  # forgotten again (only "c" and "d" are kept): at once
    assert trio.current_time() == before
    await gate.pace("d", never)  # kept: held
    assert trio.current_time() - before == pytest.approx(3)
