"""Fixtures for the chain tests: real wallets, and a subnet on the in-memory Substrate backend that the
real bittensor SDK drives (``memory_substrate``, ``memory_world``)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# --import-mode=importlib does not put test folders on sys.path; the backend modules need it.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from memory_world import WALLET_NAMES, World, build_world

from prism.chain.bittensor_chain import BittensorChain
from prism.chain.wallets import create_wallet


@pytest.fixture(autouse=True)
def _token_symbol_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The SDK caches subnet token symbols on disk at connect: keep it out of the home directory."""
    monkeypatch.setenv("BTCLI_TOKEN_SYMBOLS_CACHE", str(tmp_path / "token_symbols.json"))


@pytest.fixture(scope="session")
def wallets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("wallets")
    return {name: create_wallet(name, "default", root) for name in WALLET_NAMES}


@pytest.fixture
def world(wallets: dict[str, Any]) -> World:
    return build_world(wallets)


@pytest.fixture
def chain(world: World) -> Iterator[BittensorChain]:
    opened = world.chain()
    yield opened
    opened.close()
