"""How transcription work lies on the cluster: a session's partition, the names of the work
stream, lease bucket and core subjects of one log, and what the work needs of the log's
store (``FollowedLog``). The rest of ``cluster/work.py``'s parts build on these.
"""

from __future__ import annotations

from typing import Protocol

import attrs

from ..store.index import SessionSummary
from .connect import Nats
from .stream import token


def partition(user_id: str, session_id: str, partitions: int) -> int:
    """The work partition of a session: what the server's ``{{partition(P,1,2)}}`` computes
    (FNV-1a 32 of the user and session subject tokens, concatenated, mod P)."""
    h = 0x811C9DC5
    for byte in (token(user_id) + token(session_id)).encode():
        h = ((h ^ byte) * 0x01000193) & 0xFFFFFFFF
    return h % partitions


@attrs.frozen
class Names:
    """The streams, bucket and subjects of one log's transcription work."""

    stream: str

    @property
    def work(self) -> str:
        return f"{self.stream}_asr"

    @property
    def leases(self) -> str:
        return f"{self.stream}_asr_leases"

    @property
    def live(self) -> str:
        return f"{self.stream}_asr_live"

    @property
    def finalize(self) -> str:
        return f"{self.stream}_asr_finalize"

    def transform(self, partitions: int) -> tuple[str, str]:
        """The work stream's subject transform: chunk records to partitioned work."""
        return (
            f"{self.stream}.*.*.work.*",
            f"{self.work}.{{{{partition({partitions},1,2)}}}}.{{{{wildcard(1)}}}}"
            ".{{wildcard(2)}}.{{wildcard(3)}}",
        )


class FollowedLog(Protocol):
    """What cluster work needs of the JetStream backend (``JetStreamStore``): its node id
    and connection, its follower's progress, a session's chunks, and which of them its
    index has ``pending``."""

    @property
    def node(self) -> str: ...

    @property
    def nats(self) -> Nats: ...

    async def wait_followed(self, seq: int) -> bool: ...

    async def applied_more(self) -> None: ...

    async def announced_all(self) -> None: ...

    def pending_key(self, chunk_id: str) -> tuple[str, str, int] | None: ...

    def pending_now(self) -> list[tuple[str, str, str]]: ...

    def summary(self, user_id: str, session_id: str) -> SessionSummary | None: ...

    def chunks_after(
        self, user_id: str, session_id: str, seq: int | None
    ) -> list[tuple[int, str]]: ...

    def transcript_status(self, chunk_id: str) -> str | None: ...
