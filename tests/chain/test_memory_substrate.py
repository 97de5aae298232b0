"""The in-memory Substrate backend is as strict as a node about names, and pins reads to blocks.

These are checks of the test seam itself: a typo in PRISM's use of the SDK must fail here as it
would against subtensor, not pass silently the way a hand-written fake would.
"""

from __future__ import annotations

import asyncio

import bittensor as bt
import pytest
from memory_substrate import MemorySubstrate
from memory_world import NETUID, World


def test_unknown_storage_items_calls_and_parameters_fail_like_on_a_node(world: World) -> None:
    backend = world.backend
    sdk = bt.Subtensor("test", substrate=backend)
    try:
        with pytest.raises(bt.ChainError, match="no storage item"):
            sdk.query(("SubtensorModule", "WeightsVersionKeys"), [NETUID])
        with pytest.raises(bt.ChainError, match="no call"):
            sdk.compose(bt.calls.Call("SubtensorModule", "set_weightz", {}))
        with pytest.raises(bt.ChainError, match="takes"):
            sdk.compose(bt.calls.Call("Commitments", "set_commitment", {"netuid": NETUID}))
        with pytest.raises(bt.ChainError, match="cannot encode Raw73"):
            sdk.compose(
                bt.calls.Commitments.set_commitment(netuid=NETUID, info={"fields": [{"Raw73": b"x"}]})
            )
        with pytest.raises(AttributeError):  # the SDK's own namespaces refuse unknown reads
            sdk.hyperparameters.weights_rate_limits(NETUID)
    finally:
        sdk.close()


def test_reads_pinned_to_a_block_see_that_blocks_state(world: World) -> None:
    world.runtime.write("SubtensorModule", "WeightsVersionKey", (NETUID,), 5)
    world.runtime.clock.advance(3)
    world.runtime.write("SubtensorModule", "WeightsVersionKey", (NETUID,), 9)
    sdk = bt.Subtensor("test", substrate=world.backend)
    try:
        item = bt.storage.SubtensorModule.WeightsVersionKey
        assert sdk.query(item, [NETUID], block=1000) == 5 and sdk.query(item, [NETUID]) == 9
        assert sdk.at(1000).subnets.metagraph(NETUID, commitments=False).raw["weights_version"] == 5
    finally:
        sdk.close()


def test_a_closed_connection_is_not_ready() -> None:
    backend = MemorySubstrate()
    with pytest.raises(bt.ConnectionNotReady):
        asyncio.run(backend.block_number())
