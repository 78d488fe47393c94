"""Who is asking: bearer tokens bound to users, and a per-user upload rate limit.

Tokens file: one ``USER_ID sha256:HEXDIGEST`` a line (``#`` starts a comment). Only the
SHA-256 of each token is stored, so the file does not hold usable secrets; ``trio-audio
token add USER`` makes a token, appends its digest and prints the token once. Whatever
changes the file holds ``locked(path)`` (an exclusive ``flock`` on ``PATH.lock``), so an
``add`` and a ``revoke`` run at once never lose each other's change.

The service re-reads the file when it changes (``TokensFile``: its inode, size and mtime are
looked at once per ``TOKENS_CHECK_S`` at most, and the file is read only when they differ),
so a token added or revoked takes effect within about a second, without a restart.

A presented token is hashed, and the digest is compared with ``hmac.compare_digest`` against
every stored one without stopping early, so the time taken tells nothing about any token.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import logging
import math
import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import attrs

from ..errors import RateLimited, Unauthorized
from ..models import check_id

TOKEN_BYTES: Final = 32
DIGEST_PREFIX: Final = "sha256:"
TOKENS_CHECK_S: Final = 1.0  # the most often the service looks at the tokens file

logger = logging.getLogger("trio_audio.auth")


def digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


@attrs.frozen
class Tokens:
    """The tokens file, loaded: (digest, user_id) pairs."""

    entries: tuple[tuple[str, str], ...]

    @classmethod
    def load(cls, path: Path) -> Tokens:
        """Read *path*; ``ValueError`` naming the line when one is malformed."""
        entries = []
        for number, line in enumerate(path.read_text().splitlines(), 1):
            text = line.split("#", 1)[0].strip()
            if not text:
                continue
            fields = text.split()
            if len(fields) != 2 or not fields[1].startswith(DIGEST_PREFIX):
                msg = f"{path}:{number}: expected 'USER_ID sha256:HEX'"
                raise ValueError(msg)
            user_id, hexdigest = fields[0], fields[1].removeprefix(DIGEST_PREFIX)
            check_id("user_id", user_id)
            if len(hexdigest) != 64:
                msg = f"{path}:{number}: a sha256 digest is 64 hex digits"
                raise ValueError(msg)
            entries.append((hexdigest.lower(), user_id))
        return cls(tuple(entries))

    def user_for(self, token: str | None) -> str:
        """The user the token belongs to; ``Unauthorized`` if it is missing or unknown."""
        if not token:
            msg = "send 'Authorization: Bearer TOKEN' (WebSocket: also ?token= or start.token)"
            raise Unauthorized(msg)
        presented = digest(token)
        found = None
        for stored, user_id in self.entries:  # no early exit: constant time in the tokens
            if hmac.compare_digest(stored, presented):
                found = user_id
        if found is None:
            msg = "the bearer token is not valid"
            raise Unauthorized(msg)
        return found


class TokensFile:
    """The tokens file as a running service uses it: re-read when it has changed.

    ``generation`` counts the changes taken in, so a holder of a checked token (an open
    WebSocket) checks it again only after one. A change that cannot be read (a malformed line,
    the file gone) is logged once and the tokens before it stay in force.

    Resource handling: at most one ``stat`` per ``check_every_s``, on the caller's thread (the
    file is small: a line per token); a read only when the stat differs.
    """

    def __init__(self, path: Path, *, check_every_s: float = TOKENS_CHECK_S) -> None:
        self.path = path
        self.check_every_s = check_every_s
        self._signature = _signature(path)
        self.tokens = Tokens.load(path)  # ValueError / OSError: the caller refuses to start
        self.generation = 0
        self._checked = time.monotonic()

    def current(self) -> Tokens:
        """The tokens in force, having looked at the file if it is time to."""
        now = time.monotonic()
        if now - self._checked >= self.check_every_s:
            self._checked = now
            self._reload()
        return self.tokens

    def user_for(self, token: str | None) -> str:
        return self.current().user_for(token)

    def _reload(self) -> None:
        try:
            signature = _signature(self.path)
        except OSError as exc:
            signature = (0, 0, 0)
            problem = f"cannot read it ({exc.strerror})"
        else:
            problem = ""
        if signature == self._signature:
            return
        self._signature = signature
        if not problem:
            try:
                tokens = Tokens.load(self.path)
            except (OSError, ValueError) as exc:
                problem = str(exc)
            else:
                self.tokens, self.generation = tokens, self.generation + 1
                logger.info("tokens file %s re-read: %d tokens", self.path, len(tokens.entries))
                return
        logger.error("tokens file %s changed but %s: the tokens before stay in force",
                     self.path, problem)  # fmt: skip


def _signature(path: Path) -> tuple[int, int, int]:
    """What tells a changed file: its inode (a rename replaced it), size and mtime."""
    st = path.stat()
    return st.st_ino, st.st_size, st.st_mtime_ns


def bearer(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer ...`` header, if it has one."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def add_token(path: Path, user_id: str) -> str:
    """Create a token for *user_id*, append its digest to *path* (mode 0600), return it."""
    check_id("user_id", user_id)
    token = secrets.token_urlsafe(TOKEN_BYTES)
    while token.startswith("-"):  # one a command line takes for an option (--token -x...)
        token = secrets.token_urlsafe(TOKEN_BYTES)
    path.parent.mkdir(parents=True, exist_ok=True)
    with locked(path):
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(fd, "a") as f:
            f.write(f"{user_id} {DIGEST_PREFIX}{digest(token)}\n")
            f.flush()
            os.fsync(f.fileno())
    return token


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold the tokens file *path* for a change (blocks while another process holds it)."""
    fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


class RateLimiter:
    """A token bucket per user: ``rate`` uploads a second, up to ``burst`` at once.

    Memory: one small entry per user seen; buckets full for longer than they take to refill
    are forgotten at the next sweep, so idle users cost nothing.
    """

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self._buckets: dict[str, tuple[float, float]] = {}  # user -> (tokens, at)
        self._swept = time.monotonic()

    def take(self, user_id: str, n: int = 1) -> None:
        """Spend *n* uploads of *user_id*'s allowance, or raise ``RateLimited``."""
        if self.rate <= 0:
            return
        now = time.monotonic()
        tokens, at = self._buckets.get(user_id, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - at) * self.rate)
        if tokens < n:
            wait = math.ceil((n - tokens) / self.rate)
            msg = f"user {user_id!r} is over {self.rate:g} uploads/s; retry in {wait} s"
            raise RateLimited(msg, retry_after=wait)
        self._buckets[user_id] = (tokens - n, now)
        if now - self._swept > self.burst / self.rate:
            self._sweep(now)

    def _sweep(self, now: float) -> None:
        full_after = self.burst / self.rate
        self._buckets = {u: b for u, b in self._buckets.items() if now - b[1] < full_after}
        self._swept = now
