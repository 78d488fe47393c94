"""The live-results hub: fan-out per session, no echo to the sender, slow readers cut off."""

from __future__ import annotations

from trio_audio.hub import Hub, Wire


def msg(k: int) -> Wire:
    return Wire("n", str(k))


async def test_watchers_of_a_session_get_its_messages_but_not_their_own_echo() -> None:
    hub = Hub(queue_size=4)
    me = "socket-1"
    with (
        hub.subscribe("u", "s", source=me) as mine,
        hub.subscribe("u", "s") as other,
        hub.subscribe("u", "elsewhere") as unrelated,
    ):
        hub.publish("u", "s", msg(1))
        hub.publish("u", "s", msg(2), source=me)
        assert other.receive.receive_nowait() == msg(1)
        assert other.receive.receive_nowait() == msg(2)
        assert mine.receive.receive_nowait() == msg(1)
        assert hub.watchers("u", "s") == 2
        assert unrelated.receive.statistics().current_buffer_used == 0
    assert hub.watchers("u", "s") == 0 and hub.sessions_watched == 0


async def test_a_watcher_that_falls_behind_is_cut_off_and_others_go_on() -> None:
    hub = Hub(queue_size=2)
    with hub.subscribe("u", "s") as slow, hub.subscribe("u", "s") as fast:
        for n in range(3):
            hub.publish("u", "s", msg(n))
            assert fast.receive.receive_nowait() == msg(n)
        assert slow.overflowed
        assert [m async for m in slow.receive] == [msg(0), msg(1)]  # then the end
        hub.publish("u", "s", msg(3))
        assert fast.receive.receive_nowait() == msg(3)
    assert not fast.overflowed


async def test_a_session_is_watched_by_anyone_but_the_sender() -> None:
    hub = Hub(queue_size=2)
    assert not hub.watched("u", "s")
    with hub.subscribe("u", "s", source="me"):
        assert hub.watched("u", "s") and not hub.watched("u", "s", source="me")
        with hub.subscribe("u", "s"):
            assert hub.watched("u", "s", source="me")
    assert not hub.watched("u", "s")
