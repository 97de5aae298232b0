"""Configuration shared by both neurons: the conventional Bittensor flags, parsed once.

Both entry points (``neurons/miner.py``, ``neurons/validator.py``) add these flags, build the
typed config at start-up and pass it down; nothing below the entry point reads ``argv`` or the
environment. ``--help`` shows every flag with its default.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

DEFAULT_WALLET_PATH = Path("~/.bittensor/wallets")
DEFAULT_READ_TIMEOUT_S = 30.0
DEFAULT_WRITE_TIMEOUT_S = 120.0


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class WalletConfig(_Strict):
    name: str = "default"
    hotkey: str = "default"
    path: Path = DEFAULT_WALLET_PATH


class ChainConfig(_Strict):
    """Which chain to talk to: the embedded ``LocalChain`` file or a Bittensor network."""

    kind: Literal["local", "bittensor"] = "bittensor"
    path: Path | None = Field(default=None, description="LocalChain SQLite file (--chain local)")
    network: str = "finney"
    endpoint: str | None = None
    read_timeout_s: float = Field(default=DEFAULT_READ_TIMEOUT_S, gt=0)
    write_timeout_s: float = Field(default=DEFAULT_WRITE_TIMEOUT_S, gt=0)


def neuron_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """An argument parser whose ``--help`` prints each flag's default."""
    return argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )


def add_common_args(parser: argparse.ArgumentParser, *, default_netuid: int | None = None) -> None:
    """The flags every Bittensor neuron has, with their conventional dotted names."""
    parser.add_argument("--netuid", type=int, required=default_netuid is None, default=default_netuid,
                        help="subnet uid")  # fmt: skip
    parser.add_argument("--wallet.name", dest="wallet_name", default="default", help="wallet (coldkey) name")
    parser.add_argument("--wallet.hotkey", dest="wallet_hotkey", default="default", help="hotkey name")
    parser.add_argument("--wallet.path", dest="wallet_path", default=str(DEFAULT_WALLET_PATH),
                        help="directory holding the wallets")  # fmt: skip
    parser.add_argument("--subtensor.network", dest="subtensor_network", default="finney",
                        help="finney (mainnet), test (testnet), local, or a ws(s):// URL")  # fmt: skip
    parser.add_argument("--subtensor.chain_endpoint", dest="subtensor_chain_endpoint", default=None,
                        help="explicit node endpoint; overrides --subtensor.network")  # fmt: skip
    parser.add_argument(
        "--chain", dest="chain_kind", choices=("local", "bittensor"), default="bittensor",
        help="local: the embedded chain file given by --chain.path; bittensor: --subtensor.network",
    )  # fmt: skip
    parser.add_argument("--chain.path", dest="chain_path", default=None, help="LocalChain SQLite file")
    parser.add_argument("--chain.read_timeout", dest="chain_read_timeout", type=float, default=DEFAULT_READ_TIMEOUT_S,
                        help="seconds one chain read may take before it counts as failed")  # fmt: skip
    parser.add_argument("--chain.write_timeout", dest="chain_write_timeout", type=float,
                        default=DEFAULT_WRITE_TIMEOUT_S,
                        help="seconds an extrinsic may take until inclusion before it counts as timed out "
                        "(it may still land; the chain is re-read before any retry)")  # fmt: skip
    parser.add_argument("--logging.debug", dest="logging_debug", action="store_true", help="debug logs")


def wallet_config(args: argparse.Namespace) -> WalletConfig:
    return WalletConfig(name=args.wallet_name, hotkey=args.wallet_hotkey, path=Path(args.wallet_path))


def chain_config(args: argparse.Namespace) -> ChainConfig:
    return ChainConfig(
        kind=args.chain_kind,
        path=Path(args.chain_path).expanduser().resolve() if args.chain_path else None,
        network=args.subtensor_network,
        endpoint=args.subtensor_chain_endpoint,
        read_timeout_s=args.chain_read_timeout,
        write_timeout_s=args.chain_write_timeout,
    )


def setup_logging(debug: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
