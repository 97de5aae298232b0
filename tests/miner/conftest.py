"""The miner tests use the chain tests' in-memory Substrate backend (tests/chain/memory_*.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# --import-mode=importlib does not put test folders on sys.path; the backend modules need it.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "chain"))


@pytest.fixture(autouse=True)
def _token_symbol_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The SDK caches subnet token symbols on disk at connect: keep it out of the home directory."""
    monkeypatch.setenv("BTCLI_TOKEN_SYMBOLS_CACHE", str(tmp_path / "token_symbols.json"))
