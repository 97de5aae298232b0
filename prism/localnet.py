"""``prism localnet``: the whole subnet on one machine, offline.

It creates passwordless wallets, an embedded chain with one subnet, registers a validator and
three miners, prepares the offline corpus, starts every neuron as its own process (the same
entry points a real deployment runs), waits until the validator has evaluated every submission
and set weights on chain, then prints the leaderboard, the weights and the incentives. Every
process it started is stopped on exit, on error and on Ctrl-C (unless ``--keep-running``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from rich.console import Console
from rich.table import Table

from prism.errors import InfrastructureFault, OperatorError
from prism.validator.status import ValidatorStatus, read_status

logger = logging.getLogger(__name__)

EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "examples"
VALIDATOR_STAKE = 1000.0
MINER_STAKE = 1.0


class MinerSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    submission: Path


def default_miners() -> tuple[MinerSpec, ...]:
    """Two architecture families and one training variant of the first family."""
    return (
        MinerSpec(name="miner-gpt", submission=EXAMPLES_DIR / "gpt"),
        MinerSpec(name="miner-mixer", submission=EXAMPLES_DIR / "mixer"),
        MinerSpec(name="miner-gpt-recipe", submission=EXAMPLES_DIR / "gpt_recipe"),
    )


class LocalnetConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    root: Path
    netuid: int = Field(default=1, ge=0)
    profile: str = "local_cpu_smoke"
    block_time_s: float = Field(default=1.0, gt=0)
    tempo: int = Field(default=20, ge=1)
    weights_rate_limit: int = Field(default=5, ge=0)
    commitment_rate_limit: int = Field(default=5, ge=0)
    timeout_s: float = Field(default=840.0, gt=0, description="give up waiting for the validator after this")
    keep_running: bool = False
    fresh: bool = Field(default=True, description="wipe chain and validator state from a previous run")
    workers: int = Field(
        default=1, ge=1, description="runs the validator evaluates at once (--evaluation.workers)"
    )
    miners: tuple[MinerSpec, ...] = Field(default_factory=default_miners)


@dataclass
class Neuron:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _check_examples(config: LocalnetConfig) -> None:
    missing = [str(m.submission) for m in config.miners if not m.submission.exists()]
    if missing:
        raise OperatorError(
            f"localnet needs the example submissions, missing: {', '.join(missing)} "
            "(run from a checkout of the PRISM repository)",
            code="localnet.examples_missing",
        )


def _reset(root: Path) -> None:
    """Forget a previous run's chain and validator state (wallets and data are kept)."""
    import shutil

    for name in ("chain.sqlite3", "chain.sqlite3-wal", "chain.sqlite3-shm"):
        (root / name).unlink(missing_ok=True)
    shutil.rmtree(root / "validator", ignore_errors=True)


def setup_chain(config: LocalnetConfig) -> tuple[Path, dict[str, Any]]:
    """Wallets, chain, subnet and registrations. Returns the chain path and the wallets by name."""
    from prism.chain.local import LocalChain, SubnetParams
    from prism.chain.wallets import create_wallet

    wallets_dir = config.root / "wallets"
    chain_path = config.root / "chain.sqlite3"
    params = SubnetParams(
        netuid=config.netuid,
        tempo=config.tempo,
        weights_rate_limit=config.weights_rate_limit,
        commitment_rate_limit=config.commitment_rate_limit,
    )
    chain = LocalChain.create(chain_path, params, block_time_s=config.block_time_s, exist_ok=True)
    wallets: dict[str, Any] = {"validator": create_wallet("validator", "default", wallets_dir)}
    chain.register_wallet(wallets["validator"], stake=VALIDATOR_STAKE, validator_permit=True)
    for miner in config.miners:
        wallets[miner.name] = create_wallet(miner.name, "default", wallets_dir)
        chain.register_wallet(wallets[miner.name], stake=MINER_STAKE, validator_permit=False)
    chain.close()
    return chain_path, wallets


def _spawn(name: str, argv: list[str], logs_dir: Path) -> Neuron:
    logs_dir.mkdir(parents=True, exist_ok=True)
    log_path = logs_dir / f"{name}.log"
    handle = log_path.open("wb")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "WANDB_MODE": "offline"}
    process = subprocess.Popen(argv, stdout=handle, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    handle.close()
    logger.info("started %s (pid %d), log %s", name, process.pid, log_path)
    return Neuron(name=name, process=process, log_path=log_path)


def _common_flags(config: LocalnetConfig, chain_path: Path, wallet_name: str) -> list[str]:
    return [
        "--netuid", str(config.netuid),
        "--wallet.name", wallet_name,
        "--wallet.hotkey", "default",
        "--wallet.path", str(config.root / "wallets"),
        "--chain", "local",
        "--chain.path", str(chain_path),
    ]  # fmt: skip


def start_miners(
    config: LocalnetConfig, chain_path: Path, wallets: dict[str, Any], neurons: list[Neuron]
) -> None:
    """One miner at a time, in the configured order, each once the previous one's commitment
    landed: the demo's submission order (and so who leads, who is screened against whom, and
    which family a training variant finds) is the same on every run. Architecture miners come
    first: a ``training_for_arch`` committed before its family exists is refused by scoring
    (``training.unknown_target``).
    """
    from prism.submission import load_submission

    variants = {m.name for m in config.miners if load_submission(m.submission).kind == "training_for_arch"}
    ordered = [m for m in config.miners if m.name not in variants] + [m for m in config.miners if m.name in variants]
    # Appended one by one so the caller can stop whatever started if a later step fails.
    for miner in ordered:
        neurons.append(_start_miner(config, chain_path, miner))
        _wait_for_commitments(config, chain_path, [wallets[miner.name]], neurons)


def _start_miner(config: LocalnetConfig, chain_path: Path, miner: MinerSpec) -> Neuron:
    argv = [
        sys.executable, "-m", "prism.miner",
        *_common_flags(config, chain_path, miner.name),
        "--submission", str(miner.submission),
        "--axon.ip", "127.0.0.1",
        "--axon.port", str(free_port()),
    ]  # fmt: skip
    return _spawn(miner.name, argv, config.root / "logs")


def _wait_for_commitments(
    config: LocalnetConfig,
    chain_path: Path,
    wallets: list[Any],
    neurons: list[Neuron],
    timeout_s: float = 120.0,
) -> None:
    from prism.chain.local import LocalChain
    from prism.chain.wallets import hotkey_ss58

    hotkeys = {hotkey_ss58(w) for w in wallets}
    chain = LocalChain(chain_path, config.netuid)
    deadline = time.monotonic() + timeout_s
    try:
        while not hotkeys <= set(chain.commitments()):
            _check_alive(neurons)
            if time.monotonic() > deadline:
                raise InfrastructureFault(
                    f"miners did not commit within {timeout_s:.0f} s; see {config.root / 'logs'}",
                    code="localnet.timeout",
                )
            time.sleep(0.5)
    finally:
        chain.close()


def _check_alive(neurons: list[Neuron]) -> None:
    for neuron in neurons:
        if neuron.process.poll() is not None:
            raise InfrastructureFault(
                f"{neuron.name} exited with code {neuron.process.returncode}; see {neuron.log_path}",
                code="localnet.neuron_exited",
            )


def start_validator(config: LocalnetConfig, chain_path: Path, data_dir: Path) -> Neuron:
    argv = [
        sys.executable, "-m", "prism.validator",
        *_common_flags(config, chain_path, "validator"),
        "--neuron.state_dir", str(config.root / "validator"),
        "--profile", config.profile,
        "--data", str(data_dir),
        "--scoring.waive", "profile.not_official",
        "--loop_interval", "2",
        "--evaluation.workers", str(config.workers),
        "--wandb.off",
    ]  # fmt: skip
    return _spawn("validator", argv, config.root / "logs")


def _finished(status: ValidatorStatus | None, expected_submissions: int) -> bool:
    """Every submission evaluated, no run or re-measurement pending, weights set after the last result."""
    if status is None or status.submissions < expected_submissions or status.pending_runs:
        return False
    if status.pending_paired:  # with pending_runs, this covers everything the pool holds
        return False
    return status.weights_current and status.last_weights_block is not None


def wait_for_validator(config: LocalnetConfig, neurons: list[Neuron], console: Console) -> ValidatorStatus:
    state_dir = config.root / "validator"
    deadline = time.monotonic() + config.timeout_s
    with console.status("waiting for the validator...") as spinner:
        while time.monotonic() < deadline:
            _check_alive(neurons)
            status = read_status(state_dir)
            if status is not None:
                spinner.update(
                    f"block {status.block}: {status.submissions}/{len(config.miners)} submissions, runs {status.runs}, "
                    f"{len(status.evaluation.in_flight)} in flight, last weights at block {status.last_weights_block}"
                )
            if status is not None and _finished(status, len(config.miners)):
                return status
            time.sleep(1.0)
    raise InfrastructureFault(
        f"the validator did not finish within {config.timeout_s:.0f} s; see {config.root / 'logs'}",
        code="localnet.timeout",
    )


def stop_all(neurons: list[Neuron], *, grace_s: float = 15.0) -> None:
    """SIGTERM every neuron's process group, then SIGKILL what is left after ``grace_s``.

    A second Ctrl-C during cleanup is ignored so that every neuron is stopped.
    """
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        for neuron in neurons:
            _signal_group(neuron, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for neuron in neurons:
            try:
                neuron.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(neuron, signal.SIGKILL)
                neuron.process.wait()
    finally:
        signal.signal(signal.SIGINT, previous)


def _signal_group(neuron: Neuron, sig: int) -> None:
    if neuron.process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(neuron.process.pid, sig)


def _raise_on_sigterm() -> None:
    """``kill`` / a CI timeout stops localnet like Ctrl-C does, so the cleanup still runs."""

    def _handler(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _handler)


def report(
    config: LocalnetConfig, chain_path: Path, wallets: dict[str, Any], console: Console
) -> dict[str, Any]:
    """Leaderboard from the validator's store, weights and incentives from the chain."""
    from prism.chain.local import LocalChain
    from prism.chain.wallets import hotkey_ss58
    from prism.commands.leaderboard import render_leaderboard
    from prism.store import DB_FILENAME, Store

    with Store.open(config.root / "validator" / DB_FILENAME) as store:
        render_leaderboard(store, console)
    chain = LocalChain(chain_path, config.netuid)
    try:
        graph = chain.metagraph()
        incentives = chain.incentives()
        weight_sets = chain.weights()
    finally:
        chain.close()
    names = {hotkey_ss58(w): name for name, w in wallets.items()}
    validator_hotkey = hotkey_ss58(wallets["validator"])
    weights = weight_sets[validator_hotkey].weights if validator_hotkey in weight_sets else {}
    table = Table(title=f"On chain (netuid {config.netuid}, block {graph.block})")
    for column in ("uid", "neuron", "hotkey", "weight from validator", "incentive"):
        table.add_column(column)
    for neuron in graph.neurons:
        table.add_row(
            str(neuron.uid),
            names.get(neuron.hotkey, "?"),
            neuron.hotkey[:16] + "...",
            f"{weights.get(neuron.uid, 0.0):.4f}",
            f"{incentives.get(neuron.uid, 0.0):.4f}",
        )
    console.print(table)
    runs_dir = config.root / "validator" / "runs"
    console.print(
        f"run manifests and plots: {runs_dir}/<run_id>/ (prism_run_manifest.v1.json, loss_curve.svg)"
    )
    console.print(f"logs: {config.root / 'logs'}")
    return {
        "weights": {names.get(n.hotkey, n.hotkey): weights.get(n.uid, 0.0) for n in graph.neurons},
        "incentives": {names.get(n.hotkey, n.hotkey): incentives.get(n.uid, 0.0) for n in graph.neurons},
        "runs_dir": str(runs_dir),
    }


def _evaluation_summary(status: ValidatorStatus, config: LocalnetConfig, console: Console) -> dict[str, Any]:
    """How the validator spent its time: runs, their mean length, concurrency, first weights."""
    ev = status.evaluation
    mean = f"{ev.mean_run_s:.0f} s" if ev.mean_run_s is not None else "-"
    first = f"{status.seconds_to_first_weights:.0f} s" if status.seconds_to_first_weights is not None else "-"
    console.print(
        f"evaluation: {ev.finished_runs} runs on {ev.slots} {ev.backend} slot(s), mean {mean} each, "
        f"at most {ev.max_concurrent} at once; first weights {first} after start; runs {status.runs}"
    )
    console.print(f"browse the leaderboard: prism serve --db {config.root / 'validator'}")
    return ev.model_dump(mode="json") | {
        "seconds_to_first_weights": status.seconds_to_first_weights,
        "runs": status.runs,
    }


def run_localnet(config: LocalnetConfig, console: Console | None = None) -> dict[str, Any]:
    """Run the whole demo; returns what it printed as data (for tests and --json)."""
    from prism.data import ensure_offline_corpus
    from prism.profiles import load_profile

    console = console or Console()
    _check_examples(config)
    config.root.mkdir(parents=True, exist_ok=True)
    if config.fresh:
        _reset(config.root)
    profile = load_profile(config.profile)
    console.print(f"[bold]PRISM localnet[/bold] in {config.root} (profile {profile.key})")
    chain_path, wallets = setup_chain(config)
    console.print("preparing the offline corpus (docstrings of installed packages; not FineWeb-Edu)...")
    data_dir = config.root / "data" / f"offline-{profile.tokenizer}"
    ensure_offline_corpus(data_dir, tokenizer=profile.tokenizer)
    neurons: list[Neuron] = []
    _raise_on_sigterm()
    try:
        start_miners(config, chain_path, wallets, neurons)
        neurons.append(start_validator(config, chain_path, data_dir))
        status = wait_for_validator(config, neurons, console)
        summary = report(config, chain_path, wallets, console) | {
            "evaluation": _evaluation_summary(status, config, console)
        }
        if config.keep_running:
            console.print("all neurons keep running; press Ctrl-C to stop them")
            while True:
                _check_alive(neurons)  # a neuron that dies is an error, not a quiet exit
                time.sleep(1.0)
        return summary
    finally:
        stop_all(neurons)
