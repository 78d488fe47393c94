"""Command line: ``trio-audio serve`` runs the service; ``trio-audio check DATA_DIR``
verifies a data dir's log (``--repair`` salvages it); ``upload``, ``sessions`` and ``token
list|revoke`` are in ``cli_tools``; ``export``, ``delete`` and ``demo`` in ``cli_session``.
``--version`` prints the version.

Every ``serve`` flag is also read from ``TRIO_AUDIO_<NAME>`` (flags win). Exit status: 0 after
a clean drain, 2 for a bad flag or environment value, 3 when the store cannot start (data dir
locked by another process, or a corrupt log, named with file and offset), 4 when a port cannot
be listened on (in use, not permitted, or an address this machine does not have), named in
one line. The client commands exit 141 when their standard output is closed early (``...
| head -1``), quietly.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Final

import attrs
import trio

from . import __version__, service
from .config import Config, field_type
from .errors import StoreError

EXIT_STORE: Final = 3  # the store cannot start: data dir locked, or a corrupt log
EXIT_LISTEN: Final = 4  # a port cannot be listened on
EXIT_PIPE: Final = 141  # standard output was closed early (128 + SIGPIPE, as a shell says)


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    for field in attrs.fields(Config):
        flag = "--" + field.name.replace("_", "-")
        kind = field_type(field)
        default = field.default
        if kind is bool:
            parser.add_argument(
                flag,
                dest=field.name,
                action="store_const",
                const=True,
                default=None,
                help=f"{field.metadata.get('help', '')} (env TRIO_AUDIO_{field.name.upper()}=1)",
            )
            continue
        parser.add_argument(
            flag,
            dest=field.name,
            type=str if kind is bool else kind,
            default=None,
            metavar=field.name.upper(),
            help=f"{field.metadata.get('help', '')} (default {default}; "
            f"env TRIO_AUDIO_{field.name.upper()})",
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trio-audio", description="Audio ingestion service on Trio."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the service")
    _add_config_flags(serve)
    worker = commands.add_parser(
        "asr-worker",
        help="transcribe for a JetStream cluster (--store nats://...); probes on --port",
    )
    _add_config_flags(worker)
    token = commands.add_parser("token", help="manage bearer tokens")
    token_commands = token.add_subparsers(dest="token_command", required=True)
    add = token_commands.add_parser("add", help="make a token for USER and print it once")
    add.add_argument("user", help="the user_id the token acts for")
    add.add_argument(
        "--tokens-file",
        default=os.environ.get("TRIO_AUDIO_TOKENS_FILE", ""),
        help="the tokens file serve reads (env TRIO_AUDIO_TOKENS_FILE)",
    )
    stream = commands.add_parser(
        "stream", help="stream an audio file (or stdin PCM) over the WebSocket and print results"
    )
    stream.add_argument("file", help="WAV/FLAC/OGG/MP3 file, or - for 16-bit PCM on stdin")
    stream.add_argument(
        "--url", default="ws://127.0.0.1:8001/ws", help="the service's /ws (default: %(default)s)"
    )
    stream.add_argument("--user-id", default="me", help="whose stream (default: %(default)s)")
    stream.add_argument(
        "--session-id", default=None, help="(default: the file's name, or stdin for -)"
    )
    stream.add_argument(
        "--chunk-ms", type=float, default=100.0, help="audio per frame (default: %(default)s)"
    )
    stream.add_argument(
        "--realtime",
        action="store_true",
        help="pace frames at real time (default: off: as fast as acknowledged)",
    )
    stream.add_argument(
        "--json",
        action="store_true",
        help="print every message as JSON (default: off: the transcript, a line per final)",
    )
    stream.add_argument(
        "--retries", type=int, default=10, help="reconnects before giving up (default: %(default)s)"
    )
    stream.add_argument(
        "--rate", type=int, default=16000, help="stdin PCM sample rate (default: %(default)s)"
    )
    stream.add_argument(
        "--channels", type=int, default=1, help="stdin PCM channels (default: %(default)s)"
    )
    stream.add_argument(
        "--vocabulary",
        default=None,
        help="words and phrases to expect, comma-separated, e.g. 'Kubernetes,Siobhan' "
        "(default: none)",
    )
    stream.add_argument(
        "--token",
        default=os.environ.get("TRIO_AUDIO_TOKEN"),
        help="bearer token, when the server has auth on (default: env TRIO_AUDIO_TOKEN, "
        "else none)",
    )  # fmt: skip
    check = commands.add_parser(
        "check", help="verify a data dir's log (records, sessions, bytes, corruption)"
    )
    check.add_argument("data_dir", type=Path, help="the data dir (as --data-dir of serve)")
    check.add_argument(
        "--repair",
        action="store_true",
        help="salvage every valid record into a fresh log; the old one is kept aside",
    )
    from .cli_tools import add_commands

    add_commands(commands, token_commands)
    from .cli_session import add_session_commands

    add_session_commands(commands)
    from .bench.cli import configure as configure_bench

    configure_bench(
        commands.add_parser(
            "bench", help="load-test a server: uploads/s, WebSocket frames/s, overload, lost"
        )
    )
    return parser


def _check(args: argparse.Namespace) -> int:
    """Exit 0 when the log is sound (a torn tail is fine: ``serve`` starts with every record),
    1 for corruption, 3 when the path holds no log, or the data dir is locked or cannot be
    read; with --repair, 0 once repaired."""
    from .store.check import check, describe, repair

    try:
        report = check(args.data_dir)
        for line in describe(report):
            print(line)
        if not args.repair:
            return 1 if report.corrupt else 0
        fixed = repair(args.data_dir)
    except StoreError as exc:
        print(f"trio-audio: {exc}", file=sys.stderr)
        return EXIT_STORE
    print(f"repaired: kept {fixed.kept} records; the old log is in {fixed.moved_to}")
    for damage in fixed.dropped:
        print(f"dropped {damage.path} offset {damage.offset}..{damage.end}: {damage.reason}")
    for first, last in fixed.missing_seqs:
        print(f"dropped records with seqs {first}..{last}")
    return 0


def _token(args: argparse.Namespace) -> int:
    from .web.auth import add_token

    if not args.tokens_file:
        print("trio-audio: give --tokens-file (or TRIO_AUDIO_TOKENS_FILE)", file=sys.stderr)
        return 2
    try:
        token = add_token(Path(args.tokens_file), args.user)
    except (ValueError, OSError) as exc:
        print(f"trio-audio: {exc}", file=sys.stderr)
        return 2
    print(token)
    print(f"(stored hashed in {args.tokens_file}; it cannot be shown again)", file=sys.stderr)
    return 0


def _stream(args: argparse.Namespace) -> int:
    from .client import Options, stream

    session_id = args.session_id or Path(args.file).stem.replace(" ", "_")[:64] or "stdin"
    options = Options(url=args.url, user_id=args.user_id, session_id=session_id,
                      chunk_ms=args.chunk_ms, realtime=args.realtime, json=args.json,
                      retries=args.retries, sample_rate=args.rate, token=args.token,
                      channels=args.channels,
                      vocabulary=None if args.vocabulary is None else [
                          t.strip() for t in args.vocabulary.split(",") if t.strip()
                      ])  # fmt: skip
    return stream(options, args.file)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "tool", None) is not None:  # upload, sessions, export, delete, demo, token
        try:
            return int(args.tool(args))
        except BrokenPipeError:
            return _reader_left()
    if args.command == "stream":
        return _stream(args)
    if args.command == "bench":
        from .bench.cli import run as run_bench

        return run_bench(args)
    if args.command == "token":
        return _token(args)
    if args.command == "check":
        return _check(args)
    overrides = {k: v for k, v in vars(args).items() if k != "command" and v is not None}
    try:
        config = Config.from_sources(overrides=overrides)
    except (ValueError, TypeError) as exc:
        print(f"trio-audio: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=config.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    target = partial(service.serve, config, own_process=True)
    if args.command == "asr-worker":
        from .cluster.worker import run_worker

        target = partial(run_worker, config)
    try:
        trio.run(target)
    except BaseExceptionGroup as group:
        store_errors, rest = group.split(StoreError)
        listen_errors, rest = rest.split(_cannot_listen) if rest is not None else (None, None)
        if rest is not None or (store_errors is None and listen_errors is None):
            raise
        if store_errors is not None:
            for leaf, _ in _leaves(store_errors):
                print(f"trio-audio: {leaf}", file=sys.stderr)
            return EXIT_STORE
        assert listen_errors is not None
        for leaf, path in _leaves(listen_errors):
            print(f"trio-audio: {_listen_message(leaf, path, config)}", file=sys.stderr)
        return EXIT_LISTEN
    except StoreError as exc:
        print(f"trio-audio: {exc}", file=sys.stderr)
        return EXIT_STORE
    except OSError as exc:
        if not _cannot_listen(exc):
            raise
        print(f"trio-audio: {_listen_message(exc, set(), config)}", file=sys.stderr)
        return EXIT_LISTEN
    except ValueError as exc:  # the security settings, checked before anything starts
        print(f"trio-audio: {exc}", file=sys.stderr)
        return 2
    return 0


def _reader_left() -> int:
    """Standard output's reader went away (``... | head -1``): stop quietly, as a command
    killed by SIGPIPE does (status 141), with nothing more sent to the closed pipe."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())  # the interpreter's last flush goes nowhere
    os.close(devnull)
    return EXIT_PIPE


def _cannot_listen(exc: BaseException) -> bool:
    """A bind refused: the port is in use, not ours to take, or the address is not local."""
    return (
        isinstance(exc, OSError)
        and not isinstance(exc, StoreError)
        and exc.errno in (errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL)
    )


def _listen_message(exc: BaseException, path: set[str], config: Config) -> str:
    """One line naming the address that could not be listened on, and why.

    *path* holds the names of the functions the error came through: the HTTP server runs in
    ``serve_http`` and the WebSocket listener in ``serve_ws``.
    """
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    reason = reason[:1].lower() + reason[1:]
    if "serve_ws" in path:
        where = f"the WebSocket port {config.host}:{config.ws_port}"
    elif "serve_http" in path:
        where = f"the HTTP port {config.host}:{config.port}"
    else:
        where = f"{config.host}:{config.port} or {config.host}:{config.ws_port}"
    return f"cannot listen on {where}: {reason}"


def _leaves(
    group: BaseExceptionGroup[BaseException], path: frozenset[str] = frozenset()
) -> list[tuple[BaseException, set[str]]]:
    """Every leaf error of *group*, with the names of the functions it propagated through."""
    path = path | _frames(group)
    out: list[tuple[BaseException, set[str]]] = []
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            out.extend(_leaves(exc, path))
        else:
            out.append((exc, set(path | _frames(exc))))
    return out


def _frames(exc: BaseException) -> frozenset[str]:
    names = set()
    tb = exc.__traceback__
    while tb is not None:
        names.add(tb.tb_frame.f_code.co_name)
        tb = tb.tb_next
    return frozenset(names)


if __name__ == "__main__":
    sys.exit(main())
