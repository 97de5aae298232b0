"""Training competition: variants, their baselines, recipe copies and the best per family.

A variant's score is its held-out improvement over the reference-recipe result of the version
it ran on; it qualifies past a noise margin and replaces the family's current best past the
noise margin of the difference of the two improvements. Under paired rules both contrasts are
measured on the variant's held-out windows. Recipe copies are found on fingerprints, per family
(rules v1) or across all families (v2; see ``dedup_keys``).
"""

from __future__ import annotations

import hashlib
import json
import math

from prism.scoring.architecture import Family, event, side
from prism.scoring.comparison import (
    Comparison,
    ComparisonKind,
    Contest,
    Side,
    decided,
    noise_margin,
    paired_mean_and_stderr,
    pending,
    training_margin,
)
from prism.scoring.paired import Estimate, EvalRequest, RunSet, combine_coefficients, paired_estimate
from prism.scoring.policy import ScoringPolicy
from prism.scoring.standings import OwnershipEvent
from prism.scoring.submissions import Sub


def declared_recipe_key(sub: Sub) -> str | None:
    """Hash of the declared recipe per cell, for a variant that runs no code of its own.

    Only when every required submitted cell is valid and none of its runs has any hook present:
    then training is fully described by the declared recipe, whatever the code text looks like.
    (The declared recipe is reported from the sandbox, so it is evidence: a variant can dodge
    this key, never claim another's, because only earlier submissions claim keys.)
    """
    if not sub.submitted.complete:
        return None
    by_id = {m.run_id: m for m in sub.record.runs}
    parts = []
    for cell in sub.submitted.cells:
        manifest = by_id[cell.run_id or ""]
        if manifest.recipe is None or not manifest.hooks or any(h.present for h in manifest.hooks.values()):
            return None
        parts.append([cell.regime, cell.seed, manifest.recipe.declared])
    return hashlib.sha256(json.dumps(parts, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def dedup_keys(sub: Sub, policy: ScoringPolicy) -> set[str]:
    """Fingerprints a later variant must not share. v1: the intake code hash, within the family.
    v2: the code hash, intake's normalised recipe fingerprint and the declared-recipe key, global."""
    r = sub.record
    if policy.training_dedup == "family":
        return {f"{r.family_id}\0code:{r.training_fingerprint}"} if r.training_fingerprint else set()
    keys = set()
    if r.training_fingerprint is not None:
        keys.add(f"code:{r.training_fingerprint}")
    if r.recipe_fingerprint is not None:
        keys.add(f"normalised:{r.recipe_fingerprint}")
    declared = declared_recipe_key(sub)
    if declared is not None:
        keys.add(f"declared:{declared}")
    return keys


def _mean(values: tuple[float, ...]) -> float:
    return math.fsum(values) / len(values)


class Variant:
    def __init__(self, sub: Sub, baseline: Sub, policy: ScoringPolicy) -> None:
        self.sub, self.baseline, self.policy = sub, baseline, policy
        self.family_id = sub.record.family_id or ""
        base, mine = baseline.reference.heldout_values, sub.submitted.heldout_values
        self.gains = [b - v for b, v in zip(base, mine, strict=True)]
        self.baseline_bpb, self.variant_bpb = _mean(base), _mean(mine)
        self.improvement, self.stderr = paired_mean_and_stderr(self.gains)
        self.margin = noise_margin(self.gains, self.baseline_bpb, policy)
        self.paired = policy.comparison == "paired"
        self.pending = False
        self.qualification = self._qualify()
        self.qualifies = self.qualification.challenger_wins

    def _contest(self, kind: ComparisonKind, incumbent: Side) -> Contest:
        return Contest(kind, self.family_id, self.sub.record.commit_block, side(self.sub, "submitted"),
                       incumbent, self.paired)  # fmt: skip

    def _paired(self, terms: list[tuple[RunSet, float]]) -> Estimate | list[EvalRequest]:
        coefs = combine_coefficients(terms)
        challenger = self.sub.runset("submitted")
        return paired_estimate(self.sub.windows, challenger, self.policy.required_cells, coefs)

    def _qualify(self) -> Comparison:
        contest = self._contest("training_qualify", side(self.baseline))
        if not self.paired:
            estimate = Estimate(
                difference_bpb=self.improvement, stderr_bpb=self.stderr, cells=tuple(self.gains)
            )
            return decided(contest, estimate, self.margin, self.improvement > self.margin)
        base, mine = self.baseline.runset("reference"), self.sub.runset("submitted")
        estimate = self._paired([(base, 1.0), (mine, -1.0)])
        if isinstance(estimate, list):
            self.pending = True
            return pending(contest, estimate)
        if estimate.forfeit is not None:
            return decided(contest, estimate, self.margin, estimate.forfeit == "incumbent")
        base_bpb, mine_bpb = self._paired([(base, 1.0)]), self._paired([(mine, 1.0)])
        assert isinstance(base_bpb, Estimate) and isinstance(mine_bpb, Estimate)
        self.baseline_bpb, self.variant_bpb = base_bpb.difference_bpb, mine_bpb.difference_bpb
        self.improvement, self.stderr = estimate.difference_bpb, estimate.stderr_bpb
        self.margin = training_margin(self.stderr, self.baseline_bpb, self.policy)
        return decided(contest, estimate, self.margin, self.improvement > self.margin)

    def challenge(self, best: Variant) -> Comparison:
        """Past the noise margin of the difference of the two improvements, per cell."""
        contest = self._contest("training_best", side(best.sub, "submitted"))
        if self.paired:
            estimate = self._paired([
                (self.baseline.runset("reference"), 1.0), (self.sub.runset("submitted"), -1.0),
                (best.baseline.runset("reference"), -1.0), (best.sub.runset("submitted"), 1.0),
            ])  # fmt: skip
            if isinstance(estimate, list):
                return pending(contest, estimate)
            if estimate.forfeit is not None:
                return decided(contest, estimate, 0.0, estimate.forfeit == "incumbent")
        else:
            deltas = [mine - theirs for mine, theirs in zip(self.gains, best.gains, strict=True)]
            mean, stderr = paired_mean_and_stderr(deltas)
            estimate = Estimate(difference_bpb=mean, stderr_bpb=stderr, cells=tuple(deltas))
        required = training_margin(estimate.stderr_bpb, best.baseline_bpb, self.policy)
        if self.sub.stack("submitted") != best.sub.stack("submitted"):
            required += self.policy.stack_tolerance_bpb  # different torch/CUDA builds move numbers a little
        return decided(contest, estimate, required, estimate.difference_bpb > required)


def _variant_candidate(
    sub: Sub, families: dict[str, Family], reps: dict[str, Sub], policy: ScoringPolicy
) -> Variant | None:
    """Check a training submission against its family; None (with reasons) if it cannot score."""
    r = sub.record
    if r.kind == "training_for_arch" and r.family_id != r.target_architecture_id:
        sub.reasons.add("training.target_mismatch")
        return None
    family = families.get(r.family_id or "")
    # Same-block commits are simultaneous: a variant may target a family founded in its own block.
    if family is None or family.founder.record.commit_block > r.commit_block:
        if r.kind == "training_for_arch":
            sub.reasons.add("training.unknown_target")
        return None
    baseline = reps.get(r.version_id or "")
    if baseline is None or not baseline.reference.complete:
        sub.reasons.add("training.no_baseline")
        return None
    if not sub.submitted.complete:
        sub.reasons.update(sub.submitted.reasons)
        return None
    return Variant(sub, baseline, policy)


def _not_copy(sub: Sub, claimed: set[str], policy: ScoringPolicy) -> bool:
    """v1 claims a fingerprint on first sight; v2 only once the variant has a complete result,
    so a failed submission does not block its author's corrected resubmission."""
    keys = dedup_keys(sub, policy)
    if keys & claimed:
        sub.reasons.add("copy.training")
        return False
    if policy.training_dedup == "family" or sub.submitted.complete:
        claimed.update(keys)
    return True


def replay_training(
    subs: list[Sub],
    families: dict[str, Family],
    reps: dict[str, Sub],
    policy: ScoringPolicy,
    events: list[OwnershipEvent],
    comparisons: list[Comparison],
) -> tuple[list[Variant], dict[str, Variant]]:
    variants: list[Variant] = []
    best: dict[str, Variant] = {}
    claimed: set[str] = set()
    for sub in subs:
        if not (sub.eligible and sub.record.competes_in_training and _not_copy(sub, claimed, policy)):
            continue
        variant = _variant_candidate(sub, families, reps, policy)
        if variant is None:
            continue
        variants.append(variant)
        comparisons.append(variant.qualification)
        current = best.get(variant.family_id)
        outcome = variant.qualification
        if variant.qualifies and current is not None:
            outcome = variant.challenge(current)
            comparisons.append(outcome)
        if outcome.challenger_wins:
            best[variant.family_id] = variant
            events.append(event("training_best", sub, variant.family_id))
        else:
            sub.reasons.add("comparison.pending" if outcome.state == "pending" else "training.below_margin")
    return variants, best
