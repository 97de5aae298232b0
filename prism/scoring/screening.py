"""Screening: a submission far behind the leader on its first cell is not evaluated further (pure).

Every architecture submission's **first cell** (the profile's smallest regime, its first seed,
reference recipe) runs before the rest of its matrix. A submission whose first-cell held-out bpb
is behind the leader's same cell by more than

    max(screening_margin_bpb, screening_margin_rel * leader's first-cell bpb)

is **screened out** (``screen.behind_leader``): it takes part in nothing, and a validator need
not run its remaining cells. "The leader" is the architecture leader among the submissions
committed *before* it, as the replay in submission order saw it, with that family's canonical
version of that moment. Validators that ran every cell and validators that skipped them reach
the same verdict, because the rule reads only the first cell and earlier submissions' results.
"""

from __future__ import annotations

from collections.abc import Sequence

from prism.scoring.policy import ScoringPolicy
from prism.scoring.records import SubmissionRecord
from prism.scoring.standings import OwnershipEvent, Standings
from prism.scoring.validation import check_run

REASON = "screen.behind_leader"


def first_cell_bpb(record: SubmissionRecord, policy: ScoringPolicy) -> float | None:
    """The submission's valid reference run of the screening cell, if it has one."""
    if policy.screening_regime is None or policy.screening_seed is None:
        return None
    for manifest in sorted(record.runs, key=lambda m: m.run_id):
        if manifest.recipe_mode != "reference" or manifest.regime.name != policy.screening_regime:
            continue
        if manifest.cell_seed != policy.screening_seed:
            continue
        verdict = check_run(manifest, record, policy)
        if verdict.outcome == "valid":
            return verdict.heldout_bpb
    return None


def screening_margin(leader_bpb: float, policy: ScoringPolicy) -> float:
    return max(policy.screening_margin_bpb, policy.screening_margin_rel * leader_bpb)


def behind_leader(candidate_bpb: float, leader_bpb: float, policy: ScoringPolicy) -> bool:
    """The rule itself: behind by more than the screening margin."""
    return candidate_bpb - leader_bpb > screening_margin(leader_bpb, policy)


def _key(event: OwnershipEvent) -> tuple[int, str, str]:
    return (event.block, event.hotkey, event.zip_sha256)


def _incumbent_at(record: SubmissionRecord, events: Sequence[OwnershipEvent]) -> str | None:
    """The zip of the leading family's canonical version just before ``record`` was committed."""
    earlier = [e for e in events if _key(e) < record.order_key]
    leads = [e for e in earlier if e.kind == "architecture_lead"]
    if not leads:
        return None
    family = leads[-1].family_id
    canonical = [e for e in earlier if e.kind == "canonical_version" and e.family_id == family]
    return canonical[-1].zip_sha256 if canonical else None


def screened_out(
    records: Sequence[SubmissionRecord], policy: ScoringPolicy, first_pass: Standings
) -> set[str]:
    """Zips screened out, judged against the leaders of a first replay without screening."""
    if not policy.screens:
        return set()
    by_zip = {r.zip_sha256: r for r in records}
    events = sorted(first_pass.events, key=_key)
    screened = set()
    for record in records:
        if not record.competes_in_architecture:
            continue
        incumbent = _incumbent_at(record, events)
        mine = first_cell_bpb(record, policy)
        theirs = first_cell_bpb(by_zip[incumbent], policy) if incumbent in by_zip else None
        if mine is not None and theirs is not None and behind_leader(mine, theirs, policy):
            screened.add(record.zip_sha256)
    return screened


__all__ = ["REASON", "behind_leader", "first_cell_bpb", "screened_out", "screening_margin"]
