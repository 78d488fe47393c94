"""Command-line tools for people without a browser: ``upload``, ``sessions``, and ``token
list`` / ``token revoke``.

``upload`` and ``sessions`` talk to a running service over HTTP (the standard library's
client; the token, when given, only ever goes in the ``Authorization`` header). The token
commands edit the tokens file that ``serve --tokens-file`` reads at start-up.

Exit status: 0 when everything worked; 1 when some file failed to upload, nothing matched a
revoke, or the server refused; 2 for bad arguments or an unreadable tokens file.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, Final

from .cli_http import ServerError, send, server_flags
from .web.auth import DIGEST_PREFIX, Tokens, locked

BLOCK: Final = 64 * 1024
PAGE: Final = 1000
RETRY_MAX_WAIT_S: Final = 30
CONTENT_TYPES: Final = {".wav": "audio/wav", ".flac": "audio/flac", ".ogg": "audio/ogg",
                        ".opus": "audio/ogg", ".mp3": "audio/mpeg"}  # fmt: skip
BAR_WIDTH: Final = 30


def add_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    token_commands: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    """Add ``upload``, ``sessions``, ``token list`` and ``token revoke`` to the parser."""

    upload = commands.add_parser(
        "upload", help="upload audio files as consecutive chunks of one session"
    )
    upload.add_argument("files", nargs="*", type=Path, metavar="FILE", help="WAV/FLAC/OGG/MP3")
    upload.add_argument("--user", required=True, help="the user_id")
    upload.add_argument("--session", required=True, help="the session_id")
    upload.add_argument(
        "--sample",
        action="store_true",
        help="also upload the short speech sample shipped with trio-audio (a first transcript)",
    )
    upload.add_argument(
        "--retries", type=int, default=5, help="retries of a file the server is too busy for"
    )
    server_flags(upload)
    upload.set_defaults(tool=upload_command)

    sessions = commands.add_parser("sessions", help="a user's sessions, chunks and transcripts")
    sessions.add_argument("user", help="the user_id")
    sessions.add_argument("--session", default=None, help="only this session_id")
    sessions.add_argument("--json", action="store_true", help="print all pages as one JSON")
    sessions.add_argument(
        "--page-size", type=int, default=PAGE, help=f"chunks per request (default {PAGE})"
    )
    server_flags(sessions)
    sessions.set_defaults(tool=sessions_command)

    def tokens_file(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--tokens-file",
            default=os.environ.get("TRIO_AUDIO_TOKENS_FILE", ""),
            help="the tokens file serve reads (env TRIO_AUDIO_TOKENS_FILE)",
        )

    listing = token_commands.add_parser("list", help="the users with tokens, and digest prefixes")
    tokens_file(listing)
    listing.set_defaults(tool=token_list_command)
    revoke = token_commands.add_parser(
        "revoke", help="remove USER's tokens (all, or the one --digest names)"
    )
    revoke.add_argument("user", help="the user_id whose tokens to remove")
    revoke.add_argument("--digest", default=None, help="a prefix of the digest of one token")
    tokens_file(revoke)
    revoke.set_defaults(tool=token_revoke_command)


# -- upload --------------------------------------------------------------------------------


class Progress:
    """A progress bar on stderr: redrawn in place on a terminal, a line per file otherwise."""

    def __init__(self, files: int, total_bytes: int, out: IO[str]) -> None:
        self.files = files
        self.total = max(1, total_bytes)
        self.done_files = 0
        self.done_bytes = 0
        self.out = out
        self.tty = out.isatty()
        self.started = time.monotonic()
        self._drawn = 0.0

    def advance(self, n: int) -> None:
        self.done_bytes += n
        now = time.monotonic()
        if self.tty and now - self._drawn > 0.1:
            self._drawn = now
            self.draw()

    def file_done(self) -> None:
        self.done_files += 1
        self.draw()

    def clear(self) -> None:
        """Take the bar off its line, so that what is printed next starts a clean line."""
        if self.tty:
            self.out.write("\r\x1b[K")
            self.out.flush()

    def draw(self) -> None:
        filled = int(BAR_WIDTH * min(1.0, self.done_bytes / self.total))
        bar = "#" * filled + "-" * (BAR_WIDTH - filled)
        mb = self.done_bytes / 1e6
        line = f"[{bar}] {self.done_files}/{self.files} files, {mb:.1f} MB"
        if self.tty:
            self.out.write("\r" + line + "\x1b[K")
        else:
            self.out.write(line + "\n")
        self.out.flush()

    def close(self) -> None:
        if self.tty:
            self.out.write("\n")
            self.out.flush()


def _blocks(path: Path, progress: Progress) -> Iterator[bytes]:
    with path.open("rb") as f:
        while block := f.read(BLOCK):
            progress.advance(len(block))
            yield block


def sample_path() -> Path:
    """The speech sample shipped in the package (see docs/speech-weights.md)."""
    return Path(__file__).with_name("samples") / "hello.flac"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(BLOCK):
            digest.update(block)
    return digest.hexdigest()


def stored_checksums(
    url: str, token: str | None, user: str, session: str
) -> dict[str, list[dict[str, Any]]]:
    """The chunks the session holds, by checksum (each list in seq order). Another user's
    sessions are a 404: then nothing is known to be stored, and the upload says why."""
    try:
        listing = fetch_sessions(url, token, user, session)
    except ServerError as exc:
        if exc.status != 404:
            raise
        return {}
    found: dict[str, list[dict[str, Any]]] = {}
    for chunk in (c for s in listing["sessions"] for c in s["chunks"]):
        found.setdefault(chunk["checksum"], []).append(chunk)
    return found


def upload_command(args: argparse.Namespace) -> int:
    files: list[Path] = list(args.files) + ([sample_path()] if args.sample else [])
    if not files:
        print("trio-audio: name files to upload, or give --sample", file=sys.stderr)
        return 2
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        print(f"trio-audio: no such file: {', '.join(missing)}", file=sys.stderr)
        return 2
    try:  # what the session holds already: a re-run stores nothing twice
        stored = stored_checksums(args.url, args.token, args.user, args.session)
    except ServerError as exc:
        print(f"trio-audio: {exc}", file=sys.stderr)
        return 1
    query = urllib.parse.urlencode({"user_id": args.user, "session_id": args.session})
    url = f"{args.url.rstrip('/')}/upload?{query}"
    progress = Progress(len(files), sum(f.stat().st_size for f in files), sys.stderr)
    new = again = failed = 0
    audio_ms = 0.0
    sent_bytes = 0
    for path in files:
        size = path.stat().st_size
        before = progress.done_bytes
        same = stored.get(file_sha256(path))
        if same:  # this file's bytes are in the session: one stored chunk per file given
            chunk, state = same.pop(0), "skipped: already stored"
        else:
            headers = {
                "Content-Type": CONTENT_TYPES.get(path.suffix.lower(), "application/octet-stream"),
                "Content-Length": str(size),
            }
            try:
                chunk, created = _upload_one(url, args.token, path, headers, progress, args.retries)
            except ServerError as exc:
                failed += 1
                progress.done_bytes = before + size
                progress.clear()
                print(f"trio-audio: {path}: {exc}", file=sys.stderr, flush=True)
                progress.file_done()
                continue
            state = "stored" if created else "already stored"
            new += created
            sent_bytes += size
        again += state != "stored"
        progress.done_bytes = before + size
        duration = chunk["audio"]["duration_ms"]
        audio_ms += duration
        progress.clear()
        print(f"{chunk['chunk_id']}  seq {chunk['seq']:>4}  {duration / 1000:7.2f} s  "
              f"{state:<14}  {path}", flush=True)  # fmt: skip
        progress.file_done()
    progress.close()
    took = time.monotonic() - progress.started
    print(
        f"{len(files)} files to {args.user}/{args.session}: {new} stored, {again} already "
        f"stored, {failed} failed; {audio_ms / 1000:.2f} s of audio, "
        f"{sent_bytes / 1e6:.2f} MB in {took:.1f} s"
    )
    return 1 if failed else 0


def _upload_one(
    url: str,
    token: str | None,
    path: Path,
    headers: dict[str, str],
    progress: Progress,
    retries: int,
) -> tuple[dict[str, Any], bool]:
    """Upload *path*; retries when the server is busy (503, 429), after its Retry-After."""
    for attempt in range(retries + 1):
        before = progress.done_bytes
        try:
            sent = dict(headers)
            status, answer = send(url, token, "POST", _blocks(path, progress), sent)
        except ServerError as exc:
            progress.done_bytes = before
            if exc.status not in (429, 503) or attempt == retries:
                raise
            time.sleep(min(RETRY_MAX_WAIT_S, exc.retry_after or 2**attempt))
            continue
        return answer, status == 201  # 200: stored before (an idempotent repeat)
    raise AssertionError("unreachable")


# -- sessions ------------------------------------------------------------------------------


def fetch_sessions(
    url: str, token: str | None, user: str, only: str | None, page_size: int = PAGE
) -> dict[str, Any]:
    """All of *user*'s sessions, following ``next_cursor`` and joining split sessions."""
    merged: dict[str, dict[str, Any]] = {}
    cursor = None
    while True:
        params = {"limit": str(page_size)}
        if only:
            params["session_id"] = only
        if cursor:
            params["cursor"] = cursor
        query = urllib.parse.urlencode(params)
        _, page = send(f"{url.rstrip('/')}/sessions/{urllib.parse.quote(user)}?{query}", token)
        for session in page["sessions"]:
            known = merged.get(session["session_id"])
            if known is None:
                merged[session["session_id"]] = session
            else:
                known["chunks"].extend(session["chunks"])
        cursor = page.get("next_cursor")
        if not cursor:
            return {"user_id": user, "sessions": list(merged.values())}


def sessions_command(args: argparse.Namespace) -> int:
    try:
        listing = fetch_sessions(args.url, args.token, args.user, args.session, args.page_size)
    except ServerError as exc:
        print(f"trio-audio: {exc}", file=sys.stderr)
        return 1
    if args.json:
        json.dump(listing, sys.stdout, indent=2)
        print()
        return 0
    for line in format_sessions(listing):
        print(line)
    return 0


def format_sessions(listing: dict[str, Any]) -> list[str]:
    """A readable table: a header per session, then its chunks."""
    lines = []
    sessions = listing["sessions"]
    total_chunks = sum(s["chunk_count"] for s in sessions)
    total_ms = sum(s["duration_ms"] for s in sessions)
    for s in sessions:
        transcript = s.get("transcript") or {}
        text = transcript.get("text") or ""
        lines.append(
            f"session {s['session_id']}: {_count(s['chunk_count'], 'chunk')}, "
            f"{s['duration_ms'] / 1000:.2f} s, transcript {transcript.get('status', '-')}"
            + (f": {text}" if text else "")
        )
        lines.append(f"  {'seq':>5}  {'chunk_id':<28}  {'duration':>9}  {'speech':>6}  "
                     f"{'received_at':<24}  transcript")  # fmt: skip
        for c in s["chunks"]:
            words = c["transcript"]
            said = words["text"] if words["status"] == "done" else f"({words['status']})"
            speech = c.get("features", {}).get("speech_ratio")
            speech_text = "-" if speech is None else f"{speech * 100:.0f}%"
            lines.append(
                f"  {c['seq']:>5}  {c['chunk_id']:<28}  {c['audio']['duration_ms'] / 1000:>7.2f} s"
                f"  {speech_text:>6}  {c['received_at']:<24}  {said}"
            )
        lines.append("")
    lines.append(
        f"{listing['user_id']}: {_count(len(sessions), 'session')}, "
        f"{_count(total_chunks, 'chunk')}, "
        f"{total_ms / 1000:.2f} s of audio"
    )
    return lines


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


# -- tokens --------------------------------------------------------------------------------


def _tokens_path(args: argparse.Namespace) -> Path | None:
    if not args.tokens_file:
        print("trio-audio: give --tokens-file (or TRIO_AUDIO_TOKENS_FILE)", file=sys.stderr)
        return None
    return Path(args.tokens_file)


def token_list_command(args: argparse.Namespace) -> int:
    path = _tokens_path(args)
    if path is None:
        return 2
    try:
        tokens = Tokens.load(path)
    except (OSError, ValueError) as exc:
        print(f"trio-audio: {exc}", file=sys.stderr)
        return 2
    for digest, user in tokens.entries:
        print(f"{user}  {DIGEST_PREFIX}{digest[:16]}")
    users = len({user for _, user in tokens.entries})
    print(f"{len(tokens.entries)} tokens for {users} users in {path}", file=sys.stderr)
    return 0


def token_revoke_command(args: argparse.Namespace) -> int:
    path = _tokens_path(args)
    if path is None:
        return 2
    try:
        with locked(path):  # an ``add`` running now is not lost
            return _revoke(path, args.user, args.digest)
    except (OSError, ValueError) as exc:
        print(f"trio-audio: {exc}", file=sys.stderr)
        return 2


def _revoke(path: Path, user: str, digest_prefix: str | None) -> int:
    Tokens.load(path)  # refuse to rewrite a file we cannot parse
    lines = path.read_text().splitlines(keepends=True)
    prefix = (digest_prefix or "").lower().removeprefix(DIGEST_PREFIX)
    kept: list[str] = []
    removed: list[str] = []
    for line in lines:
        fields = line.split("#", 1)[0].split()
        matches = (
            len(fields) == 2
            and fields[0] == user
            and fields[1].lower().removeprefix(DIGEST_PREFIX).startswith(prefix)
        )
        (removed if matches else kept).append(line)
    if not removed:
        which = f" with a digest starting {digest_prefix!r}" if digest_prefix else ""
        print(f"trio-audio: no token of {user!r}{which} in {path}", file=sys.stderr)
        return 1
    if digest_prefix and len(removed) > 1:
        msg = f"{len(removed)} tokens of {user!r} match {digest_prefix!r}; give more digits"
        print(f"trio-audio: {msg}", file=sys.stderr)
        return 1
    _replace(path, "".join(kept))
    print(f"revoked {len(removed)} token(s) of {user}; a running serve applies this "
          "when it restarts")  # fmt: skip
    return 0


def _replace(path: Path, text: str) -> None:
    """Write *text* to *path* atomically (mode 0600): a crash leaves the old or the new."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
