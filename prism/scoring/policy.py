"""Scoring policy: the competition rules as versioned data.

Rules change over a subnet's life. Each rule set has a version and an activation block
(``RULES_SCHEDULE``); ``policy_for_profile(profile, block=...)`` picks the rule set active at
that block and joins it with what the evaluation profile fixes (regimes, seeds, gates). Two
validators with the same stored results and the same block therefore apply the same rules.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from prism.errors import OperatorError
from prism.profiles import Profile

PoolPolicy = Literal["winner_take_all", "top_k_linear"]
UnclaimedRule = Literal["redistribute", "burn"]
ComparisonMode = Literal["unpaired", "paired"]
TrainingDedup = Literal["family", "global"]


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CompetitionRules(_Frozen):
    """Profile-independent rules. Defaults are rules version 1 (see docs/scoring.md); a field
    added later defaults to the value that reproduces version 1, so version 1 never changes."""

    version: int = Field(default=1, ge=1)
    architecture_pool: float = Field(default=0.6, ge=0.0, le=1.0)
    training_pool: float = Field(default=0.4, ge=0.0, le=1.0)
    pool_policy: PoolPolicy = "winner_take_all"
    top_k: int = Field(default=3, ge=1, description="ranks paid by top_k_linear")
    # A newer family takes the architecture lead only past max(abs, rel * leader bpb).
    family_margin_bpb: float = Field(default=0.005, ge=0.0)
    family_margin_rel: float = Field(default=0.005, ge=0.0)
    # A newer version of a family becomes canonical only past max(abs, rel * canonical bpb).
    version_margin_bpb: float = Field(default=0.002, ge=0.0)
    version_margin_rel: float = Field(default=0.002, ge=0.0)
    # Held-out means closer than this (at the margin boundary) are a near-tie: probe bpb decides.
    tie_tolerance_bpb: float = Field(default=0.0005, ge=0.0)
    # Training noise margin: max(abs, rel * baseline bpb, z * stderr of per-cell paired differences).
    training_z: float = Field(default=2.0, ge=0.0)
    training_abs_min_delta_bpb: float = Field(default=0.002, ge=0.0)
    training_rel_min_delta: float = Field(default=0.002, ge=0.0)
    unclaimed_rule: UnclaimedRule = "redistribute"
    burn_uid: int = Field(default=0, ge=0)
    # Share of a family's architecture reward its owner keeps while another hotkey's version is
    # canonical; the submitter of the canonical version gets the rest (1.0: the owner keeps all).
    owner_share: float = Field(default=1.0, ge=0.0, le=1.0)
    # "unpaired": each side's own cell means; "paired": a contrast on the challenger's windows,
    # pending (incumbent stays) until measured. See prism.scoring.paired.
    comparison: ComparisonMode = "unpaired"
    # Lead and canonical changes also need gain > architecture_z * stderr of the difference.
    architecture_z: float = Field(default=0.0, ge=0.0)
    # Training recipes are copies when a fingerprint was seen earlier in the family or anywhere.
    training_dedup: TrainingDedup = "family"
    # A new family within prism.identity's edit-distance threshold of an earlier one is a version of it.
    near_duplicates: bool = False
    # Added to a margin when the two sides ran on different software stacks (torch/CUDA/cuDNN).
    stack_tolerance_bpb: float = Field(default=0.0, ge=0.0)
    # Screening (prism.scoring.screening): a first cell behind the leader's by more than
    # max(abs, rel * leader bpb) ends the submission's evaluation. 0 and 0: no screening.
    screening_margin_bpb: float = Field(default=0.0, ge=0.0)
    screening_margin_rel: float = Field(default=0.0, ge=0.0)

    @model_validator(mode="after")
    def _pools_sum_to_one(self) -> CompetitionRules:
        if abs(self.architecture_pool + self.training_pool - 1.0) > 1e-9:
            raise ValueError("architecture_pool + training_pool must be 1")
        return self


class ScoringPolicy(CompetitionRules):
    """Rules plus what the profile fixes: the cells every score needs and the gate thresholds."""

    profile: str
    profile_version: int = Field(ge=1)
    required_regimes: tuple[str, ...] = Field(min_length=1)
    required_seeds: tuple[int, ...] = Field(min_length=1)
    smuggle_factor: float = Field(default=0.5, gt=0.0, lt=1.0)
    max_train_heldout_gap_bpb: float = Field(default=0.25, gt=0.0)
    waived_reasons: frozenset[str] = frozenset()
    # Official profiles: every run's seeds must come from the chain beacon (prism.beacon).
    beacon_seeds: bool = False
    # The first cell every architecture submission runs (the smallest regime, the first seed).
    screening_regime: str | None = None
    screening_seed: int | None = None

    @property
    def screens(self) -> bool:
        return self.screening_regime is not None and (
            self.screening_margin_bpb > 0 or self.screening_margin_rel > 0
        )

    @property
    def profile_key(self) -> str:
        return f"{self.profile}@{self.profile_version}"

    @property
    def required_cells(self) -> tuple[tuple[str, int], ...]:
        """Every (regime, seed) a complete score needs, in a fixed order."""
        return tuple((r, s) for r in sorted(self.required_regimes) for s in sorted(self.required_seeds))


#: Version 1: the owner keeps the whole architecture reward, unpaired means, recipe dedup per family.
RULES_V1 = CompetitionRules(version=1)

#: Version 2 (issue 10, "pay progress"): in-family improvers share the reward, every contest is
#: paired on the challenger's windows with a z * stderr floor, recipes are deduplicated globally,
#: near-duplicate families merge, runs of other software stacks need 0.001 bpb more, and a first
#: cell more than max(0.05, 2 %) behind the leader's ends a submission's evaluation (screening).
RULES_V2 = CompetitionRules(
    version=2,
    owner_share=0.5,
    comparison="paired",
    architecture_z=2.0,
    training_dedup="global",
    near_duplicates=True,
    stack_tolerance_bpb=0.001,
    screening_margin_bpb=0.05,
    screening_margin_rel=0.02,
)
RULES_V2_ACTIVATION_BLOCK = 1

#: (activation block, rules), ascending. Append new versions; never edit an activated one.
RULES_SCHEDULE: tuple[tuple[int, CompetitionRules], ...] = (
    (0, RULES_V1),
    (RULES_V2_ACTIVATION_BLOCK, RULES_V2),
)


def rules_at_block(block: int) -> CompetitionRules:
    """The rule set active at ``block`` (the last one whose activation block is <= block)."""
    active = [rules for start, rules in RULES_SCHEDULE if start <= block]
    if not active:
        raise OperatorError(f"no scoring rules active at block {block}", code="scoring.no_rules")
    return active[-1]


def policy_for_profile(profile: Profile, *, block: int = 0, **overrides: Any) -> ScoringPolicy:
    """Join the rules active at ``block`` with ``profile``; ``overrides`` replace any field."""
    fields: dict[str, Any] = rules_at_block(block).model_dump()
    fields.update(
        profile=profile.name,
        profile_version=profile.version,
        required_regimes=tuple(r.name for r in profile.regimes),
        required_seeds=tuple(profile.seeds),
        smuggle_factor=profile.gates.smuggle_factor,
        max_train_heldout_gap_bpb=profile.gates.max_train_heldout_gap_bpb,
        beacon_seeds=profile.official,
        screening_regime=min(profile.regimes, key=lambda r: (r.max_parameters, r.train_tokens)).name,
        screening_seed=profile.seeds[0],
    )
    fields.update(overrides)
    return ScoringPolicy.model_validate(fields)
