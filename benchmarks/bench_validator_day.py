"""A validator's day on this machine: the real validator loop over a population of submissions.

For each worker count W in ``--workers`` (default 1,2), against a fresh embedded chain and a
fresh state directory: N miner hotkeys and a validator are registered, every submission ZIP is
placed in the validator's store beforehand (``Store.put_blob``), the validator
(``python -m prism.validator --evaluation.workers W``) is started, and the miners' commitments
arrive over the first part of the run, one every ``--commit-interval`` seconds, through the
chain's commit API. There are no miner processes: a committed hash whose ZIP the store already
holds is admitted as a local copy without a download (``register_copies``), so this measures
evaluation, scoring and weights, not the network (the fetch path is tested in tests/validator).

Reported per W: seconds until every run is done, finished runs, runs per hour, mean run
seconds, the most runs in flight at once, seconds to the first weights, and whether weights
were set every tempo while runs were in flight (the chain's weight-set history against the
blocks at which the status file showed runs in flight). Then the throughput ratio of the
largest W to W=1, and what screening would save on this population at gpu_proxy_eval
(``validator_day_population.screening_savings``: an estimate, no GPU was lent).

    python benchmarks/bench_validator_day.py [--submissions 64] [--workers 1,2]
        [--profile local_cpu_smoke | tests/validator/tiny_profile.yaml] [--write-docs]

Prints one JSON object. ``--write-docs`` replaces the marked section of docs/validator.md.
The default (64 submissions, smoke profile, W=1 and 2) takes about 1.5-2 hours on 2 cores.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from validator_day_population import Entry, build_population, screening_savings

from prism.chain.commitments import format_commitment
from prism.chain.local import LocalChain, SubnetParams
from prism.chain.wallets import create_wallet, hotkey_ss58
from prism.profiles import load_profile
from prism.scoring import RULES_V2, policy_for_profile
from prism.scoring.policy import RULES_V2_ACTIVATION_BLOCK
from prism.store import Store
from prism.validator.status import ValidatorStatus, read_status

ROOT = Path(__file__).resolve().parents[1]
NETUID = 7
WAIVER = "profile.not_official"
DOC = ROOT / "docs" / "validator.md"
BEGIN, END = "<!-- bench_validator_day:begin -->", "<!-- bench_validator_day:end -->"


@dataclass(frozen=True)
class DayConfig:
    profile: str
    workers: tuple[int, ...]
    tempo: int
    block_time_s: float
    commit_interval_s: float
    timeout_s: float
    work: Path
    data_dir: Path


@dataclass
class Observed:
    """What the harness saw while one validator ran."""

    started: float
    first_commit: float | None = None
    runs_done_at: float | None = None
    weights_current_at: float | None = None
    busy_blocks: list[int] = field(default_factory=list)
    last: ValidatorStatus | None = None


# --- one validator's day -----------------------------------------------------------------------


def _wallets(work: Path, count: int) -> tuple[Any, list[Any]]:
    wallets = work / "wallets"
    validator = create_wallet("validator", "default", wallets)
    return validator, [create_wallet("miners", f"m{i:03d}", wallets) for i in range(count)]


def _chain(path: Path, config: DayConfig, validator: Any, miners: list[Any]) -> LocalChain:
    params = SubnetParams(netuid=NETUID, tempo=config.tempo, weights_rate_limit=max(1, config.tempo // 3),
                          commitment_rate_limit=1)  # fmt: skip
    chain = LocalChain.create(path, params, block_time_s=config.block_time_s)
    chain.register_wallet(validator, stake=1000.0, validator_permit=True)
    for miner in miners:
        chain.register_wallet(miner, stake=1.0)
    return chain


def _prefill_store(state_dir: Path, entries: list[Entry]) -> None:
    """Every ZIP in the store before any commitment: the validator admits them as local copies."""
    with Store.open(state_dir) as store:
        for entry in entries:
            store.put_blob(entry.zip_path.read_bytes(), expected_sha256=entry.sha256)


def _spawn_validator(
    config: DayConfig, chain_path: Path, state_dir: Path, workers: int
) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "prism.validator", "--netuid", str(NETUID), "--wallet.name", "validator",
            "--wallet.hotkey", "default", "--wallet.path", str(config.work / "wallets"), "--chain", "local",
            "--chain.path", str(chain_path), "--neuron.state_dir", str(state_dir), "--profile", config.profile,
            "--data", str(config.data_dir), "--scoring.waive", WAIVER, "--evaluation.workers", str(workers),
            "--loop_interval", "1", "--wandb.off"]  # fmt: skip
    with (state_dir.parent / "validator.log").open("ab") as log:
        return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})  # fmt: skip


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _runs_done(status: ValidatorStatus, submissions: int) -> bool:
    return status.submissions >= submissions and not status.pending_runs and not status.evaluation.in_flight


def _commit_due(
    chain: LocalChain, entries: list[Entry], miners: list[Any], seen: Observed, interval: float
) -> int:
    """Commit every entry whose time has come; returns how many have been committed so far."""
    if seen.first_commit is None:
        seen.first_commit = time.monotonic()
    due = min(len(entries), int((time.monotonic() - seen.first_commit) / interval) + 1)
    committed = len(chain.commitments())
    for index in range(committed, due):
        chain.commit(miners[index], format_commitment(entries[index].sha256))
    return max(committed, due)


def _watch(process: subprocess.Popen[bytes], chain: LocalChain, entries: list[Entry], miners: list[Any],
           state_dir: Path, config: DayConfig) -> Observed:  # fmt: skip
    """Commit on schedule and follow the status file until every run is done and weights are current."""
    seen, committed = Observed(started=time.monotonic()), 0
    while time.monotonic() - seen.started < config.timeout_s:
        if process.poll() is not None:
            log = (state_dir.parent / "validator.log").read_text()[-4000:]
            raise RuntimeError(f"the validator exited ({process.returncode}):\n{log}")
        status = read_status(state_dir)
        if status is not None:  # the validator is up: the day's commitments may begin
            committed = _commit_due(chain, entries, miners, seen, config.commit_interval_s)
            if status.evaluation.in_flight:
                seen.busy_blocks.append(status.block)
            done = committed == len(entries) and _runs_done(status, len(entries))
            # the start of the final idle stretch (paired re-measurements may follow a lull)
            seen.runs_done_at = (seen.runs_done_at or time.monotonic()) if done else None
            if done and status.weights_current:
                seen.last, seen.weights_current_at = status, time.monotonic()
                return seen
        time.sleep(0.5)
    raise TimeoutError(
        f"the validator did not finish within {config.timeout_s:.0f} s; see {state_dir.parent}"
    )


def _weight_blocks(chain_path: Path, hotkey: str) -> list[int]:
    """Every block the validator's weights landed in (the embedded chain keeps the history)."""
    with sqlite3.connect(f"file:{chain_path}?mode=ro", uri=True) as conn:
        rows = conn.execute("SELECT block FROM weights WHERE netuid = ? AND hotkey = ? ORDER BY id",
                            (NETUID, hotkey)).fetchall()  # fmt: skip
    return [int(row[0]) for row in rows]


def _weights_while_busy(sets: list[int], busy: list[int], tempo: int) -> dict[str, Any]:
    """Gaps between consecutive weight sets from the first set to the last block with runs in
    flight (the last gap runs to that block); on time when none exceeds a tempo plus 2 blocks
    (the due check runs once per loop step)."""
    end = max(busy, default=-1)
    inside = [b for b in sets if b <= end]
    if not inside:  # no weights while anything ran (a day shorter than the first result)
        return {"sets": len(sets), "max_gap_blocks": None, "on_time": None}
    gaps = [b - a for a, b in itertools.pairwise(inside)] + [end - inside[-1]]
    busy_sets = [b for b in sets if min(busy) <= b <= end]
    return {"sets": len(sets), "sets_while_busy": len(busy_sets), "tempo_blocks": tempo,
            "max_gap_blocks": max(gaps), "on_time": max(gaps) <= tempo + 2}  # fmt: skip


def run_day(config: DayConfig, entries: list[Entry], workers: int) -> dict[str, Any]:
    """One validator with ``workers`` workers over the whole population; its figures."""
    base = config.work / f"w{workers}"
    state_dir, chain_path = base / "state", base / "chain.sqlite3"
    validator, miners = _wallets(config.work, len(entries))
    chain = _chain(chain_path, config, validator, miners)
    _prefill_store(state_dir, [e for e in entries if e.copy_of is None])
    process = _spawn_validator(config, chain_path, state_dir, workers)
    try:
        seen = _watch(process, chain, entries, miners, state_dir, config)
    finally:
        _stop(process)
        chain.close()
    return _figures(seen, chain_path, hotkey_ss58(validator), state_dir, config)


def _figures(
    seen: Observed, chain_path: Path, hotkey: str, state_dir: Path, config: DayConfig
) -> dict[str, Any]:
    status = seen.last
    assert status is not None and seen.first_commit is not None and seen.runs_done_at is not None
    span = seen.runs_done_at - seen.first_commit
    finished = status.evaluation.finished_runs
    assert seen.weights_current_at is not None
    return {
        "wall_s": round(seen.weights_current_at - seen.started, 1),
        "seconds_until_runs_done": round(span, 1),
        "finished_runs": finished,
        "runs_by_state": status.runs,
        "paired_remeasurements": status.evaluation.paired,
        "runs_per_hour": round(finished / span * 3600, 1),
        "mean_run_s": round(status.evaluation.mean_run_s or 0.0, 1),
        "max_concurrent": status.evaluation.max_concurrent,
        "seconds_to_first_weights": round(status.seconds_to_first_weights or 0.0, 1),
        "weights": _weights_while_busy(_weight_blocks(chain_path, hotkey), seen.busy_blocks, config.tempo),
        "last_weights": status.last_weights,
        "state_dir": str(state_dir),
    }


# --- the whole benchmark -----------------------------------------------------------------------


def _screening(config: DayConfig, entries: list[Entry]) -> dict[str, Any]:
    profile = load_profile(config.profile)
    smoke_policy = policy_for_profile(
        profile, block=RULES_V2_ACTIVATION_BLOCK, waived_reasons=frozenset({WAIVER})
    )
    gpu_profile = load_profile("gpu_proxy_eval")
    gpu_policy = policy_for_profile(gpu_profile, block=RULES_V2_ACTIVATION_BLOCK)
    if (gpu_policy.screening_margin_bpb, gpu_policy.screening_margin_rel) != (
        RULES_V2.screening_margin_bpb, RULES_V2.screening_margin_rel,
    ):  # fmt: skip
        raise RuntimeError("the rules active at the v2 activation block are not rules v2")
    with Store.open(config.work / f"w{config.workers[0]}" / "state") as store:
        records = store.records_for_scoring(profile.name, profile.version)
    return screening_savings(entries, records, smoke_policy, gpu_profile, gpu_policy)


def _population(entries: list[Entry]) -> dict[str, Any]:
    bases: dict[str, int] = {}
    for entry in entries:
        if entry.copy_of is None:
            bases[entry.base] = bases.get(entry.base, 0) + 1
    return {"submissions": len(entries), "unique_zips": len({e.sha256 for e in entries}),
            "exact_copies": sum(e.copy_of is not None for e in entries), "weak": sum(e.weak for e in entries),
            "by_example": bases}  # fmt: skip


def measure(config: DayConfig, count: int) -> dict[str, Any]:
    from prism.data import ensure_offline_corpus

    ensure_offline_corpus(config.data_dir, tokenizer=load_profile(config.profile).tokenizer)
    entries = build_population(config.work, count)
    result: dict[str, Any] = {
        "profile": load_profile(config.profile).key, "cpus": len(os.sched_getaffinity(0)),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "population": _population(entries),
        "chain": {"tempo_blocks": config.tempo, "block_time_s": config.block_time_s,
                  "commit_interval_s": config.commit_interval_s},
        "intake": "ZIPs placed in the validator's store first (Store.put_blob) and admitted as local copies: "
                  "no miner processes, no downloads (the network path is tested in tests/validator)",
        "by_workers": {},
    }  # fmt: skip
    for workers in config.workers:
        result["by_workers"][str(workers)] = run_day(config, entries, workers)
    runs = result["by_workers"]
    top = str(max(config.workers))
    if "1" in runs and top != "1":
        ratio = runs[top]["runs_per_hour"] / runs["1"]["runs_per_hour"]
        result["throughput_ratio"] = {"workers": int(top), "vs_1": round(ratio, 2), "target": 0.8 * int(top)}
    result["identical_weights"] = (
        len({json.dumps(r["last_weights"], sort_keys=True) for r in runs.values()}) == 1
    )
    result["screening"] = _screening(config, entries)
    result["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    return result


# --- docs and the command line -----------------------------------------------------------------


def _row(workers: str, r: dict[str, Any]) -> str:
    weights = r["weights"]
    on_time = "n/a" if weights["on_time"] is None else "every tempo" if weights["on_time"] else "late"
    if weights["on_time"] is not None:
        on_time += f" (max gap {weights['max_gap_blocks']} / tempo {weights['tempo_blocks']})"
    return (f"| {workers} | {r['seconds_until_runs_done']:.0f} s | {r['finished_runs']} | {r['runs_per_hour']:.0f} | "
            f"{r['mean_run_s']:.0f} s | {r['max_concurrent']} | {r['seconds_to_first_weights']:.0f} s | {on_time} |")  # fmt: skip


def _intro(result: dict[str, Any]) -> str:
    pop, chain = result["population"], result["chain"]
    examples = ", ".join(f"{n} {b}" for b, n in pop["by_example"].items())
    return (
        f"`{result['command']}` on this machine ({result['cpus']} cores, load average "
        f"{result['load_average_at_start'][0]} at the start): {pop['submissions']} submissions ({examples}; "
        f"{pop['weak']} deliberately weak, {pop['exact_copies']} exact copies), profile `{result['profile']}`, "
        f"a tempo of {chain['tempo_blocks']} blocks of {chain['block_time_s']:g} s, one commitment every "
        f"{chain['commit_interval_s']:g} s. The ZIPs were in the validator's store before their commitments "
        "(no miner processes, no downloads: the network path is tested in tests/validator)."
    )


def _screening_text(screen: dict[str, Any]) -> str:
    (low, high), (full_low, full_high) = screen["gpu_hours_saved"], screen["gpu_hours_full_matrix"]
    return (
        f"Screening at `{screen['profile']}` (rules v{screen['rules_version']}, margin {screen['margin']}), an "
        f"**estimate**: of {screen['unique_submissions']} distinct submissions, {screen['screened_out']} would stop "
        f"after their first cell, skipping {screen['cells_skipped']} of {screen['cells_full_matrix']} cells "
        f"({screen['share_saved']:.0%}): about {low:g}-{high:g} of {full_low:g}-{full_high:g} GPU-hours "
        "(docs/evaluator.md's per-cell estimate; no GPU was lent). Each submission's smoke held-out bpb "
        "stands for its first cell, and the leader is the best earlier first cell in commit order (a "
        "simplification of the architecture leader with its family margins)."
    )


def _fill(text: str) -> str:
    return textwrap.fill(text, 100, break_on_hyphens=False, break_long_words=False)


def render_markdown(result: dict[str, Any]) -> str:
    paragraphs = [_fill(_intro(result))]
    header = ("| workers | runs done after | finished runs | runs per hour | mean run | max in flight "
              "| first weights after | weights while busy |\n|---|---|---|---|---|---|---|---|")  # fmt: skip
    paragraphs.append("\n".join([header, *(_row(w, r) for w, r in result["by_workers"].items())]))
    if "throughput_ratio" in result:
        ratio = result["throughput_ratio"]
        paragraphs.append(_fill(
            f"Throughput with {ratio['workers']} workers: {ratio['vs_1']} x one worker (target {ratio['target']:g} "
            f"when the cores are free). Identical final weights: {'yes' if result['identical_weights'] else 'no'}."
        ))  # fmt: skip
    paragraphs.append(_fill(_screening_text(result["screening"])))
    return "\n\n".join(paragraphs)


def write_docs(path: Path, body: str) -> None:
    """Replace the marked section (appended under its own heading the first time)."""
    text = path.read_text()
    section = f"{BEGIN}\n{body}\n{END}"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + section + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + f"\n\n## A validator's day, measured\n\n{section}\n"
    path.write_text(text)


def _args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--submissions", type=int, default=64, help="submissions in the population")
    parser.add_argument("--workers", default="1,2", help="worker counts to run, comma-separated")
    parser.add_argument("--profile", default="local_cpu_smoke", help="a profile name or a profile YAML")
    parser.add_argument("--tempo", type=int, default=30, help="blocks per tempo on the embedded chain")
    parser.add_argument("--block-time", type=float, default=1.0, help="seconds per block")
    parser.add_argument("--commit-interval", type=float, default=5.0, help="seconds between commitments")
    parser.add_argument("--timeout", type=float, default=4 * 3600.0, help="seconds one validator may take")
    parser.add_argument("--work", default=None, help="working directory (default: a new temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the working directory")
    parser.add_argument("--write-docs", action="store_true", help=f"update the marked section of {DOC}")
    parser.add_argument("--docs", default=str(DOC), help="the document --write-docs updates")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    profile = (
        str(Path(args.profile).resolve()) if Path(args.profile).suffix in (".yaml", ".yml") else args.profile
    )
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="prism-validator-day-"))
    config = DayConfig(profile=profile, workers=tuple(int(w) for w in args.workers.split(",")), tempo=args.tempo,
                       block_time_s=args.block_time, commit_interval_s=args.commit_interval, timeout_s=args.timeout,
                       work=work, data_dir=work / "data")  # fmt: skip
    try:
        result = {"command": " ".join(["python benchmarks/bench_validator_day.py", *(argv or sys.argv[1:])])}
        result |= measure(config, args.submissions)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result, indent=2))
    if args.write_docs:
        write_docs(Path(args.docs), render_markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
