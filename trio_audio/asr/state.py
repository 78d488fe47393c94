"""What the transcriber's parts share: a session's state, the chunks on their way, and the
board they all work on.

The parts (``intake.py``, ``feeder.py``, ``pool.py``, ``results.py``) each hold the one
``Board``: the sessions, the PCM held against ``asr_backlog_bytes``, the chunks waiting for
the feeder, the fair queue of utterances, the counts, and one event set whenever work is
added or done, which whoever waits for a change waits on.
"""

from __future__ import annotations

import collections
from typing import Any, Protocol

import attrs
import trio

from ..audio import vad
from ..config import Config
from ..errors import ServiceError
from ..live import LivePort, SpeechChange
from ..metrics import Metrics
from .context import PreviousWords
from .fair import FairQueue
from .reorder import Reorder
from .utterances import Assembler, Pack, Utterance

Key = tuple[str, str]
EARLY_OUTCOMES = ("used", "withdrawn", "unused")  # of early finals (``feeder.py``)


class ChunkSource(Protocol):
    """What the transcriber reads of the store, and its one write."""

    async def get(self, chunk_id: str) -> dict[str, Any]: ...

    def has(self, chunk_id: str) -> bool: ...

    def transcript_status(self, chunk_id: str) -> str | None: ...

    def offset_ms(self, chunk_id: str) -> float | None: ...

    def chunks_after(
        self, user_id: str, session_id: str, seq: int | None
    ) -> list[tuple[int, str]]: ...

    def pending_transcripts(self) -> list[str]: ...

    async def read_audio(self, chunk_id: str) -> tuple[bytes, str]: ...

    async def update(self, chunk_id: str, fields: dict[str, Any]) -> dict[str, Any]: ...

    async def update_many(
        self, updates: list[tuple[str, dict[str, Any]]]
    ) -> list[dict[str, Any] | ServiceError]: ...


@attrs.define(eq=False)
class Item:
    """A stored chunk on its way to the assembler."""

    chunk_id: str
    key: Key
    seq: int
    offset_ms: float
    duration_ms: float
    pcm: bytes | None
    since: float  # trio time it was offered
    segments: list[dict[str, float]] = attrs.field(factory=list)  # its speech
    transcribe: bool = True  # False: its status is not pending (VAD events only)


@attrs.define(eq=False)
class Span:
    """A chunk whose transcript is not final yet: the words that start inside it."""

    chunk_id: str
    seq: int
    start_ms: float
    end_ms: float
    since: float
    words: list[dict[str, Any]] = attrs.field(factory=list)
    failed: str | None = None  # why, when an utterance over it could not be decoded
    short_window: bool = False  # an utterance over it was decoded in the short window


@attrs.define(eq=False)
class Early:
    """An early final: the utterance that silence is ending (``Assembler.coming``), queued
    to be decoded before the rest of that silence is heard. If the utterance closes as
    foreseen, its decode is its final; if speech goes on, it is dropped (its words, if
    already decoded, were a partial)."""

    pack: Pack
    closed: bool = False  # the utterance closed as foreseen: the decode is its final
    answer: tuple[dict[str, Any], bool, float] | None = None  # decoded: (answer, short, context)

    @property
    def utterance(self) -> Utterance:
        return self.pack.utterances[0]


@attrs.define(eq=False)
class SessionState:
    key: Key
    activity: vad.SessionActivity
    last_active: float
    order: Reorder[Item]
    assembler: Assembler
    awaiting: collections.deque[Span] = attrs.field(factory=collections.deque)
    finals: collections.deque[Utterance] = attrs.field(factory=collections.deque)  # undecoded
    feeding: int = 0  # chunks handed to the feeder, not yet assembled
    last_seq: int = -1
    partial_at: float = -1e9
    speech_heard_at: float = 0.0  # trio time the last chunk with speech arrived
    heard: list[str] = attrs.field(factory=list)  # the last partial hypothesis' words
    stable: int = 0  # of those, the first words the hypothesis before agreed on
    completing: trio.Lock = attrs.field(factory=trio.Lock)
    previous: PreviousWords = attrs.field(factory=PreviousWords)  # for the next prompt
    early: Early | None = None  # the open (or just closed) utterance's early final
    vocabulary: tuple[str, ...] = ()  # words the session expects

    @property
    def busy(self) -> bool:
        return bool(self.order.waiting or self.feeding or self.finals or self.awaiting)


@attrs.define(eq=False)
class Board:
    """The state the transcriber's parts share, and the event that tells of its changes."""

    config: Config
    store: ChunkSource
    live: LivePort
    metrics: Metrics
    limiter: trio.CapacityLimiter
    sessions: dict[Key, SessionState] = attrs.field(init=False, factory=dict)
    counts: collections.Counter[str] = attrs.field(init=False, factory=collections.Counter)
    early_counts: collections.Counter[str] = attrs.field(  # early finals by outcome
        init=False, factory=collections.Counter
    )
    # PCM held: chunks not yet assembled and utterances not decoded
    pcm_bytes: int = attrs.field(init=False, default=0)
    running: bool = attrs.field(init=False, default=False)
    queue: FairQueue[Key, Pack] = attrs.field(init=False, factory=FairQueue)
    feed: collections.deque[tuple[SessionState, Item]] = attrs.field(
        init=False, factory=collections.deque
    )
    _changed: trio.Event = attrs.field(init=False, factory=trio.Event)  # set on every change

    @property
    def enabled(self) -> bool:
        return self.config.asr_engine != "none"

    def wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_change(self) -> None:
        await self._changed.wait()

    def drop_pcm(self, item: Item) -> None:
        if item.pcm is not None:
            self.pcm_bytes -= len(item.pcm)
            item.pcm = None

    def end_speech(self, session: SessionState) -> None:
        """The session's speech is over for now: its ``speech_stopped``, if it was speaking."""
        for event, at_ms in session.activity.end():
            self.publish_vad(session.key, event, at_ms)

    def publish_vad(self, key: Key, event: str, at_ms: float) -> None:
        self.live.publish(SpeechChange(key[0], key[1], event, at_ms))
