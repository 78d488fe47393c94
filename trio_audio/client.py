"""``trio-audio stream``: stream a file (or stdin PCM) to the service over the WebSocket.

The audio goes as 16-bit little-endian PCM frames of ``--chunk-ms`` each, declared in the
``start`` message. The transcript is printed as it arrives: a line per final utterance (on a
terminal, the words heard so far rewrite one line in place until the final replaces them);
``--json`` prints every message instead, one JSON object a line. The session ends with
``end``, after which the server sends every remaining final before ``session_end``.
When the connection drops, or the server sheds load or restarts, the client reconnects with
``resume_from_seq`` set to the first chunk it has no ack for and sends again from there: the
server replays what it had already stored and acknowledges the resent chunks as duplicates,
so nothing is lost and nothing is stored twice.
"""

from __future__ import annotations

import json
import socket
import sys
from collections.abc import Iterator
from typing import Any, Final, TextIO

import attrs
import numpy as np
import soundfile as sf
import trio
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    ConnectionTimeout,
    HandshakeError,
    open_websocket_url,
)

RETRYABLE_CLOSES: Final = {1001, 1006, 1011, 1012, 1013, 4429, 4507}
BACKOFF_S: Final = (0.1, 0.25, 0.5, 1.0, 2.0)
LINE_GAP_MS: Final = 1000.0  # a pause this long between final words starts a new line
FAINT: Final = "\x1b[2m"  # a terminal's faint text (SGR 2), and back (SGR 22)
PLAIN: Final = "\x1b[22m"


class StreamError(Exception):
    """The server refused the stream for good (a non-retryable error)."""


@attrs.define
class Options:
    url: str
    user_id: str
    session_id: str
    chunk_ms: float = 100.0
    realtime: bool = False
    json: bool = False
    retries: int = 10
    sample_rate: int = 16000  # for stdin PCM
    channels: int = 1
    token: str | None = None  # a bearer token, when the server has auth on
    vocabulary: list[str] | None = None  # words and phrases the session expects


def file_chunks(path: str, chunk_ms: float) -> tuple[int, int, Iterator[bytes]]:
    """(rate, channels, chunks of 16-bit PCM) for an audio file libsndfile reads."""
    info = sf.info(path)
    frames = max(1, int(info.samplerate * chunk_ms / 1000))

    def chunks() -> Iterator[bytes]:
        for block in sf.blocks(path, blocksize=frames, dtype="int16", always_2d=True):
            yield np.ascontiguousarray(block, "<i2").tobytes()

    return info.samplerate, info.channels, chunks()


def stdin_chunks(rate: int, channels: int, chunk_ms: float) -> Iterator[bytes]:
    size = max(1, int(rate * chunk_ms / 1000)) * 2 * channels
    while data := sys.stdin.buffer.read(size):
        yield data


class Streamer:
    """Sends chunks, tracks which are acknowledged, reconnects and resumes on failure."""

    def __init__(self, options: Options, rate: int, channels: int, chunks: Iterator[bytes],
                 out: TextIO, err: TextIO | None = None) -> None:  # fmt: skip
        self.options = options
        self.err = err if err is not None else sys.stderr
        self.partial_shown = False  # a partial is on the terminal's last line
        self.final_words: list[str] = []  # the words of the line finals are building
        self.final_end_ms = 0.0  # where its last word ended
        self.rate = rate
        self.channels = channels
        self.chunks = chunks
        self.out = out
        self.unacked: dict[int, bytes] = {}  # sent or to resend, by seq, in order
        self.next_seq: int | None = None
        self.exhausted = False
        self.sent_here: set[int] = set()
        self.bytes_per_ms = rate * channels * 2 / 1000

    async def run(self) -> dict[str, Any]:
        """Stream everything; the server's session summary."""
        failures = 0
        started_at = trio.current_time()
        while True:
            try:
                return await self._connection(started_at)
            except* StreamError as group:
                raise _leaf(group) from None
            except* (ConnectionClosed, HandshakeError, OSError) as group:
                exc = _leaf(group)
            reason = exc.reason if isinstance(exc, ConnectionClosed) else None
            if reason is not None and reason.code not in RETRYABLE_CLOSES:
                msg = f"the server closed the stream ({reason.code}: {reason.reason})"
                raise StreamError(msg)
            failures += 1
            if failures > self.options.retries:
                raise exc
            delay = BACKOFF_S[min(failures, len(BACKOFF_S)) - 1]
            reason_text = describe_failure(exc, self.options.url)
            self._say({"type": "reconnecting", "after_s": delay, "reason": reason_text})
            await trio.sleep(delay)

    async def _connection(self, started_at: float) -> dict[str, Any]:
        async with open_websocket_url(self.options.url, max_message_size=2**24) as ws:
            start: dict[str, Any] = {
                "type": "start",
                "user_id": self.options.user_id,
                "session_id": self.options.session_id,
                "format": {"encoding": "pcm_s16le", "sample_rate": self.rate,
                           "channels": self.channels},
            }  # fmt: skip
            if self.options.token:
                start["token"] = self.options.token
            if self.options.vocabulary is not None:
                start["vocabulary"] = self.options.vocabulary
            if self.next_seq is not None:  # resuming: from the first chunk with no ack
                start["resume_from_seq"] = min(self.unacked, default=self.next_seq)
            await ws.send_message(json.dumps(start))
            started = json.loads(await ws.get_message())
            if started.get("type") != "started":
                self._say(started)
                msg = f"the server did not start the stream: {started}"
                raise StreamError(msg)
            if self.next_seq is None:
                self.next_seq = started["next_seq"]
            window = int(started["limits"]["max_inflight"])
            room = trio.Semaphore(window)  # a permit per chunk sent on this connection
            self.sent_here = set()
            # Everything from resume_from_seq is sent again, in order: the server numbers
            # frames from there, answering those it already has as duplicates.
            resend = sorted(self.unacked.items())
            async with trio.open_nursery() as nursery:
                done: list[dict[str, Any]] = []
                nursery.start_soon(self._receive, ws, room, done, nursery.cancel_scope)
                for seq, old in resend:
                    await room.acquire()
                    self.sent_here.add(seq)
                    await ws.send_message(old)
                while not self.exhausted:
                    data = next(self.chunks, None)
                    if data is None:
                        self.exhausted = True
                        break
                    assert self.next_seq is not None
                    # Owned from here on: if this connection fails, the next one sends it.
                    seq, self.next_seq = self.next_seq, self.next_seq + 1
                    self.unacked[seq] = data
                    if self.options.realtime:
                        await trio.sleep_until(started_at + seq * self.options.chunk_ms / 1000)
                    await room.acquire()
                    self.sent_here.add(seq)
                    await ws.send_message(data)
                for _ in range(window):  # every chunk answered
                    await room.acquire()
                await ws.send_message(json.dumps({"type": "end"}))
            return done[0]

    async def _receive(self, ws: Any, room: trio.Semaphore, done: list[dict[str, Any]],
                       scope: trio.CancelScope) -> None:  # fmt: skip
        while True:
            message = json.loads(await ws.get_message())
            kind = message.get("type")
            if kind == "ack":
                self.unacked.pop(message["seq"], None)
                if message["seq"] in self.sent_here:
                    self.sent_here.discard(message["seq"])
                    room.release()
            elif kind == "session_end":
                done.append(message["summary"])
                scope.cancel()
                return
            elif kind == "error" and not message.get("retryable"):
                self._say(message)
                raise StreamError(message.get("message", "error"))
            self._say(message)

    def _say(self, message: dict[str, Any]) -> None:
        """Print a message: with ``--json`` every one, as a JSON line; else the transcript
        (a line per final; on a terminal the partial rewrites one line in place), and
        errors and reconnects on stderr."""
        if self.options.json:
            print(json.dumps(message), file=self.out, flush=True)
            return
        kind = message.get("type")
        if kind == "transcript":
            if message.get("is_final"):
                if message.get("words"):
                    self._final(message["words"])
            elif self.out.isatty():
                self._line(self._joined(message), final=False)
        elif kind == "session_end":
            self._end_line()
        elif kind in ("error", "reconnecting"):
            self._clear_partial()
            detail = json.dumps({k: v for k, v in message.items() if k != "type"})
            print(f"{kind}: {detail}", file=self.err, flush=True)

    def _final(self, words: list[dict[str, Any]]) -> None:
        """A chunk's final words. An utterance's words come as the finals of its chunks, one
        after another: they make one line, printed once a pause of ``LINE_GAP_MS`` between
        two words (or the session's end) closes it; on a terminal it grows in place."""
        if self.final_words and words[0]["start_ms"] - self.final_end_ms > LINE_GAP_MS:
            self._end_line()
        self.final_words += [str(w["word"]) for w in words]
        self.final_end_ms = float(words[-1]["end_ms"])
        if self.out.isatty():
            self._line(" ".join(self.final_words), final=False)

    def _joined(self, partial: dict[str, Any]) -> str:
        """The open line's final words, then the *partial*'s: those that held plain, the
        rest (which the next hypothesis may change) faint."""
        words = [str(w["word"]) for w in partial.get("words") or []]
        stable = int(partial.get("stable", len(words)))
        held, rest = words[:stable], " ".join(words[stable:])
        return " ".join([*self.final_words, *held, *([f"{FAINT}{rest}{PLAIN}"] if rest else [])])

    def _end_line(self) -> None:
        if self.final_words:
            self._line(" ".join(self.final_words), final=True)
            self.final_words = []

    def _line(self, text: str, *, final: bool) -> None:
        """A final on its own line, or the partial in place of the last one shown."""
        if final:
            self._clear_partial()
            print(text, file=self.out, flush=True)
            return
        self.out.write(f"\r\x1b[K{text}")
        self.out.flush()
        self.partial_shown = True

    def _clear_partial(self) -> None:
        if self.partial_shown:
            self.out.write("\r\x1b[K")
            self.out.flush()
            self.partial_shown = False


def describe_failure(exc: BaseException, url: str) -> str:
    """What went wrong talking to *url*, in words: trio-websocket wraps a refused connection
    in a HandshakeError with no message, the cause two levels down."""
    causes: list[BaseException] = []
    seen: BaseException | None = exc
    while seen is not None and len(causes) < 10:
        causes.append(seen)
        if isinstance(seen, BaseExceptionGroup) and seen.exceptions:
            seen = seen.exceptions[0]
        else:
            seen = seen.__cause__ or seen.__context__
    for cause in causes:
        if isinstance(cause, ConnectionRefusedError):
            return f"connection refused: {url}"
        if isinstance(cause, socket.gaierror):
            return f"cannot resolve the host of {url}: {cause.strerror}"
        if isinstance(cause, ConnectionRejected):
            return f"the server refused the WebSocket upgrade (HTTP {cause.status_code}): {url}"
        if isinstance(cause, ConnectionTimeout | TimeoutError):
            return f"timed out connecting: {url}"
        if isinstance(cause, ConnectionClosed) and cause.reason is not None:
            return f"connection closed ({cause.reason.code} {cause.reason.name}): {url}"
    for cause in causes:
        if isinstance(cause, OSError) and cause.strerror:
            return f"{cause.strerror[:1].lower()}{cause.strerror[1:]}: {url}"
    text = str(exc) or type(exc).__name__
    return f"{text}: {url}"


def _leaf(group: BaseExceptionGroup[Exception]) -> Exception:
    first = group.exceptions[0]
    return _leaf(first) if isinstance(first, BaseExceptionGroup) else first


def stream(options: Options, path: str) -> int:
    """Run a stream to the end; the process exit status."""
    if path == "-":
        rate, channels = options.sample_rate, options.channels
        chunks = stdin_chunks(rate, channels, options.chunk_ms)
    else:
        try:
            rate, channels, chunks = file_chunks(path, options.chunk_ms)
        except (OSError, RuntimeError, sf.LibsndfileError) as exc:
            print(f"trio-audio: cannot read {path}: {exc}", file=sys.stderr)
            return 2
    streamer = Streamer(options, rate, channels, chunks, sys.stdout)
    try:
        summary = trio.run(streamer.run)
    except StreamError as exc:
        print(f"trio-audio: {exc}", file=sys.stderr)
        return 1
    except (ConnectionClosed, HandshakeError, OSError) as exc:
        reason = describe_failure(exc, options.url)
        print(f"trio-audio: gave up after {options.retries} retries: {reason}", file=sys.stderr)
        return 1
    streamer._say({"type": "session_end", "summary": summary})
    if not options.json:
        streamer._clear_partial()
        seconds = summary.get("duration_ms", 0) / 1000
        print(f"done: {summary.get('chunk_count', 0)} chunks, {seconds:.1f} s stored in session "
              f"{summary.get('session_id')}", file=sys.stderr, flush=True)  # fmt: skip
    return 0
