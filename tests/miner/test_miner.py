"""The miner on a real LocalChain with real wallets, a real axon and a real validator dendrite."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from prism.chain.commitments import format_commitment, parse_commitment
from prism.chain.errors import NotRegistered, WalletError
from prism.chain.local import LocalChain, SubnetParams
from prism.chain.wallets import create_wallet, hotkey_ss58
from prism.errors import OperatorError
from prism.miner import (
    Miner,
    MinerConfig,
    SubmissionRejected,
    build_parser,
    config_from_args,
    pack_and_check,
    published_ip,
)
from prism.net.dendrite import Dendrite, DendriteConfig, FetchStatus
from prism.neuron_config import ChainConfig, WalletConfig

ROOT = Path(__file__).resolve().parents[2]
NETUID = 2

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


class ManualClock:
    def __init__(self) -> None:
        self.now = 5_000_000.0

    def __call__(self) -> float:
        return self.now


def write_project(root: Path, width: int = 8) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "model.py").write_text(MODEL.format(width=width))
    return root


@pytest.fixture(scope="module")
def wallet_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("wallets")
    for name in ("miner", "validator", "stranger"):
        create_wallet(name, "default", root)
    return root


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def chain(tmp_path: Path, wallet_root: Path, clock: ManualClock) -> LocalChain:
    local = LocalChain.create(
        tmp_path / "chain.db",
        SubnetParams(netuid=NETUID, commitment_rate_limit=5),
        block_time_s=1.0,
        clock=clock,
    )
    local.register_wallet(
        create_wallet("validator", "default", wallet_root), stake=100.0, validator_permit=True
    )
    local.register_wallet(create_wallet("miner", "default", wallet_root))
    return local


def miner_config(chain: LocalChain, wallet_root: Path, submission: Path, **overrides: Any) -> MinerConfig:
    fields: dict[str, Any] = {
        "netuid": NETUID,
        "wallet": WalletConfig(name="miner", hotkey="default", path=wallet_root),
        "chain": ChainConfig(kind="local", path=chain.path),
        "submission": submission,
        "axon_ip": "127.0.0.1",
        "axon_port": 0,
        "sync_interval_s": 0.2,
    }
    fields.update(overrides)
    return MinerConfig(**fields)


async def fetch_as_validator(chain: LocalChain, wallet_root: Path, miner_hotkey: str) -> Any:
    neuron = chain.metagraph().neuron(miner_hotkey)
    committed = parse_commitment(chain.commitments()[miner_hotkey].data)
    validator = create_wallet("validator", "default", wallet_root)
    async with Dendrite(validator, DendriteConfig(timeout_s=3.0, retries=0)) as dendrite:
        return await dendrite.fetch_submission(neuron, committed.sha256)


def test_flags_build_the_config(tmp_path: Path) -> None:
    args = build_parser().parse_args(
        [
            "--netuid", "9",
            "--wallet.name", "cold", "--wallet.hotkey", "hot", "--wallet.path", str(tmp_path),
            "--subtensor.network", "test", "--subtensor.chain_endpoint", "ws://10.0.0.1:9944",
            "--chain", "bittensor",
            "--submission", "examples/tiny",
            "--axon.ip", "0.0.0.0", "--axon.port", "9001", "--axon.external_ip", "203.0.113.7",
            "--min_validator_stake", "1000", "--check.smoke", "--logging.debug",
        ]
    )  # fmt: skip
    config = config_from_args(args)
    assert (config.netuid, config.wallet.name, config.wallet.hotkey, config.wallet.path) == (
        9,
        "cold",
        "hot",
        tmp_path,
    )
    assert (config.chain.kind, config.chain.network, config.chain.endpoint) == (
        "bittensor",
        "test",
        "ws://10.0.0.1:9944",
    )
    assert (config.axon_ip, config.axon_port, config.axon_external_ip) == ("0.0.0.0", 9001, "203.0.113.7")
    assert config.min_validator_stake == 1000.0 and config.smoke.enabled and args.logging_debug
    with pytest.raises(ValueError):
        MinerConfig(**{**config.model_dump(), "surprise": 1})


def test_pack_is_deterministic_and_matches_intake(tmp_path: Path) -> None:
    first = pack_and_check(write_project(tmp_path / "a"))
    second = pack_and_check(write_project(tmp_path / "b"))
    assert first.sha256 == second.sha256 == hashlib.sha256(first.zip_bytes).hexdigest()
    assert pack_and_check(write_project(tmp_path / "c", width=16)).sha256 != first.sha256


def test_miner_commits_serves_and_a_validator_fetches(
    tmp_path: Path, chain: LocalChain, wallet_root: Path
) -> None:
    project = write_project(tmp_path / "project")
    expected = pack_and_check(project).sha256

    async def scenario() -> None:
        miner = Miner(miner_config(chain, wallet_root, project), chain=chain)
        await miner.start()
        try:
            commitment = chain.commitments()[miner.hotkey]
            assert commitment.data == format_commitment(expected)
            neuron = chain.metagraph().neuron(miner.hotkey)
            assert neuron is not None and neuron.axon is not None and neuron.axon.port == miner.axon.port
            result = await fetch_as_validator(chain, wallet_root, miner.hotkey)
            assert result.status is FetchStatus.OK and result.sha256 == expected
        finally:
            await miner.stop()

    asyncio.run(scenario())


def test_changed_submission_is_recommitted_within_the_rate_limit(
    tmp_path: Path, chain: LocalChain, wallet_root: Path, clock: ManualClock
) -> None:
    project = write_project(tmp_path / "project")
    first = pack_and_check(project).sha256

    async def scenario() -> None:
        miner = Miner(miner_config(chain, wallet_root, project), chain=chain)
        await miner.start()
        try:
            clock.now += 2.0  # block 2: inside the 5-block commitment rate limit
            write_project(project, width=12)
            second = pack_and_check(project).sha256
            await miner.step()
            # Rate-limited: the chain keeps the first hash, and the axon keeps serving its bytes.
            assert parse_commitment(chain.commitments()[miner.hotkey].data).sha256 == first
            assert miner.pending is not None and miner.pending.sha256 == second
            assert (await fetch_as_validator(chain, wallet_root, miner.hotkey)).sha256 == first
            clock.now += 3.0  # block 5: the limit has passed
            await miner.step()
            assert parse_commitment(chain.commitments()[miner.hotkey].data).sha256 == second
            assert miner.pending is None
            result = await fetch_as_validator(chain, wallet_root, miner.hotkey)
            assert result.ok and result.sha256 == second
            assert [c.block for c in chain.commitment_history(miner.hotkey)] == [0, 5]
            # A rejected edit is refused, the accepted submission keeps being served.
            (project / "model.py").write_text("import socket\n")
            await miner.step()
            assert miner.served is not None and miner.served.sha256 == second and miner.pending is None
        finally:
            await miner.stop()

    asyncio.run(scenario())


def test_watch_commits_code_edits_but_not_comment_only_edits(
    tmp_path: Path, chain: LocalChain, wallet_root: Path, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="prism.miner")
    project = write_project(tmp_path / "project")
    first = pack_and_check(project)

    async def scenario() -> None:
        miner = Miner(miner_config(chain, wallet_root, project), chain=chain)
        await miner.start()
        try:
            clock.now += 10.0  # far past the commitment rate limit: any commit would land
            source = (project / "model.py").read_text()
            (project / "model.py").write_text(
                "# tuned the width below\n" + source.replace("):", "):  # note", 1)
            )
            edited = pack_and_check(project)
            assert edited.sha256 != first.sha256 and edited.code_fingerprint == first.code_fingerprint
            await miner.step()
            await miner.step()
            assert miner.pending is None and miner.served is not None and miner.served.sha256 == first.sha256
            assert len(chain.commitment_history(miner.hotkey)) == 1
            assert caplog.text.count("comments or formatting only") == 1  # said once, not every step
            write_project(project, width=12)  # a real change of the architecture code
            await miner.step()
            assert (
                parse_commitment(chain.commitments()[miner.hotkey].data).sha256
                == pack_and_check(project).sha256
            )
            assert len(chain.commitment_history(miner.hotkey)) == 2
        finally:
            await miner.stop()

    asyncio.run(scenario())


def test_restart_with_the_same_submission_does_not_recommit(
    tmp_path: Path, chain: LocalChain, wallet_root: Path, clock: ManualClock
) -> None:
    project = write_project(tmp_path / "project")

    async def run_once() -> None:
        miner = Miner(miner_config(chain, wallet_root, project), chain=chain)
        await miner.start()
        await miner.stop()

    asyncio.run(run_once())
    clock.now += 50.0  # far past the rate limit: a second commit would land if the miner tried one
    asyncio.run(run_once())
    assert len(chain.commitment_history(hotkey_ss58(create_wallet("miner", "default", wallet_root)))) == 1


def test_clear_errors_for_operator_mistakes(tmp_path: Path, chain: LocalChain, wallet_root: Path) -> None:
    project = write_project(tmp_path / "project")

    async def start(config: MinerConfig) -> None:
        miner = Miner(config, chain=chain)
        try:
            await miner.start()
        finally:
            await miner.stop()

    with pytest.raises(NotRegistered) as unregistered:
        asyncio.run(
            start(
                miner_config(
                    chain, wallet_root, project, wallet=WalletConfig(name="stranger", path=wallet_root)
                )
            )
        )
    assert unregistered.value.code == "chain.not_registered"

    with pytest.raises(WalletError):
        Miner(miner_config(chain, wallet_root, project, wallet=WalletConfig(name="nobody", path=wallet_root)))

    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        with pytest.raises(OperatorError) as in_use:
            asyncio.run(start(miner_config(chain, wallet_root, project, axon_port=busy.getsockname()[1])))
        assert in_use.value.code == "axon.port_in_use"
    finally:
        busy.close()

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "model.py").write_text("import socket\n\ndef build_model(ctx):\n    return socket\n")
    with pytest.raises(SubmissionRejected) as rejected:
        asyncio.run(start(miner_config(chain, wallet_root, bad)))
    codes = {problem["code"] for problem in rejected.value.problems}
    assert "static.forbidden_import" in codes and "static.missing_get_recipe" in codes
    assert chain.commitments() == {}  # nothing was committed for a rejected submission

    wildcard = miner_config(chain, wallet_root, project, axon_ip="0.0.0.0")
    assert published_ip(wildcard) == "127.0.0.1"  # a local chain is dialled on loopback
    real = wildcard.model_copy(update={"chain": ChainConfig(kind="bittensor")})
    with pytest.raises(OperatorError) as no_external_ip:
        published_ip(real, probe=lambda _family: "10.1.2.3")  # behind NAT: only the operator knows
    assert no_external_ip.value.code == "config.invalid"
    assert published_ip(real, probe=lambda _family: "1.2.3.4") == "1.2.3.4"  # detected public address


def test_miner_process_serves_until_sigterm(tmp_path: Path, chain: LocalChain, wallet_root: Path) -> None:
    project = write_project(tmp_path / "project")
    miner_hotkey = hotkey_ss58(create_wallet("miner", "default", wallet_root))
    real_chain = LocalChain(chain.path, NETUID)  # the process uses wall time; so does this reader
    argv = [
        sys.executable, str(ROOT / "neurons" / "miner.py"),
        "--netuid", str(NETUID), "--wallet.name", "miner", "--wallet.path", str(wallet_root),
        "--chain", "local", "--chain.path", str(chain.path),
        "--submission", str(project), "--axon.ip", "127.0.0.1", "--axon.port", "0", "--sync_interval", "0.5",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 60
        while miner_hotkey not in real_chain.commitments():
            assert process.poll() is None, process.stdout.read().decode() if process.stdout else ""
            assert time.monotonic() < deadline, "the miner never committed"
            time.sleep(0.2)
        result = asyncio.run(fetch_as_validator(real_chain, wallet_root, miner_hotkey))
        assert result.ok, result.message
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, output.decode()
    assert b"miner stopped" in output
