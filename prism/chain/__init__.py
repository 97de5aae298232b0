"""Chain stage: the ``Chain`` protocol and its two implementations.

This package is the only place in PRISM that imports ``bittensor``; importing it (or
``prism.chain.base`` / ``prism.chain.errors`` / ``prism.chain.commitments``) stays cheap
because bittensor is loaded only by the submodules that need it.

* ``prism.chain.base``: ``Chain``, ``Metagraph``, ``Neuron``, ``AxonInfo``, ``Commitment``
* ``prism.chain.errors``: ``ChainError`` and friends
* ``prism.chain.commitments``: the ``prism:v1:<sha256>`` commitment payload
* ``prism.chain.local``: ``LocalChain`` (embedded SQLite chain)
* ``prism.chain.bittensor_chain``: ``BittensorChain`` (bittensor 11)
* ``prism.chain.wallets`` / ``prism.chain.auth``: wallets and signed HTTP requests
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from prism.chain.base import AxonInfo, Chain, Commitment, Metagraph, Neuron
from prism.chain.errors import (
    ChainError,
    ChainRejected,
    ChainTimeout,
    ChainUnavailable,
    NotPermitted,
    NotRegistered,
    RateLimited,
    SubnetMissing,
    WalletError,
)
from prism.errors import OperatorError

ChainKind = Literal["local", "bittensor"]

__all__ = [
    "AxonInfo",
    "Chain",
    "ChainError",
    "ChainKind",
    "ChainRejected",
    "ChainTimeout",
    "ChainUnavailable",
    "Commitment",
    "Metagraph",
    "Neuron",
    "NotPermitted",
    "NotRegistered",
    "RateLimited",
    "SubnetMissing",
    "WalletError",
    "open_chain",
]


def open_chain(
    kind: ChainKind,
    *,
    netuid: int,
    path: str | Path | None = None,
    network: str = "finney",
    endpoint: str | None = None,
) -> Chain:
    """Open the chain a neuron was configured for (``--chain local|bittensor``)."""
    if kind == "local":
        if path is None:
            raise OperatorError(
                "--chain local needs --chain.path (the local chain file)", code="config.invalid"
            )
        from prism.chain.local import LocalChain

        return LocalChain(path, netuid)
    if kind == "bittensor":
        from prism.chain.bittensor_chain import BittensorChain

        return BittensorChain(netuid, network=network, endpoint=endpoint)
    raise OperatorError(f"unknown chain kind {kind!r} (expected local or bittensor)", code="config.invalid")
