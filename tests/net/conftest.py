"""Real wallets, a real LocalChain file and real axons on 127.0.0.1 for the net tests."""

from __future__ import annotations

import asyncio
import contextlib
import io
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from prism.chain.local import LocalChain, SubnetParams
from prism.chain.wallets import create_wallet, hotkey_ss58
from prism.net.axon import Axon, AxonConfig

NETUID = 7


def make_zip(text: str) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        info = zipfile.ZipInfo("model.py", date_time=(1980, 1, 1, 0, 0, 0))
        archive.writestr(info, text)
    return buffer.getvalue()


@pytest.fixture(scope="session")
def wallets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("wallets")
    names = ("validator", "miner", "miner2", "weak", "stranger")
    return {name: create_wallet(name, "default", root) for name in names}


@pytest.fixture
def chain(tmp_path: Path, wallets: dict[str, Any]) -> LocalChain:
    local = LocalChain.create(
        tmp_path / "chain.db", SubnetParams(netuid=NETUID, commitment_rate_limit=0), block_time_s=0.1
    )
    local.register_wallet(wallets["validator"], stake=1000.0, validator_permit=True)
    local.register_wallet(wallets["miner"])
    local.register_wallet(wallets["miner2"])
    local.register_wallet(wallets["weak"], stake=100.0)
    return local


@contextlib.asynccontextmanager
async def running_axon(
    wallet: Any, chain: LocalChain, data: bytes | None, **config: Any
) -> AsyncIterator[Axon]:
    axon = Axon(wallet, chain, AxonConfig(host="127.0.0.1", port=0, **config))
    axon.set_submission(data)
    await axon.start()
    chain.serve_axon(wallet, "127.0.0.1", axon.port)
    try:
        yield axon
    finally:
        await axon.stop()


def neuron_of(chain: LocalChain, wallet: Any):
    neuron = chain.metagraph().neuron(hotkey_ss58(wallet))
    assert neuron is not None
    return neuron


@pytest.fixture
def net() -> SimpleNamespace:
    """Helpers for the tests (conftest modules are not importable under importlib mode)."""
    return SimpleNamespace(make_zip=make_zip, running_axon=running_axon, neuron_of=neuron_of, run=asyncio.run)
