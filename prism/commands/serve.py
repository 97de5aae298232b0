"""``prism serve --db STATE_DIR [--host H] [--port N]``: the public leaderboard of a validator's store.

Read-only (the store is opened with SQLite's ``mode=ro``) and off unless you run it. Binds
127.0.0.1 by default; put a reverse proxy in front, or pass ``--host 0.0.0.0``, to publish it.
See docs/leaderboard.md.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging

from prism.store import DEFAULT_STORE_DIR

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    from prism.leaderboard.server import DEFAULT_PORT

    parser = subparsers.add_parser(
        "serve",
        help="serve a read-only leaderboard page and JSON API over a validator's store",
        description="Serve the families, training variants, weights, run manifests and loss curves of a "
        "validator's store, and each scored family's canonical code as a ZIP. Never writes the store.",
    )
    parser.add_argument(
        "--db", default=str(DEFAULT_STORE_DIR), help="store file or state directory (default: %(default)s)"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    parser.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        help="port to bind, 0 for any free one (default: %(default)s)",
    )
    parser.set_defaults(func=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    from prism.errors import OperatorError
    from prism.leaderboard.reader import StoreReader
    from prism.leaderboard.server import serve

    if not 0 <= args.port <= 65535:
        raise OperatorError(f"--port must be 0..65535, got {args.port}", code="serve.bad_port")
    reader = StoreReader(args.db)
    if not _is_loopback(args.host):
        logger.warning("listening on %s: the leaderboard is reachable from other machines", args.host)

    def ready(url: str) -> None:
        print(f"serving the leaderboard of {reader.db_path} (read-only) at {url}/ ; Ctrl-C stops", flush=True)

    asyncio.run(serve(reader, args.host, args.port, ready))
    return 0


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
