"""A standard subnet on the in-memory Substrate backend, shared by the chain, miner and neuron tests."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from memory_substrate import MemorySubstrate

from prism.chain.bittensor_chain import BittensorChain
from prism.chain.commitments import format_commitment
from prism.chain.wallets import coldkey_ss58, hotkey_ss58

WALLET_NAMES = ("owner", "validator", "miner", "v6", "stranger")
NETUID = 11
SHA = "ab" * 32


@dataclass
class World:
    """A subnet on the in-memory backend and the wallets registered on it."""

    backend: MemorySubstrate
    wallets: dict[str, Any]

    @property
    def runtime(self) -> Any:
        return self.backend.runtime

    def hotkey(self, name: str) -> str:
        return hotkey_ss58(self.wallets[name])

    def chain(self, **options: Any) -> BittensorChain:
        return BittensorChain(NETUID, network="test", substrate=self.backend, **options)


def build_world(wallets: dict[str, Any], **hyperparams: Any) -> World:
    """Netuid 11 at block 1000: owner uid 0, validator uid 1 (alpha and root stake, permit, never set
    weights), miner uid 2 (IPv4 axon), v6 uid 3 (IPv6 axon); plain, sealed, revealed and junk
    commitments; every coldkey but the stranger's funded."""
    backend = MemorySubstrate()
    runtime = backend.runtime
    owner, validator, miner, v6 = (wallets[n] for n in ("owner", "validator", "miner", "v6"))
    params = {"WeightsSetRateLimit": 5, **hyperparams}
    runtime.add_subnet(
        NETUID, tempo=20, owner_hotkey=hotkey_ss58(owner), owner_coldkey=coldkey_ss58(owner), **params
    )
    runtime.register(NETUID, hotkey_ss58(owner), coldkey_ss58(owner), alpha=50.0)
    runtime.register(NETUID, hotkey_ss58(validator), coldkey_ss58(validator), alpha=2000.0, root_tao=100.0,
                     permit=True, last_update=0)  # fmt: skip
    runtime.register(NETUID, hotkey_ss58(miner), coldkey_ss58(miner), alpha=1.5, axon=("10.0.0.2", 8091),
                     incentive=0.75)  # fmt: skip
    runtime.register(NETUID, hotkey_ss58(v6), coldkey_ss58(v6), axon=("2001:db8::1", 9000), incentive=0.25)
    for name in ("owner", "validator", "miner", "v6"):
        runtime.fund(coldkey_ss58(wallets[name]), 1.0)
    text = format_commitment(SHA).encode()
    runtime.put_commitment(NETUID, hotkey_ss58(miner), [{"Raw73": "0x" + text.hex()}], block=990)
    sealed = {"TimelockEncrypted": {"encrypted": "0x" + "11" * 48, "reveal_round": 9_000_000}}
    runtime.put_commitment(NETUID, hotkey_ss58(v6), [sealed], block=995)
    runtime.put_commitment(NETUID, "5C4hrfjw9DjXZTzV3MwzrrAr9P1MJhSrvWGWqi1eSuyUpnhM", [{"Raw5": "0x" + b"hello".hex()}],
                           block=900)  # fmt: skip
    runtime.put_revealed(NETUID, hotkey_ss58(owner), "prism:v1:" + "cd" * 32, reveal_block=980)
    return World(backend=backend, wallets=wallets)
