"""Command-line tools for whole sessions: ``export``, ``delete`` and ``demo``.

- ``trio-audio export USER SESSION --format wav|json|txt|srt|vtt [-o FILE]``: the session's
  audio (one WAV on its timeline) or its transcript, streamed to FILE or standard output.
- ``trio-audio delete USER SESSION`` deletes a session; ``trio-audio delete --chunk ID`` one
  chunk. Both are durable on the server once the command returns.
- ``trio-audio demo``: uploads the speech sample shipped with the package (skipped when the
  session holds it already), ends the session's utterance, waits for the transcript and prints
  its words with their times: a first run that shows real words.

Exit status: 0 when it worked; 1 when the server refused or could not be reached; 2 for bad
arguments.
"""

from __future__ import annotations

import argparse
import sys
import time
import urllib.parse
from pathlib import Path
from typing import IO, Any, Final

from .cli_http import ServerError, open_request, send, server_flags
from .cli_tools import file_sha256, sample_path, stored_checksums

FORMATS: Final = ("wav", "json", "txt", "srt", "vtt")
BLOCK: Final = 64 * 1024
DEMO_WAIT_S: Final = 120.0


def add_session_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``export``, ``delete`` and ``demo`` to the parser."""
    export = commands.add_parser(
        "export", help="a session's audio (WAV) or transcript (json, txt, srt, vtt) to a file"
    )
    export.add_argument("user", help="the user_id")
    export.add_argument("session", help="the session_id")
    export.add_argument(
        "--format",
        choices=FORMATS,
        default=None,
        help="what to export (default: from -o's suffix, else txt)",
    )
    export.add_argument(
        "-o", "--output", type=Path, default=None, help="the file to write (default: stdout)"
    )
    server_flags(export)
    export.set_defaults(tool=export_command)

    delete = commands.add_parser(
        "delete", help="delete a session (USER SESSION) or one chunk (--chunk ID), durably"
    )
    delete.add_argument("ids", nargs="*", metavar="USER SESSION", help="the session to delete")
    delete.add_argument("--chunk", default=None, metavar="ID", help="delete this chunk instead")
    server_flags(delete)
    delete.set_defaults(tool=delete_command)

    demo = commands.add_parser(
        "demo", help="upload the speech sample shipped with trio-audio and print its words"
    )
    demo.add_argument("--user", default="demo", help="the user_id (default: %(default)s)")
    demo.add_argument("--session", default="hello", help="the session_id (default: %(default)s)")
    demo.add_argument(
        "--wait", type=float, default=DEMO_WAIT_S, help="seconds to wait for the words"
    )
    server_flags(demo)
    demo.set_defaults(tool=demo_command)


def _session_url(base: str, user: str, session: str, tail: str = "") -> str:
    quote = urllib.parse.quote
    return f"{base.rstrip('/')}/sessions/{quote(user, safe='')}/{quote(session, safe='')}{tail}"


def export_command(args: argparse.Namespace) -> int:
    kind = args.format
    if kind is None:
        suffix = args.output.suffix.lower().lstrip(".") if args.output else ""
        kind = suffix if suffix in FORMATS else "txt"
    if kind == "wav" and args.output is None and sys.stdout.isatty():
        print("trio-audio: a WAV is not for a terminal: give -o FILE (or redirect)",
              file=sys.stderr)  # fmt: skip
        return 2
    tail = "/audio" if kind == "wav" else f"/transcript?format={kind}"
    url = _session_url(args.url, args.user, args.session, tail)
    try:
        response = open_request(url, args.token, timeout=300)
    except ServerError as exc:
        print(f"trio-audio: {exc}", file=sys.stderr)
        return 1
    written = 0
    target = args.output.with_name(args.output.name + ".part") if args.output else None
    out: IO[bytes] = target.open("wb") if target else sys.stdout.buffer
    try:
        with response:
            while block := response.read(BLOCK):
                out.write(block)
                written += len(block)
        out.flush()
    except OSError as exc:
        if target is None and isinstance(exc, BrokenPipeError):
            raise
        print(f"trio-audio: the export broke off after {written} bytes: {exc}", file=sys.stderr)
        if target:
            out.close()
            target.unlink(missing_ok=True)
        return 1
    if target is not None:
        out.close()
        target.replace(args.output)  # a complete file or none
    notes = []
    if kind == "wav":
        notes.append(f"{float(response.headers.get('X-Duration-Ms', 0)) / 1000:.2f} s")
        if missing := response.headers.get("X-Missing-Seqs"):
            notes.append(f"seqs {missing} missing: {response.headers.get('X-Gaps-Ms')} ms of "
                         "silence")  # fmt: skip
    elif status := response.headers.get("X-Transcript-Status"):
        notes.append(f"transcript {status}")
    where = args.output if args.output else "stdout"
    print(f"wrote {written} bytes of {kind} to {where} ({'; '.join(notes)})", file=sys.stderr)
    return 0


def delete_command(args: argparse.Namespace) -> int:
    if not ((args.chunk and not args.ids) or (args.chunk is None and len(args.ids) == 2)):
        print("trio-audio: give USER SESSION, or --chunk ID", file=sys.stderr)
        return 2
    base = args.url.rstrip("/")
    try:
        if args.chunk:
            send(f"{base}/chunks/{urllib.parse.quote(args.chunk, safe='')}", args.token, "DELETE")
            print(f"deleted chunk {args.chunk}")
            return 0
        user, session = args.ids
        _, answer = send(_session_url(base, user, session), args.token, "DELETE")
    except ServerError as exc:
        print(f"trio-audio: {exc}", file=sys.stderr)
        return 1
    count = answer["deleted"]
    print(f"deleted session {user}/{session}: {count} chunk{'' if count == 1 else 's'}")
    return 0


def demo_command(args: argparse.Namespace) -> int:
    sample = sample_path()
    base = args.url.rstrip("/")
    try:
        stored = stored_checksums(base, args.token, args.user, args.session)
        if file_sha256(sample) in stored:
            print(f"{args.user}/{args.session} holds the sample already", file=sys.stderr)
        else:
            query = urllib.parse.urlencode({"user_id": args.user, "session_id": args.session})
            _, chunk = send(f"{base}/upload?{query}", args.token, "POST", sample.read_bytes(),
                            {"Content-Type": "audio/flac"})  # fmt: skip
            print(f"uploaded {sample.name} ({chunk['audio']['duration_ms'] / 1000:.2f} s) as "
                  f"chunk {chunk['chunk_id']}", file=sys.stderr)  # fmt: skip
        send(_session_url(base, args.user, args.session, "/end"), args.token, "POST")
        body = _wait_for_words(base, args.token, args.user, args.session, args.wait)
    except ServerError as exc:
        print(f"trio-audio: {exc}", file=sys.stderr)
        return 1
    if body["status"] == "disabled":
        print("trio-audio: the server transcribes nothing (serve --asr-engine none)",
              file=sys.stderr)  # fmt: skip
        return 1
    for word in body["words"]:
        print(f"{word['start_ms'] / 1000:6.2f} s  {word['word']}")
    print(f"transcript {body['status']}: {body['text']}")
    session = f"{args.user} {args.session}"
    print(f"take it away: trio-audio export {session} --format srt (or wav, vtt, txt, json)",
          file=sys.stderr)  # fmt: skip
    return 0 if body["status"] == "done" else 1


def _wait_for_words(
    base: str, token: str | None, user: str, session: str, wait_s: float
) -> dict[str, Any]:
    url = _session_url(base, user, session, "/transcript?format=json")
    deadline = time.monotonic() + wait_s
    while True:
        _, body = send(url, token)
        if body["status"] != "pending" or time.monotonic() > deadline:
            return dict(body)
        time.sleep(0.2)
