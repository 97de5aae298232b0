"""``prism localnet``: run the whole subnet on this machine (embedded chain, miners, a validator)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "localnet",
        help="run an embedded chain, three example miners and a validator until weights are set",
        description=(
            "Creates wallets and an embedded chain under --dir, registers a validator and three miners "
            "serving the examples, evaluates every submission with the smoke profile, sets weights and "
            "prints the leaderboard. Works offline."
        ),
    )
    parser.add_argument("--dir", default="./localnet", help="working directory (wallets, chain, state, logs)")
    parser.add_argument("--netuid", type=int, default=1)
    parser.add_argument("--profile", default="local_cpu_smoke")
    parser.add_argument(
        "--block-time", type=float, default=1.0, help="seconds per block of the embedded chain"
    )
    parser.add_argument("--tempo", type=int, default=20, help="blocks per epoch (weights once per tempo)")
    parser.add_argument("--timeout", type=float, default=840.0, help="seconds to wait for the validator")
    parser.add_argument("--keep-running", action="store_true", help="keep the neurons up after the report")
    parser.add_argument(
        "--keep-state", action="store_true", help="reuse chain and validator state of a previous run"
    )
    parser.add_argument("--workers", type=int, default=1,
                        help="runs the validator evaluates at once (CPU: the cores are split between them)")  # fmt: skip
    parser.add_argument("--json", action="store_true", help="also print the summary as JSON")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from prism.localnet import LocalnetConfig, run_localnet

    config = LocalnetConfig(
        root=Path(args.dir).expanduser().resolve(),
        netuid=args.netuid,
        profile=args.profile,
        block_time_s=args.block_time,
        tempo=args.tempo,
        timeout_s=args.timeout,
        keep_running=args.keep_running,
        fresh=not args.keep_state,
        workers=args.workers,
    )
    summary = run_localnet(config)
    if args.json:
        print(json.dumps(summary, indent=2, sort_keys=True))
    return 0
