"""Chain stage: the ``Chain`` protocol and its two implementations.

This package is the only place in PRISM that imports ``bittensor``; importing it (or
``prism.chain.base`` / ``prism.chain.errors`` / ``prism.chain.commitments``) stays cheap
because bittensor is loaded only by the submodules that need it.

* ``prism.chain.base``: ``Chain``, ``Metagraph``, ``Neuron``, ``AxonInfo``, ``Commitment``,
  ``SubnetHyperparams``
* ``prism.chain.weights``: the rules a weight vector is fitted to before it goes on chain
* ``prism.chain.errors``: ``ChainError`` and friends
* ``prism.chain.commitments``: the ``prism:v1:<sha256>`` commitment payload
* ``prism.chain.local``: ``LocalChain`` (embedded SQLite chain)
* ``prism.chain.bittensor_chain``: ``BittensorChain`` (bittensor 11)
* ``prism.chain.wallets`` / ``prism.chain.auth``: wallets and signed HTTP requests
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from prism.chain.base import AxonInfo, Chain, Commitment, Metagraph, Neuron, SubnetHyperparams
from prism.chain.errors import (
    BlockUnavailable,
    ChainError,
    ChainRejected,
    ChainTimeout,
    ChainUnavailable,
    InsufficientBalance,
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
    "BlockUnavailable",
    "Chain",
    "ChainError",
    "ChainKind",
    "ChainRejected",
    "ChainTimeout",
    "ChainUnavailable",
    "Commitment",
    "InsufficientBalance",
    "Metagraph",
    "Neuron",
    "NotPermitted",
    "NotRegistered",
    "RateLimited",
    "SubnetHyperparams",
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
    read_timeout_s: float | None = None,
    write_timeout_s: float | None = None,
) -> Chain:
    """Open the chain a neuron was configured for (``--chain local|bittensor``).

    The timeouts bound each call to a real chain (reads, and extrinsics until inclusion); the
    embedded chain does not use them.
    """
    if kind == "local":
        if path is None:
            raise OperatorError(
                "--chain local needs --chain.path (the local chain file)", code="config.invalid"
            )
        from prism.chain.local import LocalChain

        return LocalChain(path, netuid)
    if kind == "bittensor":
        from prism.chain.bittensor_chain import (
            DEFAULT_READ_TIMEOUT_S,
            DEFAULT_WRITE_TIMEOUT_S,
            BittensorChain,
        )

        return BittensorChain(
            netuid,
            network=network,
            endpoint=endpoint,
            read_timeout_s=read_timeout_s or DEFAULT_READ_TIMEOUT_S,
            write_timeout_s=write_timeout_s or DEFAULT_WRITE_TIMEOUT_S,
        )
    raise OperatorError(f"unknown chain kind {kind!r} (expected local or bittensor)", code="config.invalid")
