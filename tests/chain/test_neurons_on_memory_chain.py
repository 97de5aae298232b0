"""The real entry points, ``neurons/validator.py`` and ``neurons/miner.py``, on a subnet of the
in-memory chain, through the real bittensor SDK.

Each neuron runs in its own process, unmodified, under ``memory_chain_run.py``, which only swaps
the RPC backend class bittensor's ``Client`` builds for ``MemorySubstrate``. The chain's head
advances with wall time (10 blocks a second); every extrinsic and injected fault is journaled,
which is what these tests watch.
"""

from __future__ import annotations

import asyncio
import importlib
import ipaddress
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from prism.chain.base import AxonInfo, Neuron
from prism.chain.commitments import format_commitment
from prism.chain.wallets import coldkey_ss58, create_wallet, hotkey_ss58
from prism.miner import pack_and_check
from prism.net.dendrite import Dendrite, DendriteConfig

ROOT = Path(__file__).resolve().parents[2]
RUNNER = Path(__file__).with_name("memory_chain_run.py")
TINY_PROFILE = ROOT / "tests" / "validator" / "tiny_profile.yaml"
NETUID = 11
TEMPO = 10

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
    for name in ("owner", "validator", "miner", "stranger"):
        create_wallet(name, "default", root)
    return root


def scenario(wallet_root: Path, *, hyperparams: dict[str, Any] | None = None, faults: list[dict] | None = None,
             miner_axon: list[Any] | None = None, commitments: list[dict] | None = None) -> dict[str, Any]:  # fmt: skip
    keys = {name: create_wallet(name, "default", wallet_root) for name in ("owner", "validator", "miner")}
    hot = {name: hotkey_ss58(wallet) for name, wallet in keys.items()}
    cold = {name: coldkey_ss58(wallet) for name, wallet in keys.items()}
    return {
        "start_block": 1000,
        "block_time_s": 0.1,
        "slot_ms": 100,
        "subnets": [{"netuid": NETUID, "tempo": TEMPO, "owner_hotkey": hot["owner"], "owner_coldkey": cold["owner"],
                     "hyperparams": {"WeightsSetRateLimit": 2, "ServingRateLimit": 5, **(hyperparams or {})}}],
        "neurons": [
            {"netuid": NETUID, "hotkey": hot["owner"], "coldkey": cold["owner"], "alpha": 10.0},
            {"netuid": NETUID, "hotkey": hot["validator"], "coldkey": cold["validator"], "alpha": 5000.0,
             "permit": True, "last_update": 0},
            {"netuid": NETUID, "hotkey": hot["miner"], "coldkey": cold["miner"], "alpha": 1.0, "axon": miner_axon},
        ],
        "funds": {cold[name]: 1.0 for name in cold},
        "commitments": commitments or [],
        "faults": faults or [],
    }  # fmt: skip


def chain_flags(wallet_root: Path, name: str) -> list[str]:
    return ["--netuid", str(NETUID), "--chain", "bittensor", "--subtensor.network", "test",
            "--wallet.name", name, "--wallet.path", str(wallet_root)]  # fmt: skip


def launch(
    tmp_path: Path, world: dict[str, Any], script: str, args: list[str]
) -> tuple[subprocess.Popen, Path, Path]:
    scenario_path, journal, log = (
        tmp_path / "scenario.json",
        tmp_path / "journal.jsonl",
        tmp_path / "neuron.log",
    )
    scenario_path.write_text(json.dumps(world))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "BTCLI_TOKEN_SYMBOLS_CACHE": str(tmp_path / "symbols.json"),
           "WANDB_MODE": "disabled"}  # fmt: skip
    with log.open("wb") as handle:
        process = subprocess.Popen([sys.executable, str(RUNNER), str(scenario_path), str(journal),
                                    str(ROOT / "neurons" / script), *args],
                                   stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=ROOT)  # fmt: skip
    return process, journal, log


def journal_entries(journal: Path) -> list[dict[str, Any]]:
    if not journal.exists():
        return []
    return [json.loads(line) for line in journal.read_text().splitlines() if line.strip()]


def wait_for(
    predicate: Any, process: subprocess.Popen, log: Path, what: str, timeout_s: float = 60.0
) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert process.poll() is None, (
            f"the neuron exited ({process.returncode}) waiting for {what}\n{log.read_text()}"
        )
        assert time.monotonic() < deadline, f"timed out waiting for {what}\n{log.read_text()[-4000:]}"
        time.sleep(0.1)


def weight_extrinsics(journal: Path) -> list[dict[str, Any]]:
    return [e for e in journal_entries(journal) if "weights" in e.get("call", "")]


def run_validator(
    tmp_path: Path, wallet_root: Path, world: dict[str, Any], steps: int
) -> tuple[int, Path, str]:
    args = [*chain_flags(wallet_root, "validator"), "--neuron.state_dir", str(tmp_path / "state"),
            "--profile", str(TINY_PROFILE), "--loop_interval", "0.2", "--max_steps", str(steps), "--wandb.off",
            "--chain.read_timeout", "0.5"]  # fmt: skip
    process, journal, log = launch(tmp_path, world, "validator.py", args)
    try:
        process.wait(timeout=180)
    finally:
        if process.poll() is None:
            process.kill()
    return process.returncode, journal, log.read_text()


@pytest.mark.slow
def test_validator_syncs_sets_weights_backs_off_and_survives_rpc_trouble(
    tmp_path: Path, wallet_root: Path
) -> None:
    faults = [
        {"where": "submit:set_mechanism_weights", "kind": "dispatch", "name": "IncorrectWeightVersionKey"},
        {"where": "runtime_call:get_metagraph", "kind": "rpc_timeout"},  # the start-up registration check
        {"where": "runtime_call:get_metagraph", "kind": "rpc_timeout", "skip": 3},
        {"where": "query_map:CommitmentOf", "kind": "hang", "seconds": 2.0, "skip": 5},
    ]
    miner_commitment = [{"netuid": NETUID, "hotkey": hotkey_ss58(create_wallet("miner", "default", wallet_root)),
                         "text": format_commitment("ab" * 32), "block": 990}]  # fmt: skip
    rc, journal, log = run_validator(tmp_path, wallet_root, scenario(wallet_root, faults=faults,
                                                                     commitments=miner_commitment), steps=30)  # fmt: skip
    assert rc == 0, log
    sent = weight_extrinsics(journal)
    assert sent and sent[0]["error"] == "IncorrectWeightVersionKey" and not sent[0]["success"]
    assert "rejected by the chain" in log and "backing off until block" in log
    successes = [e for e in sent if e["success"]]
    assert successes, log
    assert successes[0]["block"] - sent[0]["block"] >= TEMPO  # no fee-paying retry inside the tempo
    assert all(b["block"] - a["block"] >= TEMPO for a, b in itertools.pairwise(successes))
    owner_uid = 0  # nothing qualifies: the burn rule puts the weight on the subnet owner's uid
    assert all(e["call"] == "SubtensorModule.set_mechanism_weights" and e["params"]["dests"] == [owner_uid]
               for e in sent)  # fmt: skip
    faulted = {e["fault"] for e in journal_entries(journal) if "fault" in e}
    assert {"runtime_call:get_metagraph", "query_map:CommitmentOf"} <= faulted
    assert "cannot check the registration now" in log
    assert "chain sync failed" in log and "timed out without a response" in log and "within 0.5 s" in log
    status = json.loads((tmp_path / "state" / "status.json").read_text())
    assert status["step"] == 30 and status["last_weights"] == {"0": 1.0}


@pytest.mark.slow
def test_validator_commits_weights_on_a_commit_reveal_subnet(tmp_path: Path, wallet_root: Path) -> None:
    world = scenario(
        wallet_root, hyperparams={"CommitRevealWeightsEnabled": True, "WeightsVersionKey": 777_777}
    )
    rc, journal, log = run_validator(tmp_path, wallet_root, world, steps=4)
    assert rc == 0, log
    sent = weight_extrinsics(journal)
    assert sent and all(e["call"] == "SubtensorModule.commit_timelocked_mechanism_weights" for e in sent)
    assert sent[0]["success"] and sent[0]["params"]["reveal_round"] > 0
    assert "commit-reveal" in log and "upgrade PRISM" in log  # the subnet's version key is above ours


async def _fetch(wallet_root: Path, miner_hotkey: str, endpoint: dict[str, Any], sha256: str) -> Any:
    ip = str(ipaddress.ip_address(endpoint["ip"]))
    neuron = Neuron(uid=2, hotkey=miner_hotkey, coldkey="-", stake=1.0, validator_permit=False,
                    axon=AxonInfo(ip=ip, port=endpoint["port"]))  # fmt: skip
    async with Dendrite(
        create_wallet("validator", "default", wallet_root), DendriteConfig(timeout_s=5)
    ) as dendrite:
        return await dendrite.fetch_submission(neuron, sha256)


def serve_extrinsics(journal: Path) -> list[dict[str, Any]]:
    return [e for e in journal_entries(journal) if e.get("call") == "SubtensorModule.serve_axon"]


def commitments_sent(journal: Path) -> list[dict[str, Any]]:
    return [
        e for e in journal_entries(journal) if e.get("call") == "Commitments.set_commitment" and e["success"]
    ]


def committed_text(entry: dict[str, Any]) -> str:
    (field,) = entry["params"]["info"]["fields"]
    return bytes.fromhex(next(iter(field.values()))[2:]).decode()


def test_miner_serves_commits_recommits_and_survives_transient_errors(
    tmp_path: Path, wallet_root: Path
) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "model.py").write_text(MODEL.format(width=8))
    first = pack_and_check(project).sha256
    faults = [{"where": "submit:set_commitment", "kind": "rpc_timeout"}]  # the first commit attempt is lost
    # The chain holds an old endpoint from the registration block: re-publishing hits the serving rate limit.
    # 60 blocks (6 s): the miner's start-up on a loaded machine must not outlast the window.
    world = scenario(
        wallet_root, faults=faults, miner_axon=["10.0.0.2", 8091], hyperparams={"ServingRateLimit": 60}
    )
    args = [*chain_flags(wallet_root, "miner"), "--submission", str(project), "--axon.ip", "127.0.0.1",
            "--axon.port", "0", "--sync_interval", "0.3"]  # fmt: skip
    process, journal, log = launch(tmp_path, world, "miner.py", args)
    hotkey = hotkey_ss58(create_wallet("miner", "default", wallet_root))
    try:
        wait_for(
            lambda: any(e["success"] for e in serve_extrinsics(journal)) and commitments_sent(journal),
            process,
            log,
            "serve+commit",
        )
        # Refused first (the serving rate limit), retried after the window.
        assert serve_extrinsics(journal)[0]["error"] == "ServingRateLimitExceeded"
        assert committed_text(commitments_sent(journal)[0]) == format_commitment(first)
        endpoint = next(e for e in serve_extrinsics(journal) if e["success"])["params"]
        result = asyncio.run(_fetch(wallet_root, hotkey, endpoint, first))
        assert result.ok and result.sha256 == first
        # A comment-only edit is not committed; a code change is, and then served.
        (project / "model.py").write_text("# a note\n" + MODEL.format(width=8))
        time.sleep(1.5)
        assert len(commitments_sent(journal)) == 1
        (project / "model.py").write_text(MODEL.format(width=12))
        second = pack_and_check(project).sha256
        wait_for(lambda: len(commitments_sent(journal)) == 2, process, log, "the second commitment")
        assert committed_text(commitments_sent(journal)[1]) == format_commitment(second)
        wait_for(
            lambda: asyncio.run(_fetch(wallet_root, hotkey, endpoint, second)).ok, process, log, "new ZIP"
        )
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    text = log.read_text()
    assert process.returncode == 0, text
    assert "miner stopped" in text and "comments or formatting only" in text
    assert any(e.get("fault") == "submit:set_commitment" for e in journal_entries(journal))


def test_validator_refuses_to_start_with_an_unregistered_hotkey(tmp_path: Path, wallet_root: Path) -> None:
    args = [*chain_flags(wallet_root, "stranger"), "--neuron.state_dir", str(tmp_path / "state"),
            "--profile", str(TINY_PROFILE), "--wandb.off"]  # fmt: skip
    process, journal, log = launch(tmp_path, scenario(wallet_root), "validator.py", args)
    assert process.wait(timeout=120) == 1
    assert "is not registered on subnet 11" in log.read_text() and journal_entries(journal) == []


def test_miner_refuses_to_start_with_an_unregistered_hotkey(tmp_path: Path, wallet_root: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "model.py").write_text(MODEL.format(width=8))
    args = [*chain_flags(wallet_root, "stranger"), "--submission", str(project), "--axon.ip", "127.0.0.1"]
    process, journal, log = launch(tmp_path, scenario(wallet_root), "miner.py", args)
    assert process.wait(timeout=120) == 1
    assert "is not registered on subnet 11" in log.read_text() and journal_entries(journal) == []


@pytest.mark.parametrize("script", ["miner.py", "validator.py"])
def test_help_shows_every_default(script: str) -> None:
    out = subprocess.run([sys.executable, str(ROOT / "neurons" / script), "--help"], capture_output=True,
                         text=True, timeout=120, cwd=ROOT)  # fmt: skip
    assert out.returncode == 0, out.stderr
    text = "".join(out.stdout.split())  # argparse wraps lines (and words at hyphens)
    module = "prism.miner" if script == "miner.py" else "prism.validator"
    parser = importlib.import_module(module)
    build = parser.build_parser if script == "miner.py" else parser.build_arg_parser
    for action in build()._actions:
        if action.dest == "help":
            continue
        flag = action.option_strings[0]
        assert flag in text
        if not action.required:
            assert f"(default:{action.default})".replace(" ", "") in text, f"{flag} shows no default"
