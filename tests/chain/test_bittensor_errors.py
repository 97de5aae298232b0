"""Every chain failure PRISM maps, raised by the real SDK from the in-memory backend, by its real name.

Natural refusals come from the backend's pallet rules (the chain state makes the call fail);
injected ones are module errors by their catalog names, transaction-pool rejections as the node's
JSON-RPC error payloads, and RPC failures as ``RpcSubstrate`` raises them.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from memory_faults import Fault
from memory_world import NETUID, SHA, World

from prism.chain.bittensor_chain import BittensorChain
from prism.chain.commitments import format_commitment
from prism.chain.errors import (
    ChainError,
    ChainRejected,
    ChainTimeout,
    ChainUnavailable,
    InsufficientBalance,
    NotPermitted,
    NotRegistered,
    RateLimited,
    SubnetMissing,
)
from prism.chain.wallets import coldkey_ss58, hotkey_ss58
from prism.errors import PrismError

COMMIT = format_commitment(SHA)


def _weights(world: World, chain: BittensorChain) -> Any:
    return chain.set_weights(world.wallets["validator"], {2: 1.0}, version_key=100)


def _serve(world: World, chain: BittensorChain) -> Any:
    return chain.serve_axon(world.wallets["miner"], "10.0.0.9", 8092)


def _commit(world: World, chain: BittensorChain) -> Any:
    return chain.commit(world.wallets["miner"], COMMIT)


WRITES = {"set_mechanism_weights": _weights, "serve_axon": _serve, "set_commitment": _commit}


def _raises(
    world: World, call: str, expected: type[PrismError], chain: BittensorChain | None = None
) -> PrismError:
    opened = chain or world.chain()
    try:
        with pytest.raises(expected) as info:
            WRITES[call](world, opened)
    finally:
        if chain is None:
            opened.close()
    assert type(info.value) is expected
    return info.value


# --------------------------------------------------------------------------------------------
# Refusals the chain's own rules produce.


def test_weights_inside_the_rate_limit_are_rate_limited_before_signing(world: World) -> None:
    chain = world.chain()
    _weights(world, chain)
    error = _raises(world, "set_mechanism_weights", RateLimited, chain)  # the SDK's preflight
    chain.close()
    assert error.code == "chain.rate_limited" and "rate limit is 5 blocks" in error.message
    assert len([e for e in world.backend.extrinsics if e.get("call")]) == 1  # no fee for the refusal


def test_a_version_key_below_the_subnets_is_refused(world: World) -> None:
    world.runtime.write("SubtensorModule", "WeightsVersionKey", (NETUID,), 101)
    error = _raises(world, "set_mechanism_weights", ChainRejected)
    assert error.chain_name == "IncorrectWeightVersionKey"


def test_serving_again_too_soon_is_rate_limited(world: World) -> None:
    error = _raises(world, "serve_axon", RateLimited)  # the miner's axon was served at registration
    assert error.chain_name == "ServingRateLimitExceeded"


def test_the_commitment_quota_of_an_epoch_is_a_rate_limit(world: World) -> None:
    world.runtime.write("Commitments", "MaxSpace", (), 150)  # one 100-byte commitment per epoch
    chain = world.chain()
    _commit(world, chain)
    error = _raises(world, "set_commitment", RateLimited, chain)
    chain.close()
    assert error.chain_name == "SpaceLimitExceeded"


def test_an_unregistered_hotkey_may_not_commit(world: World, wallets: dict[str, Any]) -> None:
    world.runtime.fund(hotkey_ss58(wallets["stranger"]), 1.0)  # no owner on record: the signer pays
    chain = world.chain()
    try:
        with pytest.raises(NotRegistered) as info:
            chain.commit(wallets["stranger"], COMMIT)
    finally:
        chain.close()
    assert info.value.chain_name == "AccountNotAllowedCommit" and info.value.code == "chain.not_registered"


def test_an_unregistered_hotkey_may_not_set_weights(world: World, wallets: dict[str, Any]) -> None:
    chain = world.chain()
    try:
        with pytest.raises(NotRegistered) as info:
            chain.set_weights(wallets["stranger"], {2: 1.0}, version_key=100)
    finally:
        chain.close()
    assert "not registered" in info.value.message


def test_weights_without_a_permit_are_not_permitted(world: World) -> None:
    world.runtime.clock.advance(10)  # the miner's LastUpdate is its registration block
    chain = world.chain()
    try:
        with pytest.raises(NotPermitted) as info:
            chain.set_weights(world.wallets["miner"], {1: 1.0, 3: 1.0}, version_key=100)
    finally:
        chain.close()
    assert info.value.chain_name == "NeuronNoValidatorPermit"


def test_an_unfunded_coldkey_cannot_pay_the_fee(world: World) -> None:
    world.runtime.fund(coldkey_ss58(world.wallets["validator"]), -1.0)
    error = _raises(world, "set_mechanism_weights", InsufficientBalance)
    assert error.chain_name == "Payment" and "fund the coldkey" in error.message


# --------------------------------------------------------------------------------------------
# Module errors injected by their real names.


@pytest.mark.parametrize(
    ("call", "name", "expected"),
    [
        ("set_mechanism_weights", "SettingWeightsTooFast", RateLimited),
        ("set_mechanism_weights", "TxRateLimitExceeded", RateLimited),
        ("set_mechanism_weights", "HotKeyNotRegisteredInSubNet", NotRegistered),
        ("set_mechanism_weights", "NotEnoughStakeToSetWeights", NotPermitted),
        ("set_mechanism_weights", "NeuronNoValidatorPermit", NotPermitted),
        ("set_mechanism_weights", "IncorrectWeightVersionKey", ChainRejected),
        ("set_mechanism_weights", "WeightVecLengthIsLow", ChainRejected),
        ("set_mechanism_weights", "MaxWeightExceeded", ChainRejected),
        ("set_mechanism_weights", "UidVecContainInvalidOne", ChainRejected),
        ("set_mechanism_weights", "CommitRevealEnabled", ChainRejected),
        ("set_mechanism_weights", "SubnetNotExists", SubnetMissing),
        ("set_mechanism_weights", "BadOrigin", ChainRejected),
        ("serve_axon", "ServingRateLimitExceeded", RateLimited),
        ("serve_axon", "InvalidIpAddress", ChainRejected),
        ("serve_axon", "HotKeyNotRegisteredInSubNet", NotRegistered),
        ("set_commitment", "SpaceLimitExceeded", RateLimited),
        ("set_commitment", "AccountNotAllowedCommit", NotRegistered),
        ("set_commitment", "TooManyFieldsInCommitmentInfo", ChainRejected),
    ],
)
def test_module_errors_map_by_their_real_name(world: World, call: str, name: str, expected: type) -> None:
    world.runtime.clock.advance(60)  # past the serving rate limit, so only the injected error fails
    world.backend.inject(Fault(where=f"submit:{call}", kind="dispatch", name=name))
    error = _raises(world, call, expected)
    assert error.chain_name == name and name in error.message
    (included,) = [e for e in world.backend.extrinsics if e.get("call", "").endswith(call)]
    assert included["included"] and not included["success"] and included["error"] == name  # the fee was paid


def test_committing_weights_too_fast_on_a_commit_reveal_subnet(world: World) -> None:
    world.runtime.write("SubtensorModule", "CommitRevealWeightsEnabled", (NETUID,), True)
    world.backend.inject(Fault(where="submit:commit_timelocked_mechanism_weights", kind="dispatch",
                               name="CommittingWeightsTooFast"))  # fmt: skip
    chain = world.chain()
    try:
        with pytest.raises(RateLimited) as info:
            _weights(world, chain)
    finally:
        chain.close()
    assert info.value.chain_name == "CommittingWeightsTooFast"


def test_only_real_error_names_can_be_injected() -> None:
    with pytest.raises(ValueError, match="CommitmentSetRateLimitExceeded"):
        Fault(where="submit:set_commitment", kind="dispatch", name="CommitmentSetRateLimitExceeded")


# --------------------------------------------------------------------------------------------
# Transaction-pool rejections (never included, no fee).


@pytest.mark.parametrize(
    ("data", "expected", "name"),
    [
        ("Custom error: 6", RateLimited, "RateLimitExceeded"),
        ("Custom error: 12", RateLimited, "ServingRateLimitExceeded"),
        ("Custom error: 19", NotRegistered, "HotKeyNotRegisteredInSubNet"),
        ("Custom error: 1", NotPermitted, "StakeAmountTooLow"),
        ("Inability to pay some fees (e.g. account balance too low)", InsufficientBalance, "Payment"),
        ("Transaction is outdated", ChainRejected, "Stale"),
    ],
)
def test_pool_rejections_map_by_their_resolved_name(
    world: World, data: str, expected: type, name: str
) -> None:
    payload = {"error": {"code": 1010, "message": "Invalid Transaction", "data": data}}
    world.backend.inject(Fault(where="submit:set_mechanism_weights", kind="pool", payload=payload))
    error = _raises(world, "set_mechanism_weights", expected)
    assert error.chain_name == name
    assert not any(e.get("included") for e in world.backend.extrinsics)


def test_a_transient_pool_rejection_is_resubmitted_by_the_sdk(world: World) -> None:
    low = {"error": {"code": 1014, "message": "Priority is too low: (100 vs 100)"}}
    world.backend.inject(Fault(where="submit:set_mechanism_weights", kind="pool", payload=low, times=1))
    chain = world.chain()
    try:
        assert _weights(world, chain) == 1001  # the executor's retries=2 resubmitted it
        world.runtime.clock.advance(10)
        world.backend.inject(Fault(where="submit:set_mechanism_weights", kind="pool", payload=low, times=3))
        with pytest.raises(RateLimited) as info:
            _weights(world, chain)
    finally:
        chain.close()
    assert info.value.chain_name == "PriorityTooLow"


# --------------------------------------------------------------------------------------------
# RPC failures, timeouts and writes that land after a timeout.


def test_an_rpc_timeout_is_unavailable_and_a_refusing_endpoint_says_so(world: World) -> None:
    world.backend.inject(Fault(where="runtime_call:get_metagraph", kind="rpc_timeout"),
                         Fault(where="query_map:CommitmentOf", kind="rpc_policy"))  # fmt: skip
    chain = world.chain()
    try:
        with pytest.raises(ChainUnavailable) as timeout:
            chain.metagraph()
        assert (
            type(timeout.value) is ChainUnavailable
            and "timed out without a response" in timeout.value.message
        )
        with pytest.raises(ChainUnavailable) as refused:
            chain.commitments()
        assert refused.value.code == "chain.rpc_refused" and "retry after 6 s" in refused.value.message
        assert chain.metagraph().block == 1000  # the next call works
    finally:
        chain.close()


def test_a_node_that_cannot_be_reached_is_unavailable(world: World) -> None:
    world.backend.inject(Fault(where="connect", kind="rpc_timeout"))
    chain = world.chain()
    try:
        with pytest.raises(ChainUnavailable):
            chain.block()
        assert chain.block() == 1000  # connecting again succeeds
    finally:
        chain.close()


def test_a_hung_read_times_out(world: World) -> None:
    world.backend.inject(Fault(where="runtime_call:get_metagraph", kind="hang", seconds=1.0))
    chain = world.chain(read_timeout_s=0.2)
    try:
        with pytest.raises(ChainTimeout) as info:
            chain.metagraph()
        assert info.value.code == "chain.timeout" and info.value.fault == "infrastructure"
    finally:
        chain.close()


@pytest.mark.parametrize("land", ["before", "after"])
def test_a_write_can_land_after_its_timeout(world: World, land: str) -> None:
    world.backend.inject(Fault(where="submit:set_mechanism_weights", kind="hang", seconds=0.6, land=land))
    chain = world.chain(write_timeout_s=0.3)
    try:
        with pytest.raises(ChainTimeout):
            _weights(world, chain)
        deadline = time.monotonic() + 5
        while chain.metagraph().blocks_since_last_update(world.hotkey("validator")) is None:
            assert time.monotonic() < deadline, "the timed-out write never landed"
            time.sleep(0.05)
    finally:
        chain.close()
    (landed,) = [e for e in world.backend.extrinsics if e.get("call")]
    assert landed["success"]


def test_unknown_sdk_failures_stay_chain_errors() -> None:
    from prism.chain.bittensor_chain import map_sdk_error

    error = map_sdk_error(RuntimeError("surprise"), "block")
    assert type(error) is ChainError and error.code == "chain.error"
