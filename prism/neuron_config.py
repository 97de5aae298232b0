"""Configuration shared by both neurons: the conventional Bittensor flags, parsed once.

Both entry points (``neurons/miner.py``, ``neurons/validator.py``) add these flags, build the
typed config at start-up and pass it down; nothing below the entry point reads ``argv`` or the
environment.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

DEFAULT_WALLET_PATH = Path("~/.bittensor/wallets")


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


def add_common_args(parser: argparse.ArgumentParser, *, default_netuid: int | None = None) -> None:
    """The flags every Bittensor neuron has, with their conventional dotted names."""
    parser.add_argument("--netuid", type=int, required=default_netuid is None, default=default_netuid)
    parser.add_argument("--wallet.name", dest="wallet_name", default="default")
    parser.add_argument("--wallet.hotkey", dest="wallet_hotkey", default="default")
    parser.add_argument("--wallet.path", dest="wallet_path", default=str(DEFAULT_WALLET_PATH))
    parser.add_argument("--subtensor.network", dest="subtensor_network", default="finney")
    parser.add_argument("--subtensor.chain_endpoint", dest="subtensor_chain_endpoint", default=None)
    parser.add_argument(
        "--chain", dest="chain_kind", choices=("local", "bittensor"), default="bittensor",
        help="local: the embedded chain file given by --chain.path; bittensor: --subtensor.network",
    )  # fmt: skip
    parser.add_argument("--chain.path", dest="chain_path", default=None, help="LocalChain SQLite file")
    parser.add_argument("--logging.debug", dest="logging_debug", action="store_true")


def wallet_config(args: argparse.Namespace) -> WalletConfig:
    return WalletConfig(name=args.wallet_name, hotkey=args.wallet_hotkey, path=Path(args.wallet_path))


def chain_config(args: argparse.Namespace) -> ChainConfig:
    return ChainConfig(
        kind=args.chain_kind,
        path=Path(args.chain_path).expanduser().resolve() if args.chain_path else None,
        network=args.subtensor_network,
        endpoint=args.subtensor_chain_endpoint,
    )


def setup_logging(debug: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
