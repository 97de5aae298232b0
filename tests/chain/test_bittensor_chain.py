"""BittensorChain through the real bittensor 11.3.0 SDK, with only its Substrate backend in memory.

Every call below goes through ``bt.Subtensor`` -> ``Client`` -> the typed namespaces, reads,
intents and ``Executor`` of the installed SDK; ``MemorySubstrate`` answers in the runtime's shapes
(see tests/chain/memory_substrate.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import bittensor as bt
import pytest
from memory_world import NETUID, SHA, World

from prism.chain.base import Chain
from prism.chain.bittensor_chain import BittensorChain, parse_axon_endpoint
from prism.chain.commitments import format_commitment
from prism.chain.errors import BlockUnavailable, ChainRejected, SubnetMissing
from prism.chain.wallets import coldkey_ss58
from prism.errors import OperatorError


def extrinsics(world: World, call: str) -> list[dict[str, Any]]:
    return [e for e in world.backend.extrinsics if e.get("call") == call]


def test_reads_take_the_runtimes_shapes_into_prism_types(world: World, chain: BittensorChain) -> None:
    assert isinstance(chain, Chain)
    assert (chain.block(), chain.tempo(), chain.weights_rate_limit()) == (1000, 20, 5)
    graph = chain.metagraph()
    assert (graph.netuid, graph.block) == (NETUID, 1000)
    owner, validator, miner, v6 = graph.neurons
    # Stake is alpha on netuid 11: 2000 alpha + 100 root TAO x TaoWeight 0.2 (the chain's stake weight).
    assert validator.stake == pytest.approx(2020.0) and miner.stake == 1.5 and v6.stake == 0.0
    sdk = bt.Subtensor("test", substrate=world.backend)
    try:
        sdk_stake = sdk.subnets.metagraph(NETUID, commitments=False).neurons[1].total_stake
    finally:
        sdk.close()
    assert (sdk_stake.netuid, sdk_stake.alpha) == (NETUID, pytest.approx(2020.0))
    with pytest.raises(bt.UnitMismatchError):  # what crashed the neurons before: .tao of an alpha Balance
        _ = sdk_stake.tao
    assert (validator.validator_permit, validator.axon, validator.last_update) == (True, None, None)
    assert miner.axon is not None and miner.axon.url == "http://10.0.0.2:8091" and miner.last_update == 1000
    assert v6.axon is not None and v6.axon.url == "http://[2001:db8::1]:9000"
    assert graph.owner_hotkey == owner.hotkey == world.hotkey("owner") and graph.owner_uid == 0
    assert graph.hyperparams.model_dump() == {"tempo": 20, "weights_rate_limit": 5, "weights_version_key": 0,
                                              "commit_reveal": False, "min_allowed_weights": 0,
                                              "serving_rate_limit": 50}  # fmt: skip
    assert chain.incentives() == {
        0: 0.0,
        1: 0.0,
        2: pytest.approx(0.75, abs=1e-4),
        3: pytest.approx(0.25, abs=1e-4),
    }
    assert graph.blocks_since_last_update(world.hotkey("miner")) == 0
    assert chain.blocks_since_last_update(world.hotkey("validator")) is None  # LastUpdate 0: never set


def test_commitments_plain_revealed_and_sealed(world: World, chain: BittensorChain) -> None:
    commitments = chain.commitments()
    assert commitments[world.hotkey("miner")].data == format_commitment(SHA)
    assert commitments[world.hotkey("miner")].block == 990
    assert world.hotkey("v6") not in commitments  # sealed until the chain reveals it
    revealed = commitments[world.hotkey("owner")]  # a timelocked commitment the chain decrypted
    assert (revealed.data, revealed.block) == ("prism:v1:" + "cd" * 32, 980)
    assert any(c.data == "hello" for c in commitments.values())  # junk is returned; parsing refuses it


def test_block_hashes_come_from_the_chain(world: World, chain: BittensorChain) -> None:
    assert chain.block_hash(990) == world.runtime.block_hash(990)
    assert chain.block_hash(1000) != chain.block_hash(999)
    with pytest.raises(BlockUnavailable) as future:
        chain.block_hash(1001)
    assert future.value.code == "chain.block_unavailable"
    world.runtime.clock.advance(1)
    assert chain.block_hash(1001) == world.runtime.block_hash(1001)


def test_one_runtime_call_per_metagraph_and_none_for_last_update(world: World, chain: BittensorChain) -> None:
    chain.metagraph()
    chain.blocks_since_last_update(world.hotkey("miner"))
    calls = world.backend.calls
    assert calls["runtime_call:get_metagraph"] == 2
    assert calls["query:LastUpdate"] == 0 and calls["query:WeightsVersionKey"] == 0


def test_hyperparameters_missing_from_the_record_are_read_from_storage(world: World) -> None:
    world.backend.metagraph_hyperparams = False  # a runtime whose metagraph omits them
    world.runtime.write("SubtensorModule", "WeightsVersionKey", (NETUID,), 7)
    chain = world.chain()
    try:
        assert chain.metagraph().hyperparams.weights_version_key == 7
        assert world.backend.calls["query:WeightsVersionKey"] == 1
    finally:
        chain.close()


def test_plain_weights_are_quantized_and_paid_by_the_coldkey(world: World, chain: BittensorChain) -> None:
    coldkey = coldkey_ss58(world.wallets["validator"])
    before, hotkey_before = (
        world.runtime.free_balance(coldkey),
        world.runtime.free_balance(world.hotkey("validator")),
    )
    block = chain.set_weights(world.wallets["validator"], {2: 0.75, 3: 0.25}, version_key=100)
    (sent,) = extrinsics(world, "SubtensorModule.set_mechanism_weights")
    assert sent["success"] and sent["block"] == block == 1001
    assert sent["params"]["dests"] == [2, 3] and sent["params"]["weights"] == [65535, 21845]
    assert sent["params"]["version_key"] == 100
    assert world.runtime.read("SubtensorModule", "Weights", (NETUID, 1)) == [(2, 65535), (3, 21845)]
    assert chain.metagraph().blocks_since_last_update(world.hotkey("validator")) == 0
    assert (
        world.runtime.free_balance(coldkey) == before - sent["fee"]
    )  # the fee filter routes it to the coldkey
    assert world.runtime.free_balance(world.hotkey("validator")) == hotkey_before == 0


def test_commit_reveal_subnets_get_a_timelocked_commit(world: World) -> None:
    world.runtime.write("SubtensorModule", "CommitRevealWeightsEnabled", (NETUID,), True)
    chain = world.chain()
    try:
        assert chain.metagraph().hyperparams.commit_reveal
        block = chain.set_weights(world.wallets["validator"], {2: 1.0}, version_key=100)
    finally:
        chain.close()
    (sent,) = extrinsics(world, "SubtensorModule.commit_timelocked_mechanism_weights")
    assert sent["success"] and sent["block"] == block and sent["params"]["reveal_round"] > 0
    assert len(bytes.fromhex(sent["params"]["commit"][2:])) > 100  # drand-timelocked ciphertext
    assert extrinsics(world, "SubtensorModule.set_mechanism_weights") == []
    assert world.runtime.read("SubtensorModule", "Weights", (NETUID, 1)) is None  # hidden until revealed
    assert world.runtime.read("SubtensorModule", "LastUpdate", (NETUID,))[1] == block


def test_serve_axon_publishes_ipv4_and_ipv6(world: World, chain: BittensorChain) -> None:
    world.runtime.clock.advance(60)  # past the serving rate limit of the registration-time axons
    chain.serve_axon(world.wallets["miner"], "10.0.0.9", 8092)
    chain.serve_axon(world.wallets["v6"], "2001:0db8:0000::7", 9001)
    _, _, miner, v6 = chain.metagraph().neurons
    assert (miner.axon.ip, miner.axon.port, v6.axon.ip, v6.axon.port) == (
        "10.0.0.9",
        8092,
        "2001:db8::7",
        9001,
    )
    published = [e["params"]["ip_type"] for e in extrinsics(world, "SubtensorModule.serve_axon")]
    assert published == [4, 6]


def test_commit_lands_as_one_raw_field(world: World, chain: BittensorChain) -> None:
    data = format_commitment("ef" * 32)
    block = chain.commit(world.wallets["miner"], data)
    assert chain.commitments()[world.hotkey("miner")].model_dump() == {
        "hotkey": world.hotkey("miner"), "data": data, "block": block}  # fmt: skip
    record = world.runtime.read("Commitments", "CommitmentOf", (NETUID, world.hotkey("miner")))
    assert record["info"]["fields"] == [{"Raw73": "0x" + data.encode().hex()}]
    with pytest.raises(ChainRejected) as too_long:
        chain.commit(world.wallets["miner"], "x" * 129)
    assert too_long.value.code == "chain.bad_commitment"
    assert len(extrinsics(world, "Commitments.set_commitment")) == 1


def test_missing_subnet_is_an_operator_error(world: World) -> None:
    chain = BittensorChain(99, network="test", substrate=world.backend)
    try:
        with pytest.raises(SubnetMissing):
            chain.metagraph()
    finally:
        chain.close()


def test_chain_show_reads_a_real_subnet(world: World, monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    from prism.cli import main

    monkeypatch.setattr(bt.client, "RpcSubstrate", world.backend.rpc_factory)  # the CLI builds its own client
    assert main(["chain", "show", "--chain", "bittensor", "--subtensor.network", "test", "--netuid", "11",
                 "--json"]) == 0  # fmt: skip
    state = json.loads(capsys.readouterr().out)
    assert world.backend.endpoints == ["wss://test.finney.opentensor.ai:443"]
    assert state["stake_unit"] == "alpha" and state["neurons"][1]["stake"] == pytest.approx(2020.0)
    assert state["hyperparams"]["tempo"] == 20 and state["owner_hotkey"] == world.hotkey("owner")
    assert (
        main(["chain", "show", "--chain", "bittensor", "--subtensor.network", "test", "--netuid", "11"]) == 0
    )
    text = capsys.readouterr().out
    assert "[2001:db8::1]:9000" in text and "stake in alpha" in text


@pytest.mark.parametrize(
    ("endpoint", "expected"),
    [
        ("1.2.3.4:8091", "http://1.2.3.4:8091"),
        ("[::1]:80", "http://[::1]:80"),
        ("[2001:0db8:0:0::1]:80", "http://[2001:db8::1]:80"),
        ("[::ffff:10.0.0.2]:80", "http://10.0.0.2:80"),
        (None, None),
        ("", None),
        ("0.0.0.0:8091", None),
        ("not-an-ip:80", None),
        ("1.2.3.4:0", None),
    ],
)
def test_axon_endpoint_parsing(endpoint: str | None, expected: str | None) -> None:
    axon = parse_axon_endpoint(endpoint)
    assert (axon.url if axon else None) == expected


def test_default_client_is_a_cold_subtensor(tmp_path: Path) -> None:
    # Construction must not touch the network (nothing is reachable here).
    chain = BittensorChain(NETUID, network="test")
    assert "Subtensor" in repr(chain._client) and "cold" in repr(chain._client)
    assert BittensorChain(NETUID, endpoint="ws://127.0.0.1:9944").network == "ws://127.0.0.1:9944"
    with pytest.raises(OperatorError) as unknown:
        BittensorChain(NETUID, network="moon")
    assert unknown.value.code == "config.invalid"
