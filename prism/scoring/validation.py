"""Per-run validation and per-cell resolution.

A run manifest becomes one of three outcomes:

* ``valid``: it counts, with its held-out and probe bpb;
* ``failed``: the submission is at fault (a miner failure or a gate); the cell it fills fails;
* ``ignored``: not a result at all (our failure, another profile, degraded isolation); the cell
  stays open until the run is redone.

Gates are re-checked here from the metrics even when the evaluator already flagged them, so a
bug on one side does not let a run through.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict

from prism.beacon import beacon_block, cell_seeds
from prism.manifest import RecipeMode, RunManifest
from prism.scoring.policy import ScoringPolicy
from prism.scoring.reasons import ALL_REASONS, reason_fault
from prism.scoring.records import SubmissionRecord

RunOutcome = Literal["valid", "failed", "ignored"]
CellState = Literal["valid", "failed", "missing"]


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RunVerdict(_Frozen):
    run_id: str
    recipe_mode: RecipeMode
    regime: str
    seed: int
    outcome: RunOutcome
    reasons: tuple[str, ...] = ()
    failure_code: str | None = None
    heldout_bpb: float | None = None
    probe_bpb: float | None = None


class Cell(_Frozen):
    regime: str
    seed: int
    state: CellState
    run_id: str | None = None
    heldout_bpb: float | None = None
    probe_bpb: float | None = None
    reasons: tuple[str, ...] = ()


class ModeResult(_Frozen):
    """All required cells of one recipe mode for one submission."""

    recipe_mode: RecipeMode
    cells: tuple[Cell, ...]

    @property
    def complete(self) -> bool:
        return all(cell.state == "valid" for cell in self.cells)

    @property
    def reasons(self) -> tuple[str, ...]:
        """``cell.failed`` dominates ``cell.missing``: a failed cell never recovers."""
        states = {cell.state for cell in self.cells}
        if "failed" in states:
            return ("cell.failed",)
        if "missing" in states:
            return ("cell.missing",)
        return ()

    @property
    def heldout_values(self) -> tuple[float, ...]:
        return tuple(c.heldout_bpb for c in self.cells if c.heldout_bpb is not None)

    @property
    def mean_heldout_bpb(self) -> float | None:
        return _mean([c.heldout_bpb for c in self.cells]) if self.complete else None

    @property
    def mean_probe_bpb(self) -> float | None:
        return _mean([c.probe_bpb for c in self.cells]) if self.complete else None


def _mean(values: list[float | None]) -> float:
    present = [v for v in values if v is not None]
    return math.fsum(present) / len(present)


def _policy_mismatch(manifest: RunManifest, record: SubmissionRecord, policy: ScoringPolicy) -> str | None:
    """Reasons that make a run not belong to this scoring at all."""
    if (manifest.profile.name, manifest.profile.version) != (policy.profile, policy.profile_version):
        return "profile.mismatch"
    if manifest.profile.official and not manifest.is_current_schema:
        # Its numbers were computed inside a process that ran submission code: never scored.
        return "run.outdated_evaluator"
    if manifest.comparability.profile_key != policy.profile_key:
        return "profile.mismatch"
    if manifest.submission.zip_sha256 != record.zip_sha256:
        return "run.submission_mismatch"
    if manifest.regime.name not in policy.required_regimes or manifest.cell_seed not in policy.required_seeds:
        return "run.unrequested_cell"
    if policy.beacon_seeds and not _seeded_by_the_beacon(manifest, record, policy):
        return "run.beacon_mismatch"
    return None


def _seeded_by_the_beacon(manifest: RunManifest, record: SubmissionRecord, policy: ScoringPolicy) -> bool:
    """Official runs must use the seeds the chain's beacon gives this submission's cell."""
    beacon = manifest.beacon
    if beacon is None or beacon.block != beacon_block(record.commit_block):
        return False
    if record.beacon_hash is not None and beacon.block_hash.lower().removeprefix(
        "0x"
    ) != record.beacon_hash.lower().removeprefix("0x"):
        return False
    index = (
        sorted(policy.required_seeds).index(manifest.cell_seed)
        if manifest.cell_seed in policy.required_seeds
        else -1
    )
    if beacon.seed_index != index:
        return False
    seeds = cell_seeds(beacon.block_hash, record.zip_sha256, manifest.regime.name, beacon.seed_index)
    return (seeds.train_seed, seeds.heldout_seed) == (manifest.seed, manifest.dataset.heldout_seed)


def _gate_reasons(manifest: RunManifest, record: SubmissionRecord, policy: ScoringPolicy) -> set[str]:
    """Scoring's own checks of the measured numbers (defence in depth over the evaluator's)."""
    m, d = manifest.metrics, manifest.diagnostics
    reasons: set[str] = set()
    if m.nonfinite_loss:
        reasons.add("gate.nonfinite_loss")
    elif m.heldout_bpb is None or m.probe_bpb is None or m.first_probe_loss_nats is None:
        reasons.add("run.incomplete")
    vocab = manifest.dataset.tokenizer.vocab_size
    early = [x for x in (m.first_probe_loss_nats, m.early_probe_loss_nats) if x is not None]
    if early and min(early) < policy.smuggle_factor * math.log(vocab):
        reasons.add("gate.smuggled_weights")
    hashes_differ = (
        d.params_sha256_before_eval is not None
        and d.params_sha256_after_eval is not None
        and d.params_sha256_before_eval != d.params_sha256_after_eval
    )
    if d.params_changed_during_eval or hashes_differ:
        reasons.add("gate.params_changed_during_eval")
    gap = m.train_heldout_gap_bpb
    if gap is None and m.heldout_bpb is not None and m.train_bpb is not None:
        gap = m.heldout_bpb - m.train_bpb
    if gap is not None and abs(gap) > policy.max_train_heldout_gap_bpb:
        reasons.add("gate.train_heldout_gap")
    if manifest.isolation == "degraded":
        reasons.add("isolation.degraded")
    if not manifest.profile.official:
        reasons.add("profile.not_official")
    ids = manifest.submission
    measured = record.measured_family_id or record.family_id  # before the near-duplicate merge
    if (ids.family_id is not None and ids.family_id != measured) or (
        ids.version_id is not None and ids.version_id != record.version_id
    ):
        reasons.add("run.identity_mismatch")
    return reasons


def check_run(manifest: RunManifest, record: SubmissionRecord, policy: ScoringPolicy) -> RunVerdict:
    """Classify one manifest of ``record`` under ``policy``."""
    base = {
        "run_id": manifest.run_id,
        "recipe_mode": manifest.recipe_mode,
        "regime": manifest.regime.name,
        "seed": manifest.cell_seed,
    }
    mismatch = _policy_mismatch(manifest, record, policy)
    if mismatch is not None:
        return RunVerdict(**base, outcome="ignored", reasons=(mismatch,))
    failure = manifest.status.failure
    if failure is not None:
        if failure.fault == "miner":
            return RunVerdict(
                **base, outcome="failed", reasons=("run.miner_failure",), failure_code=failure.code
            )
        return RunVerdict(
            **base, outcome="ignored", reasons=("run.infrastructure_failure",), failure_code=failure.code
        )
    reasons = set(manifest.validation.reasons) | _gate_reasons(manifest, record, policy)
    if any(code not in ALL_REASONS for code in reasons):
        reasons.add("run.unknown_ineligibility")  # a newer evaluator's code: refuse, never guess
    reasons -= policy.waived_reasons
    ordered = tuple(sorted(reasons))
    if any(reason_fault(code) == "miner" for code in ordered):
        outcome: RunOutcome = "failed"
    elif ordered:
        outcome = "ignored"
    else:
        outcome = "valid"
    return RunVerdict(
        **base,
        outcome=outcome,
        reasons=ordered,
        heldout_bpb=manifest.metrics.heldout_bpb if outcome == "valid" else None,
        probe_bpb=manifest.metrics.probe_bpb if outcome == "valid" else None,
    )


def resolve_cell(regime: str, seed: int, verdicts: list[RunVerdict]) -> Cell:
    """One required cell from all its runs: a failure wins (a retry cannot wash out a gate),
    otherwise the valid run with the smallest run_id, otherwise the cell is missing."""
    ordered = sorted(verdicts, key=lambda v: v.run_id)
    failed = [v for v in ordered if v.outcome == "failed"]
    if failed:
        reasons = tuple(sorted({r for v in failed for r in v.reasons}))
        return Cell(regime=regime, seed=seed, state="failed", run_id=failed[0].run_id, reasons=reasons)
    valid = [v for v in ordered if v.outcome == "valid"]
    if valid:
        v = valid[0]
        return Cell(
            regime=regime,
            seed=seed,
            state="valid",
            run_id=v.run_id,
            heldout_bpb=v.heldout_bpb,
            probe_bpb=v.probe_bpb,
        )
    reasons = tuple(sorted({r for v in ordered for r in v.reasons}))
    return Cell(regime=regime, seed=seed, state="missing", reasons=reasons)


def mode_result(verdicts: list[RunVerdict], mode: RecipeMode, policy: ScoringPolicy) -> ModeResult:
    """Resolve every required cell of ``mode`` from the verdicts of one submission."""
    cells = []
    for regime, seed in policy.required_cells:
        matching = [v for v in verdicts if (v.recipe_mode, v.regime, v.seed) == (mode, regime, seed)]
        cells.append(resolve_cell(regime, seed, matching))
    return ModeResult(recipe_mode=mode, cells=tuple(cells))
