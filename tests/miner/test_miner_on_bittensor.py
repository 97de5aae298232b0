"""The miner on BittensorChain through the real bittensor SDK, its Substrate backend in memory.

Real wallets, a real axon on 127.0.0.1, a real validator dendrite; the chain answers and fails
the way a subtensor node does (tests/chain/memory_substrate.py).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from memory_faults import Fault
from memory_world import WALLET_NAMES, World, build_world

from prism.chain.base import AxonInfo
from prism.chain.wallets import create_wallet
from prism.miner import Miner, MinerConfig, pack_and_check
from prism.net.dendrite import Dendrite, DendriteConfig
from prism.neuron_config import ChainConfig, WalletConfig

MODEL = """
import torch

from prism_challenge.evaluator.interface import TrainingRecipe


class Tiny(torch.nn.Module):
    def __init__(self, vocab_size):
        super().__init__()
        self.emb = torch.nn.Embedding(vocab_size, {width})
        self.out = torch.nn.Linear({width}, vocab_size)

    def forward(self, tokens):
        return self.out(self.emb(tokens))


def build_model(ctx):
    return Tiny(ctx.vocab_size)


def get_recipe(ctx):
    return TrainingRecipe(learning_rate=1e-3, batch_size=2)
"""


@pytest.fixture(scope="module")
def wallet_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("wallets")
    for name in WALLET_NAMES:
        create_wallet(name, "default", root)
    return root


@pytest.fixture
def world(wallet_root: Path) -> World:
    return build_world({name: create_wallet(name, "default", wallet_root) for name in WALLET_NAMES})


def write_project(root: Path, width: int = 8) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "model.py").write_text(MODEL.format(width=width))
    return root


def make_miner(
    world: World, wallet_root: Path, project: Path, name: str = "miner", **overrides: Any
) -> Miner:
    timeouts = {key: overrides.pop(key) for key in ("read_timeout_s", "write_timeout_s") if key in overrides}
    config = MinerConfig(netuid=11, wallet=WalletConfig(name=name, path=wallet_root),
                         chain=ChainConfig(kind="bittensor", network="test"), submission=project,
                         axon_ip="127.0.0.1", axon_port=0, sync_interval_s=0.2, **overrides)  # fmt: skip
    return Miner(config, chain=world.chain(**timeouts), wallet=world.wallets[name])


def calls(world: World, call: str) -> list[dict[str, Any]]:
    return [e for e in world.backend.extrinsics if e.get("call") == call]


async def fetch(world: World, miner: Miner, caller: str) -> Any:
    assert miner.axon is not None and miner.axon.port is not None
    neuron = miner.chain.metagraph().neuron(miner.hotkey)
    local = neuron.model_copy(update={"axon": AxonInfo(ip="127.0.0.1", port=miner.axon.port)})
    async with Dendrite(world.wallets[caller], DendriteConfig(timeout_s=3.0, retries=0)) as dendrite:
        return await dendrite.fetch_submission(local, miner.committed_sha256 or "")


def test_an_ipv6_endpoint_in_another_text_form_is_not_published_again(
    world: World, wallet_root: Path, tmp_path: Path
) -> None:
    project = write_project(tmp_path / "project")

    async def scenario() -> None:
        # The chain holds [2001:db8::1]:9000 for v6; the operator writes the same address differently.
        miner = make_miner(world, wallet_root, project, name="v6", axon_external_ip="2001:0db8:0000::0001",
                           axon_external_port=9000)  # fmt: skip
        await miner.start()
        try:
            assert not miner.endpoint_pending and miner.committed_sha256 == pack_and_check(project).sha256
        finally:
            await miner.stop()
            miner.chain.close()

    asyncio.run(scenario())
    assert calls(world, "SubtensorModule.serve_axon") == []  # no fee, no serving rate limit hit
    assert [c["success"] for c in calls(world, "Commitments.set_commitment")] == [True]


def test_transient_chain_errors_at_start_do_not_stop_the_miner(
    world: World, wallet_root: Path, tmp_path: Path
) -> None:
    project = write_project(tmp_path / "project")
    # The commit times out, but lands after the miner stopped waiting.
    world.backend.inject(Fault(where="submit:set_commitment", kind="hang", seconds=0.6, land="after"))

    async def scenario() -> None:
        miner = make_miner(world, wallet_root, project, axon_external_ip="10.0.0.9", write_timeout_s=0.3,
                           min_validator_stake=40.0)  # fmt: skip
        await miner.start()  # serve refused in block 1001 (rate limit), commit timed out
        try:
            assert miner.endpoint_pending and miner.retry_after_block["serve_axon"] == 1001 + 50
            assert miner.pending is not None and miner.served is not None  # serving already
            await asyncio.sleep(0.8)  # the commit lands
            await miner.step()
            assert miner.pending is None and miner.committed_sha256 == pack_and_check(project).sha256
            # Served to a permit holder, and to a permitless caller with >= 40 alpha (the owner has 50).
            assert (await fetch(world, miner, "validator")).ok and (await fetch(world, miner, "owner")).ok
            refused = await fetch(world, miner, "v6")  # no permit, 0 alpha
            assert refused.status == "refused"
            await miner.step()
            assert len(calls(world, "SubtensorModule.serve_axon")) == 1  # not retried inside the window
            world.runtime.clock.advance(50)
            await miner.step()
            assert not miner.endpoint_pending
        finally:
            await miner.stop()
            miner.chain.close()

    asyncio.run(scenario())
    assert [c["success"] for c in calls(world, "SubtensorModule.serve_axon")] == [False, True]
    assert calls(world, "SubtensorModule.serve_axon")[0]["error"] == "ServingRateLimitExceeded"
    assert [c["success"] for c in calls(world, "Commitments.set_commitment")] == [True]  # never sent twice


def test_a_used_up_commitment_quota_waits_for_the_next_epoch(
    world: World, wallet_root: Path, tmp_path: Path
) -> None:
    world.runtime.write("Commitments", "MaxSpace", (), 150)  # one commitment per epoch (tempo 20)
    project = write_project(tmp_path / "project")

    async def scenario() -> None:
        miner = make_miner(world, wallet_root, project, axon_external_ip="10.0.0.2", axon_external_port=8091)
        await miner.start()
        try:
            write_project(project, width=12)
            await miner.step()  # SpaceLimitExceeded: wait a tempo
            assert miner.pending is not None and miner.retry_after_block["commit"] == 1002 + 20
            for _ in range(3):
                world.runtime.clock.advance(5)
                await miner.step()
            world.runtime.clock.advance(5)
            await miner.step()
            assert miner.pending is None and miner.committed_sha256 == pack_and_check(project).sha256
        finally:
            await miner.stop()
            miner.chain.close()

    asyncio.run(scenario())
    commits = calls(world, "Commitments.set_commitment")
    assert [(c["success"], c["error"]) for c in commits] == [
        (True, None),
        (False, "SpaceLimitExceeded"),
        (True, None),
    ]


def test_an_rpc_timeout_while_recommitting_is_retried(
    world: World, wallet_root: Path, tmp_path: Path
) -> None:
    project = write_project(tmp_path / "project")

    async def scenario() -> None:
        miner = make_miner(world, wallet_root, project, axon_external_ip="10.0.0.2", axon_external_port=8091)
        await miner.start()
        try:
            world.runtime.clock.advance(25)  # a new epoch: quota for another commitment
            world.backend.inject(Fault(where="query_map:CommitmentOf", kind="rpc_timeout"))
            write_project(project, width=16)
            await miner.step()
            assert miner.pending is not None  # the read before the commit failed: nothing sent
            await miner.step()
            assert miner.pending is None and miner.served.sha256 == pack_and_check(project).sha256
        finally:
            await miner.stop()
            miner.chain.close()

    asyncio.run(scenario())
    assert len(calls(world, "Commitments.set_commitment")) == 2
