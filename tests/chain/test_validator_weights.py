"""The validator's chain stages (sync, weights_due, set_weights) on BittensorChain through the real SDK.

The weight result comes from the validator's own ``score`` stage over a real (empty) store, so
nothing qualifies unless a test says otherwise; the chain is the in-memory Substrate backend.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from memory_faults import Fault
from memory_world import NETUID, World

from prism.chain.bittensor_chain import BittensorChain
from prism.chain.errors import ChainTimeout
from prism.chain.weights import PRISM_WEIGHTS_VERSION
from prism.profiles import load_profile
from prism.scoring import WeightResult, policy_for_profile
from prism.store import Store
from prism.validator import LoopState, score, set_weights, sync, weights_due


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store.open(tmp_path / "validator.sqlite3") as opened:
        yield opened


def scored(
    store: Store, chain: BittensorChain, weights: dict[int, float] | None = None
) -> tuple[Any, WeightResult]:
    view = sync(chain)
    result = score(store, policy_for_profile(load_profile("local_cpu_smoke")), view)
    return view, result.model_copy(update={"weights": weights}) if weights is not None else result


def sent_weights(world: World) -> list[dict[str, Any]]:
    return [e for e in world.backend.extrinsics if "weights" in e.get("call", "")]


def test_one_step_reads_one_metagraph_and_the_commitments(world: World, chain: BittensorChain) -> None:
    view = sync(chain)
    state = LoopState()
    weights_due(view, world.hotkey("validator"), state)
    calls = world.backend.calls
    assert calls["runtime_call:get_metagraph"] == 1 and calls["query_map:CommitmentOf"] == 1
    assert view.block == view.metagraph.block == 1000
    assert calls["query:LastUpdate"] == calls["query:Tempo"] == calls["query:WeightsSetRateLimit"] == 0


def test_nothing_qualifies_so_the_owner_uid_gets_the_weight(
    world: World, chain: BittensorChain, store: Store
) -> None:
    hotkey, state = world.hotkey("validator"), LoopState()
    view, result = scored(store, chain)
    assert result.weights == {} and weights_due(view, hotkey, state)
    outcome = set_weights(chain, world.wallets["validator"], result, store, view, state)
    assert outcome["set"] == 1 and outcome["rule"] == "owner"
    (sent,) = sent_weights(world)
    assert sent["call"] == "SubtensorModule.set_mechanism_weights" and sent["success"]
    assert (sent["params"]["dests"], sent["params"]["version_key"]) == ([0], PRISM_WEIGHTS_VERSION)
    assert store.last_weights() == (sent["block"], {0: 1.0})
    assert not weights_due(sync(chain), hotkey, state)  # the chain's LastUpdate moved
    world.runtime.clock.advance(20)  # a tempo later
    assert weights_due(sync(chain), hotkey, state)
    skip = set_weights(chain, world.wallets["validator"], result, store, sync(chain), state, fallback="skip")
    assert skip["set"] == 0 and len(sent_weights(world)) == 1


def test_commit_reveal_and_the_subnets_version_key(world: World, store: Store) -> None:
    world.runtime.write("SubtensorModule", "CommitRevealWeightsEnabled", (NETUID,), True)
    world.runtime.write("SubtensorModule", "WeightsVersionKey", (NETUID,), PRISM_WEIGHTS_VERSION + 3)
    chain = world.chain()
    try:
        view, result = scored(store, chain, {2: 3.0, 3: 1.0})
        outcome = set_weights(chain, world.wallets["validator"], result, store, view, LoopState())
    finally:
        chain.close()
    (sent,) = sent_weights(world)
    assert outcome["set"] == 1 and sent["call"] == "SubtensorModule.commit_timelocked_mechanism_weights"
    assert sent["success"] and sent["params"]["reveal_round"] > 0


def test_a_rejected_set_backs_off_a_tempo_with_a_clear_log_line(
    world: World, chain: BittensorChain, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    hotkey, state = world.hotkey("validator"), LoopState()
    world.backend.inject(
        Fault(where="submit:set_mechanism_weights", kind="dispatch", name="IncorrectWeightVersionKey")
    )
    view, result = scored(store, chain)
    outcome = set_weights(chain, world.wallets["validator"], result, store, view, state)
    assert outcome["set"] == 0 and outcome["retry_block"] == state.weights_retry_block == 1020
    assert "rejected by the chain" in caplog.text and "IncorrectWeightVersionKey" in caplog.text
    assert "backing off until block 1020 (one tempo)" in caplog.text
    # The refusal did not move LastUpdate, yet no step inside the tempo pays for another try.
    for _ in range(3):
        world.runtime.clock.advance(5)
        view = sync(chain)
        assert view.metagraph.blocks_since_last_update(hotkey) is None and not weights_due(
            view, hotkey, state
        )
    world.runtime.clock.advance(5)
    view, result = scored(store, chain)
    assert weights_due(view, hotkey, state)
    assert set_weights(chain, world.wallets["validator"], result, store, view, state)["set"] == 1
    assert [e["success"] for e in sent_weights(world)] == [False, True] and state.weights_retry_block is None


def test_rate_limited_backs_off_the_rate_limit_window(
    world: World, chain: BittensorChain, store: Store
) -> None:
    state = LoopState()
    world.backend.inject(
        Fault(where="submit:set_mechanism_weights", kind="dispatch", name="SettingWeightsTooFast")
    )
    view, result = scored(store, chain)
    assert set_weights(chain, world.wallets["validator"], result, store, view, state)["set"] == 0
    assert state.weights_retry_block == view.block + 5


def test_a_timed_out_set_that_lands_later_is_not_sent_again(world: World, store: Store) -> None:
    hotkey, state = world.hotkey("validator"), LoopState()
    world.backend.inject(Fault(where="submit:set_mechanism_weights", kind="hang", seconds=0.8, land="after"))
    chain = world.chain(write_timeout_s=0.3)
    try:
        view, result = scored(store, chain)
        with pytest.raises(ChainTimeout):
            set_weights(chain, world.wallets["validator"], result, store, view, state)
        assert state.weights_retry_block == view.block + 3
        deadline = time.monotonic() + 5
        while not sent_weights(world):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        world.runtime.clock.advance(3)
        assert not weights_due(sync(chain), hotkey, state)  # LastUpdate says it landed
    finally:
        chain.close()
    assert len(sent_weights(world)) == 1


def test_a_short_vector_is_padded_to_the_subnets_minimum(world: World, store: Store) -> None:
    world.runtime.write("SubtensorModule", "MinAllowedWeights", (NETUID,), 3)
    chain = world.chain()
    try:
        view, result = scored(store, chain, {2: 1.0})
        assert set_weights(chain, world.wallets["validator"], result, store, view, LoopState())["set"] == 1
    finally:
        chain.close()
    (sent,) = sent_weights(world)
    assert sent["success"] and sorted(sent["params"]["dests"]) == [0, 1, 2]
    assert sorted(sent["params"]["weights"]) == [2, 2, 65535]
