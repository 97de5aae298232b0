"""Wallet helpers: the only place PRISM touches ``bittensor.Wallet`` key files.

Wallets live under ``<path>/<name>/`` with ``coldkey``, ``coldkeypub.txt`` and
``hotkeys/<hotkey>`` (bittensor's layout). PRISM only ever needs the hotkey's secret (to sign
requests and extrinsics) and the coldkey's public address.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from prism.chain.errors import WalletError

logger = logging.getLogger(__name__)

DEFAULT_WALLET_PATH = str(Path.home() / ".bittensor" / "wallets")


def create_wallet(name: str, hotkey: str, path: str | Path, *, overwrite: bool = False) -> Any:
    """Create (or reuse) a wallet whose keys are stored without a password.

    Passwordless keys are meant for local chains and tests; on a real chain create keys with
    ``btcli`` and keep the coldkey encrypted. An existing coldkey is kept, so several hotkeys
    can share one coldkey.
    """
    import bittensor as bt  # lazy: reading addresses off a wallet needs no SDK import

    wallet = bt.Wallet(name=name, hotkey=hotkey, path=str(Path(path).expanduser()))
    if overwrite or not wallet.coldkeypub_file.exists_on_device():
        wallet.create_new_coldkey(use_password=False, overwrite=True, suppress=True)
    if overwrite or not wallet.hotkey_file.exists_on_device():
        wallet.create_new_hotkey(use_password=False, overwrite=True, suppress=True)
    logger.info("wallet %s/%s at %s: hotkey %s", name, hotkey, path, hotkey_ss58(wallet))
    return wallet


def load_wallet(name: str, hotkey: str, path: str | Path = DEFAULT_WALLET_PATH) -> Any:
    """Load an existing wallet and check that its hotkey and coldkey address are readable."""
    import bittensor as bt

    wallet = bt.Wallet(name=name, hotkey=hotkey, path=str(Path(path).expanduser()))
    where = f"{Path(path).expanduser() / name}"
    if not wallet.hotkey_file.exists_on_device():
        raise WalletError(
            f"hotkey {hotkey!r} of wallet {name!r} not found under {where}/hotkeys; "
            "create it with `btcli wallet new-hotkey` (or `prism chain register --create-wallet` on a local chain)"
        )
    if not wallet.coldkeypub_file.exists_on_device():
        raise WalletError(f"coldkeypub.txt of wallet {name!r} not found under {where}")
    try:
        hotkey_ss58(wallet)
        coldkey_ss58(wallet)
    except Exception as exc:  # bittensor raises several unrelated types for a bad key file
        raise WalletError(
            f"wallet {name}/{hotkey} at {where} is unreadable: {exc}", code="wallet.invalid"
        ) from exc
    return wallet


def hotkey_ss58(wallet: Any) -> str:
    """The wallet's hotkey address."""
    return str(wallet.hotkey.ss58_address)


def coldkey_ss58(wallet: Any) -> str:
    """The wallet's coldkey address (read from the public file; never unlocks the coldkey)."""
    return str(wallet.coldkeypub.ss58_address)
