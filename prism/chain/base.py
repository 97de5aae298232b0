"""The ``Chain`` protocol: the narrow seam between PRISM and a Bittensor chain.

Two implementations exist: :class:`prism.chain.local.LocalChain` (embedded, SQLite) and
:class:`prism.chain.bittensor_chain.BittensorChain` (bittensor 11). Miner and validator code
depends only on this protocol and on the plain data classes below, so the same code runs on
either chain by a flag.

Units. ``Neuron.stake`` is the neuron's stake weight on *this* subnet in the subnet's own
currency: on a real subnet (netuid != 0) that is alpha (α), the chain's ``total_stake`` (alpha
staked to the hotkey plus its root TAO stake times the chain's TAO weight); it is never TAO. On
the embedded chain it is whatever ``prism chain register --stake`` set.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, field_validator

# A wallet is a ``bittensor.Wallet`` (see prism.chain.wallets); typed loosely so this module
# and its callers do not import bittensor.
Wallet = Any


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def canonical_ip(value: str) -> str:
    """One text form per address: compressed IPv6, IPv4-mapped IPv6 as IPv4.

    ``2001:0db8:0:0::1``, ``2001:db8::1`` and ``[2001:db8::1]`` are the same address; so are
    ``::ffff:10.0.0.2`` and ``10.0.0.2``. Raises ``ValueError`` for anything that is not an IP.
    """
    address = ipaddress.ip_address(value.strip().strip("[]"))
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


class AxonInfo(_Frozen):
    """Where a neuron serves its axon. ``ip`` is stored in its canonical form (see ``canonical_ip``)."""

    ip: str
    port: int = Field(ge=1, le=65535)

    @field_validator("ip")
    @classmethod
    def _canonical(cls, value: str) -> str:
        return canonical_ip(value)

    @property
    def url(self) -> str:
        host = f"[{self.ip}]" if ":" in self.ip else self.ip
        return f"http://{host}:{self.port}"

    def matches(self, ip: str, port: int) -> bool:
        """Whether ``ip:port`` is this endpoint, comparing addresses rather than their text."""
        try:
            return (canonical_ip(ip), port) == (self.ip, self.port)
        except ValueError:
            return False


class Neuron(_Frozen):
    """One registered hotkey on the subnet. ``stake`` is in the subnet's units (alpha; see above)."""

    uid: int = Field(ge=0)
    hotkey: str
    coldkey: str
    stake: float = Field(ge=0.0)
    validator_permit: bool
    axon: AxonInfo | None = None
    last_update: int | None = Field(
        default=None, ge=0, description="block of the last weight set or commit; None if never"
    )


class SubnetHyperparams(_Frozen):
    """The subnet settings PRISM's weight setting follows, as the chain holds them."""

    tempo: int = Field(ge=0, description="blocks per epoch")
    weights_rate_limit: int = Field(ge=0, description="blocks between two weight sets of one hotkey")
    weights_version_key: int = Field(default=0, ge=0, description="minimum version_key the chain accepts")
    commit_reveal: bool = Field(default=False, description="weights are committed timelocked, revealed later")
    min_allowed_weights: int = Field(default=0, ge=0, description="fewest nonzero weights a vector may hold")
    serving_rate_limit: int = Field(default=0, ge=0, description="blocks between two axon publications")


class Metagraph(_Frozen):
    """The subnet's neurons at ``block``, ordered by uid, with the hyperparameters at that block."""

    netuid: int
    block: int
    neurons: list[Neuron]
    hyperparams: SubnetHyperparams
    owner_hotkey: str | None = None

    def by_hotkey(self) -> dict[str, Neuron]:
        return {n.hotkey: n for n in self.neurons}

    def neuron(self, hotkey: str) -> Neuron | None:
        return self.by_hotkey().get(hotkey)

    @property
    def hotkey_to_uid(self) -> dict[str, int]:
        return {n.hotkey: n.uid for n in self.neurons}

    @property
    def owner_uid(self) -> int | None:
        """The uid of the subnet owner's hotkey, when the owner is registered on its subnet."""
        if self.owner_hotkey is None:
            return None
        owner = self.neuron(self.owner_hotkey)
        return owner.uid if owner is not None else None

    def blocks_since_last_update(self, hotkey: str) -> int | None:
        """Blocks since the hotkey last set weights; None if it never did or is unregistered."""
        neuron = self.neuron(hotkey)
        if neuron is None or neuron.last_update is None:
            return None
        return max(0, self.block - neuron.last_update)


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

    def block_hash(self, block: int) -> str:
        """The hash of an existing block (``0x`` + 64 hex digits); ``BlockUnavailable`` for a
        block that does not exist yet. Nobody can know it before the block exists."""
        ...

    def tempo(self) -> int:
        """Blocks per epoch on this subnet."""
        ...

    def metagraph(self) -> Metagraph:
        """Every registered neuron with stake, permit, axon endpoint and last weight update, and the
        subnet's hyperparameters, all read at one block."""
        ...

    def commitments(self) -> dict[str, Commitment]:
        """The latest readable commitment per hotkey (registered or not), with its block."""
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
