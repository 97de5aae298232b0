"""``prism`` command line: one entry point, each command group in ``prism/commands/<group>.py``.

Each group module exposes ``register(subparsers)``, which adds its sub-commands and sets
``func`` on them. Group modules import heavy dependencies (torch, bittensor) inside their
command functions so ``prism check`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from prism import __version__
from prism.errors import PrismError

COMMAND_GROUPS = (
    "submission",
    "identify",
    "data",
    "eval",
    "leaderboard",
    "chain",
    "localnet",
    "serve",
    "fetch_family",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prism", description="PRISM subnet tools")
    parser.add_argument("--version", action="version", version=f"prism {__version__}")
    parser.add_argument("--logging.debug", dest="logging_debug", action="store_true", help="debug logs")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for group in COMMAND_GROUPS:
        importlib.import_module(f"prism.commands.{group}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.logging_debug else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except PrismError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
