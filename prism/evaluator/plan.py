"""What to evaluate: the request, the data it runs on, and one plan per regime x seed (host side).

Everything here is decided before any sandbox starts and is a pure function of the request, so a
restarted validator derives the same run ids and finds the runs it already finished. The run id
covers everything that changes a result: the ZIP, the profile, the cell, the recipe mode, the
held-out seed, the attempt, the prepared data, the number of ranks and the evaluator version.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from prism import __version__ as prism_version
from prism.beacon import BeaconRef, cell_seeds
from prism.errors import OperatorError
from prism.profiles import Profile, Regime
from prism.submission import Submission

RecipeMode = Literal["reference", "submitted"]
Competition = Literal["architecture", "training"]

SANDBOX_OUT = "sandbox_out"
#: Bumped whenever the host side changes what a manifest's numbers mean (part of every run id).
EVALUATOR_VERSION = f"{prism_version}+measure3"  # 3: shipped constants must be committed before training


def cache_dir() -> Path:
    """PRISM's per-machine cache: ``$PRISM_CACHE_DIR``, else ``$XDG_CACHE_HOME/prism``, else ``~/.cache/prism``."""
    if os.environ.get("PRISM_CACHE_DIR"):
        return Path(os.environ["PRISM_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "prism"


def default_calibration_dir() -> Path:
    """Calibrations describe this machine, so by default they live in its cache, not in a run dir."""
    return cache_dir() / "calibration"


@dataclass(frozen=True)
class DataInfo:
    """The verified data dir, as runs see it: the tokenizer and the manifest's fingerprint record."""

    path: Path
    tokenizer: str
    vocab_size: int
    eos_id: int
    record: dict[str, Any]  # DatasetRecord fields except heldout_seed / heldout_windows

    @property
    def fingerprint(self) -> str:
        return str(self.record["manifest_sha256"])


def describe_data(data_dir: Path, profile: Profile) -> DataInfo:
    """Verify the prepared data dir (every shard's header and sha256) and match the profile."""
    from prism import data as prism_data

    if not data_dir.is_dir():
        raise OperatorError(f"data dir {data_dir} does not exist", code="eval.no_data")
    manifest = prism_data.verify_data_dir(data_dir)
    record = dict(prism_data.data_fingerprint(manifest))
    tokenizer = dict(record["tokenizer"])  # type: ignore[arg-type]
    if tokenizer["name"] != profile.tokenizer:
        raise OperatorError(
            f"data dir {data_dir} is tokenized with {tokenizer['name']!r}, profile {profile.key} "
            f"needs {profile.tokenizer!r}",
            code="eval.data_tokenizer_mismatch",
        )
    return DataInfo(
        path=data_dir,
        tokenizer=str(tokenizer["name"]),
        vocab_size=int(tokenizer["vocab_size"]),
        eos_id=int(tokenizer["eos_id"]),
        record=record,
    )


@dataclass(frozen=True)
class EvalRequest:
    """One ``evaluate()`` call, built once from the caller's arguments."""

    submission: Submission
    profile: Profile
    data: DataInfo
    out_dir: Path
    recipe_mode: RecipeMode
    competition: Competition
    regimes: tuple[Regime, ...]
    seeds: tuple[int, ...]
    heldout_seed: int
    nproc: int
    attempt: int = 0
    resume_checkpoint_dir: Path | None = None
    calibration_dir: Path | None = None
    force: bool = False
    #: (block, block hash) of the chain beacon: when set, every cell's training and held-out seeds
    #: derive from it (prism.beacon) instead of the profile's seeds and ``heldout_seed``.
    beacon: tuple[int, str] | None = None
    #: a training variant composed onto this ZIP's architecture files (prism.submission.compose)
    architecture_zip_sha256: str | None = None


@dataclass(frozen=True)
class RunPlan:
    """Where one run lives and what it is. ``root`` holds the manifest and the artifacts."""

    run_id: str
    regime: Regime
    seed: int  # the training seed actually used
    heldout_seed: int
    root: Path
    nominal_seed: int | None = None  # the profile's seed this run stands for (beacon runs)
    beacon: BeaconRef | None = None

    @property
    def sandbox_out(self) -> Path:
        return self.root / SANDBOX_OUT  # the only writable path of the training sandbox

    @property
    def spec_dir(self) -> Path:
        return self.root / "spec"  # read-only inside

    @property
    def weights_dir(self) -> Path:
        return self.root / "weights"  # the host's copy of the trained weights


def make_run_id(
    *,
    zip_sha256: str,
    profile_key: str,
    regime: str,
    seed: int,
    recipe_mode: str,
    heldout_seed: int,
    attempt: int,
    data_fingerprint: str,
    nproc: int,
    evaluator_version: str = EVALUATOR_VERSION,
    architecture_zip: str | None = None,
) -> str:
    """Deterministic run id: a restarted validator finds (and skips) the runs it already finished.
    ``architecture_zip``: a training variant trained on another ZIP's architecture files."""
    fields = [
        zip_sha256,
        profile_key,
        regime,
        seed,
        recipe_mode,
        heldout_seed,
        attempt,
        data_fingerprint,
        nproc,
        evaluator_version,
    ] + ([architecture_zip] if architecture_zip else [])
    key = json.dumps(fields, separators=(",", ":"))
    return "run-" + hashlib.sha256(key.encode()).hexdigest()[:24]


def plan_runs(request: EvalRequest) -> list[RunPlan]:
    """One plan per regime x seed, in the order they run."""
    plans = []
    profile_seeds = list(request.profile.seeds)
    for regime in request.regimes:
        for position, seed in enumerate(request.seeds):
            # the beacon's seed index is the seed's place in the profile (one cell at a time or all)
            index = profile_seeds.index(seed) if seed in profile_seeds else len(profile_seeds) + position
            train_seed, heldout_seed, beacon = seed, request.heldout_seed, None
            if request.beacon is not None:
                block, block_hash = request.beacon
                derived = cell_seeds(block_hash, request.submission.zip_sha256, regime.name, index)
                train_seed, heldout_seed = derived.train_seed, derived.heldout_seed
                beacon = BeaconRef(block=block, block_hash=block_hash, seed_index=index)
            run_id = make_run_id(
                zip_sha256=request.submission.zip_sha256,
                profile_key=request.profile.key,
                regime=regime.name,
                seed=train_seed,
                recipe_mode=request.recipe_mode,
                heldout_seed=heldout_seed,
                attempt=request.attempt,
                data_fingerprint=request.data.fingerprint,
                nproc=request.nproc,
                architecture_zip=request.architecture_zip_sha256,
            )
            plan = RunPlan(run_id, regime, train_seed, heldout_seed, request.out_dir / run_id, seed, beacon)
            plans.append(plan)
    return plans


def reset_run_dir(plan: RunPlan) -> None:
    """A fresh run directory (a previous, failed attempt's files are removed)."""
    from prism.evaluator.output_tree import remove_tree

    remove_tree(plan.root)  # whatever a sandbox left in it: any depth, any modes
    for directory in (plan.sandbox_out, plan.spec_dir, plan.weights_dir):
        directory.mkdir(parents=True)


__all__ = [
    "EVALUATOR_VERSION",
    "SANDBOX_OUT",
    "DataInfo",
    "EvalRequest",
    "RunPlan",
    "describe_data",
    "make_run_id",
    "plan_runs",
    "reset_run_dir",
]
