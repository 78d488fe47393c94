"""Two ways of using a memory channel that save a trip through the scheduler per item.

A task that wakes for one item and finds more already waiting takes them all at once
(``waiting``); a task handing an item on sends it at once while there is room (``put``).
Each trip through the scheduler costs a few microseconds of Python; at a thousand WebSocket
frames a second, a task that wakes once per frame instead of once per batch pays for it
(``bench/hops.py`` measures a hop).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import trio

T = TypeVar("T")


def waiting(
    first: T,
    receive: trio.MemoryReceiveChannel[T],
    most: int,
    weigh: Callable[[T], int] | None = None,
    heaviest: int = 0,
) -> list[T]:
    """*first* and the items already waiting behind it on *receive*, at most *most* in all
    and, with *weigh*, no more once their weights add up to *heaviest*; never waits."""
    items = [first]
    weight = weigh(first) if weigh is not None else 0
    while len(items) < most and (weigh is None or weight < heaviest):
        try:
            items.append(receive.receive_nowait())
        except (trio.WouldBlock, trio.EndOfChannel):
            break
        if weigh is not None:
            weight += weigh(items[-1])
    return items


async def put(channel: trio.MemorySendChannel[T], value: T) -> None:
    """Send *value* at once while *channel* has room, else wait for room: the sender skips a
    trip through the scheduler (it checkpoints elsewhere once per item: the receive, or the
    reply it waits for)."""
    try:
        channel.send_nowait(value)
    except trio.WouldBlock:
        await channel.send(value)
