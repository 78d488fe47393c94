"""Command line: ``trio-audio serve`` runs the service.

Every ``serve`` flag is also read from ``TRIO_AUDIO_<NAME>`` (flags win). Exit status: 0 after
a clean drain, 2 for a bad flag or environment value, 3 when the store cannot start (data dir
locked by another process, or a corrupt log, named with file and offset).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from functools import partial

import attrs
import trio

from . import service
from .config import Config, field_type
from .errors import StoreError


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    for field in attrs.fields(Config):
        flag = "--" + field.name.replace("_", "-")
        kind = field_type(field)
        default = field.default
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
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the service")
    _add_config_flags(serve)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
    try:
        trio.run(partial(service.serve, config))
    except BaseExceptionGroup as group:
        store_errors, rest = group.split(StoreError)
        if store_errors is None or rest is not None:
            raise
        for leaf in _leaves(store_errors):
            print(f"trio-audio: {leaf}", file=sys.stderr)
        return 3
    except StoreError as exc:
        print(f"trio-audio: {exc}", file=sys.stderr)
        return 3
    return 0


def _leaves(group: BaseExceptionGroup[StoreError]) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        out.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return out


if __name__ == "__main__":
    sys.exit(main())
