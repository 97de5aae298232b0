"""Stable reason codes: why a run or a submission does not score.

Two families of codes live here:

* ``ELIGIBILITY_REASONS``: the codes the evaluator writes into ``validation.reasons`` of a run
  manifest. The evaluator imports this table so both sides spell them the same way.
* ``SCORING_REASONS``: the codes scoring itself attaches to runs and submissions.

Every code has a ``fault``. ``miner`` means the submission caused it: the run counts as a failed
run of that submission and the cell it fills stays failed (no retry can wash it out).
``validator`` means our side or our configuration caused it: the run is not a result at all, the
cell stays open and the run will be redone. ``policy`` marks competition outcomes (copies,
ownership) that are nobody's fault but earn nothing.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

ReasonFault = Literal["miner", "validator", "policy"]


class ReasonSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    code: str
    fault: ReasonFault
    description: str


def _table(*specs: ReasonSpec) -> dict[str, ReasonSpec]:
    return {spec.code: spec for spec in specs}


#: Codes the evaluator may write into ``manifest.validation.reasons``.
ELIGIBILITY_REASONS: dict[str, ReasonSpec] = _table(
    ReasonSpec(code="profile.not_official", fault="validator", description="smoke profile, never official"),
    ReasonSpec(code="isolation.degraded", fault="validator", description="bwrap unavailable; rlimits only"),
    ReasonSpec(code="dataset.not_fineweb_edu", fault="validator", description="trained on a fallback corpus"),
    ReasonSpec(
        code="gate.smuggled_weights",
        fault="miner",
        description="first probe loss below smuggle_factor*ln(V): the model did not start from scratch",
    ),
    ReasonSpec(code="gate.nonfinite_loss", fault="miner", description="a loss was NaN or infinite"),
    ReasonSpec(
        code="gate.params_changed_during_eval",
        fault="miner",
        description="parameter hash differs before and after the held-out evaluation",
    ),
    ReasonSpec(
        code="gate.train_heldout_gap",
        fault="miner",
        description="|held-out bpb - train bpb| above the profile maximum",
    ),
    ReasonSpec(
        code="gate.parameter_budget", fault="miner", description="more parameters than the regime allows"
    ),
    ReasonSpec(code="gate.layer_budget", fault="miner", description="more layers than the regime allows"),
    ReasonSpec(
        code="run.failed",
        fault="validator",
        description="the run failed; status.failure.fault decides whether it counts against the miner",
    ),
    ReasonSpec(
        code="recipe.not_reference",
        fault="validator",
        description="an architecture-competition run not trained with the reference recipe",
    ),
    ReasonSpec(code="metrics.missing", fault="validator", description="held-out or probe bpb not measured"),
)

#: Codes scoring attaches itself (to runs, cells and submissions).
SCORING_REASONS: dict[str, ReasonSpec] = _table(
    ReasonSpec(
        code="run.miner_failure", fault="miner", description="the run failed by the submission's fault"
    ),
    ReasonSpec(
        code="run.infrastructure_failure",
        fault="validator",
        description="the run failed on our side; it is retried and never counted",
    ),
    ReasonSpec(code="run.incomplete", fault="validator", description="a required metric is missing"),
    ReasonSpec(
        code="run.unknown_ineligibility",
        fault="miner",
        description="validation carries a code this scorer does not know; refused conservatively",
    ),
    ReasonSpec(code="profile.mismatch", fault="validator", description="run from another profile or version"),
    ReasonSpec(
        code="screen.behind_leader",
        fault="policy",
        description="the first cell was behind the leader's by more than the screening margin; not scored",
    ),
    ReasonSpec(
        code="run.beacon_mismatch",
        fault="validator",
        description="an official run whose seeds are not the chain beacon's for its cell; redone",
    ),
    ReasonSpec(
        code="run.outdated_evaluator",
        fault="validator",
        description="an official run written by an evaluator older than the current manifest schema; redone",
    ),
    ReasonSpec(
        code="run.unrequested_cell",
        fault="validator",
        description="regime or seed not required by the policy",
    ),
    ReasonSpec(code="run.submission_mismatch", fault="validator", description="manifest names another ZIP"),
    ReasonSpec(
        code="run.identity_mismatch",
        fault="miner",
        description="the run's family/version differs from the submission's: the computation is unstable",
    ),
    ReasonSpec(code="intake.rejected", fault="miner", description="the ZIP failed intake"),
    ReasonSpec(
        code="cell.missing", fault="validator", description="a required regime x seed has no result yet"
    ),
    ReasonSpec(code="cell.failed", fault="miner", description="a required regime x seed failed"),
    ReasonSpec(code="copy.exact", fault="policy", description="same ZIP sha256 as an earlier submission"),
    ReasonSpec(code="copy.version", fault="policy", description="same version_id as an earlier submission"),
    ReasonSpec(
        code="copy.family",
        fault="policy",
        description="family already owned by an earlier submission; a later version may become canonical",
    ),
    ReasonSpec(
        code="copy.training",
        fault="policy",
        description="same training fingerprint as an earlier variant of the family",
    ),
    ReasonSpec(
        code="submission.no_family", fault="validator", description="family/version ids not known yet"
    ),
    ReasonSpec(
        code="training.target_mismatch",
        fault="miner",
        description="training_for_arch whose measured family differs from its target_architecture_id",
    ),
    ReasonSpec(
        code="training.unknown_target",
        fault="policy",
        description="target family has no scored reference yet",
    ),
    ReasonSpec(
        code="training.no_baseline",
        fault="policy",
        description="the version the variant ran on has no complete reference result",
    ),
    ReasonSpec(
        code="training.below_margin",
        fault="policy",
        description="improvement does not exceed the noise margin",
    ),
    ReasonSpec(
        code="owner.deregistered", fault="policy", description="winner's hotkey is not in the metagraph"
    ),
    ReasonSpec(
        code="comparison.pending",
        fault="validator",
        description="the paired held-out measurement this contest needs is not made yet; the incumbent stays",
    ),
    ReasonSpec(
        code="version.below_margin",
        fault="policy",
        description="a later version did not beat the canonical version by the version margin",
    ),
    ReasonSpec(
        code="version.superseded",
        fault="policy",
        description="was the canonical version; a better version of the family replaced it",
    ),
)

ALL_REASONS: dict[str, ReasonSpec] = {**ELIGIBILITY_REASONS, **SCORING_REASONS}


def reason_fault(code: str) -> ReasonFault:
    """Fault of a code; unknown codes are the miner's (refused conservatively, never retried)."""
    spec = ALL_REASONS.get(code)
    return spec.fault if spec is not None else "miner"
