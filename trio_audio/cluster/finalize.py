"""Finalize on a cluster: a session's open utterance ended on whichever worker holds it.

``finalize`` (WebSocket ``finalize``/``end``, HTTP session end) on a node whose worker
holds the session's partition finalizes it there; elsewhere it is a core NATS request on
``<stream>_asr_finalize.<p>`` to the holder (``serve`` takes those for the partitions this
worker holds, and says so at once), asked again until one takes it (for a moment no worker
may hold the partition), while this node waits until its follower has the session's
transcripts (at most ``FINALIZE_WAIT_S``). Either way the request names the session's last
chunk still pending here (``through``): the holder's work may lag this node's, and it ends
the utterance only once that chunk has reached it (``Transcriber.finalize``).
"""

from __future__ import annotations

import contextlib
import json
from typing import Any, Final

import trio

from ..asr.transcriber import Transcriber
from ..config import Config
from ..errors import StoreUnavailable
from .bridge import NatsError, NoResponders
from .connect import Nats
from .leases import Leases
from .partitions import FollowedLog, Names, partition

FINALIZE_WAIT_S: Final = 60.0  # how long a finalize waits for the session's transcripts
ASK_S: Final = 2.0  # how long one ask waits for a holder to take it
ASK_AGAIN_S: Final = 0.25  # ... and the pause before the next, when none did


class Finalizer:
    """Finalize requests, sent and answered (see the module docstring)."""

    def __init__(self, config: Config, names: Names, store: FollowedLog, leases: Leases) -> None:
        self._config = config
        self._names = names
        self._store = store
        self._leases = leases

    async def serve(
        self, nats: Nats, inbox: Any, nursery: trio.Nursery, transcriber: Transcriber
    ) -> None:
        """Answer "finalize this session" for the partitions this worker holds."""
        while True:
            for message in await inbox.take(1.0):
                asked = _asked(message.subject, message.data)
                if asked is None:
                    continue
                p, key, through = asked
                if p in self._leases.holding and message.reply:
                    nursery.start_soon(
                        self._finalize_for, nats, key, through, message.reply, transcriber
                    )

    async def _finalize_for(
        self,
        nats: Nats,
        key: tuple[str, str],
        through: int | None,
        reply: str,
        transcriber: Transcriber,
    ) -> None:
        with contextlib.suppress(NatsError):  # taken: the asker waits for its follower now
            await nats.publish_core(reply, b"taken")
        await transcriber.finalize(*key, through=through)

    async def finalize(
        self, user_id: str, session_id: str, transcriber: Transcriber | None
    ) -> None:
        """End the session's open utterance now, on whichever worker holds it; returns once
        this node's follower has its transcripts (or after ``FINALIZE_WAIT_S``)."""
        p = partition(user_id, session_id, self._config.asr_partitions)
        through = self._last_pending(user_id, session_id)
        with trio.move_on_after(FINALIZE_WAIT_S):
            asked = {"user_id": user_id, "session_id": session_id, "through": through}
            body = json.dumps(asked).encode()
            if p in self._leases.holding and transcriber is not None:
                await transcriber.finalize(user_id, session_id, through=through)
            elif through is None:  # nothing of it waits for words: one ask, no wait
                with contextlib.suppress(NatsError, StoreUnavailable):  # (none listening too)
                    await self._store.nats.request(self._subject(p), body, ASK_S)
            else:
                await self._ask_and_wait(p, body, user_id, session_id)
            # The index has the transcripts; their events (the finals watchers get before
            # session_end) may still be on their way to the fan-out.
            await self._store.announced_all()

    async def _ask_and_wait(self, p: int, body: bytes, user_id: str, session_id: str) -> None:
        """Ask partition *p*'s holder to finalize, and wait until this node's index has the
        session's transcripts."""
        async with trio.open_nursery() as nursery:

            async def ask() -> None:
                if not await self._ask(p, body):
                    nursery.cancel_scope.cancel()  # no worker at all: nothing to wait for

            nursery.start_soon(ask)
            while self._session_pending(user_id, session_id):
                await self._store.applied_more()
            nursery.cancel_scope.cancel()

    async def _ask(self, p: int, body: bytes) -> bool:
        """Ask partition *p*'s holder to finalize until one takes it: for a moment no worker
        may hold it (a lease that lapsed, not taken again yet), and then nobody answers.
        False when no worker listens at all (its chunks wait for one)."""
        while True:
            try:
                await self._store.nats.request(self._subject(p), body, ASK_S)
                return True
            except NoResponders:
                return False
            except (NatsError, StoreUnavailable):
                await trio.sleep(ASK_AGAIN_S)

    def _subject(self, p: int) -> str:
        return f"{self._names.finalize}.{p}"

    def _last_pending(self, user_id: str, session_id: str) -> int | None:
        """The seq of the session's last chunk still waiting for its transcript (None:
        none), which the holder waits to have before it ends the session's utterance."""
        if not self._session_pending(user_id, session_id):
            return None  # (the index keeps the session's status: no chunk looked at)
        for seq, chunk_id in reversed(self._store.chunks_after(user_id, session_id, None)):
            if self._store.transcript_status(chunk_id) == "pending":
                return seq
        return None

    def _session_pending(self, user_id: str, session_id: str) -> bool:
        """Whether a chunk of the session still waits for its transcript (the index keeps
        the session's status, so this unpacks nothing)."""
        summary = self._store.summary(user_id, session_id)
        return summary is not None and summary.transcript["status"] == "pending"


def _asked(subject: str, data: bytes) -> tuple[int, tuple[str, str], int | None] | None:
    """A finalize request's partition, session and ``through`` seq (None: not one)."""
    try:
        p = int(subject.rsplit(".", 1)[-1])
        body = json.loads(data)
        key = (str(body["user_id"]), str(body["session_id"]))
        through = body.get("through")
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    if type(through) is not int:
        through = None  # (not one: the session's utterance is ended at once, as before)
    return p, key, through
