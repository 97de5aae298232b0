"""The ``Chain`` protocol: the narrow seam between PRISM and a Bittensor chain.

Two implementations exist: :class:`prism.chain.local.LocalChain` (embedded, SQLite) and
:class:`prism.chain.bittensor_chain.BittensorChain` (bittensor 11). Miner and validator code
depends only on this protocol and on the plain data classes below, so the same code runs on
either chain by a flag.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

# A wallet is a ``bittensor.Wallet`` (see prism.chain.wallets); typed loosely so this module
# and its callers do not import bittensor.
Wallet = Any


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AxonInfo(_Frozen):
    """Where a neuron serves its axon."""

    ip: str
    port: int = Field(ge=1, le=65535)

    @property
    def url(self) -> str:
        host = f"[{self.ip}]" if ":" in self.ip else self.ip
        return f"http://{host}:{self.port}"


class Neuron(_Frozen):
    """One registered hotkey on the subnet."""

    uid: int = Field(ge=0)
    hotkey: str
    coldkey: str
    stake: float = Field(ge=0.0)
    validator_permit: bool
    axon: AxonInfo | None = None


class Metagraph(_Frozen):
    """The subnet's neurons at ``block``, ordered by uid."""

    netuid: int
    block: int
    neurons: list[Neuron]

    def by_hotkey(self) -> dict[str, Neuron]:
        return {n.hotkey: n for n in self.neurons}

    def neuron(self, hotkey: str) -> Neuron | None:
        return self.by_hotkey().get(hotkey)

    @property
    def hotkey_to_uid(self) -> dict[str, int]:
        return {n.hotkey: n.uid for n in self.neurons}


class Commitment(_Frozen):
    """The latest commitment of a hotkey and the block it landed in."""

    hotkey: str
    data: str
    block: int


@runtime_checkable
class Chain(Protocol):
    """What PRISM needs from a chain. Every method may raise ``prism.chain.errors.ChainError``."""

    netuid: int

    def block(self) -> int:
        """The current block number."""
        ...

    def tempo(self) -> int:
        """Blocks per epoch on this subnet."""
        ...

    def metagraph(self) -> Metagraph:
        """Every registered neuron with stake, permit and axon endpoint."""
        ...

    def commitments(self) -> dict[str, Commitment]:
        """The latest commitment per hotkey (registered or not), with its block."""
        ...

    def commit(self, wallet: Wallet, data: str) -> int:
        """Publish ``data`` as the hotkey's commitment; returns the block it landed in.

        Raises ``RateLimited`` when the previous commitment is too recent and ``NotRegistered``
        when the hotkey has no uid.
        """
        ...

    def serve_axon(self, wallet: Wallet, ip: str, port: int) -> None:
        """Publish the hotkey's axon endpoint."""
        ...

    def set_weights(self, wallet: Wallet, weights: dict[int, float], version_key: int) -> int:
        """Set the validator's weights (relative; normalized by the chain); returns the block.

        Raises ``RateLimited`` inside the weights rate limit.
        """
        ...

    def weights_rate_limit(self) -> int:
        """Blocks a validator must wait between two weight sets."""
        ...

    def blocks_since_last_update(self, hotkey: str) -> int | None:
        """Blocks since the hotkey last set weights; None if it never did or is unregistered."""
        ...

    def incentives(self) -> dict[int, float]:
        """Incentive per uid as the chain computed it (sums to 1 when anyone earns)."""
        ...
