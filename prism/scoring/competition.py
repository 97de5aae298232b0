"""The two competitions: families/versions (architecture) and variants (training).

Everything is a replay in submission order (commit block, then hotkey, then sha), so the
outcome is a pure function of the stored results: the first scored submission of a family owns
it; a later version becomes canonical only past the version margin; a newer family takes the
architecture lead only past the family margin over the leader of that moment; within a family
the current best training variant changes only past the noise margin. The replays live in
``prism.scoring.architecture`` and ``prism.scoring.training``; this module runs them and
assembles the ``Standings``.
"""

from __future__ import annotations

from collections.abc import Sequence

from prism.scoring.architecture import Family, replay_architecture, version_representatives
from prism.scoring.comparison import Comparison
from prism.scoring.near_duplicates import merge_near_duplicates
from prism.scoring.policy import ScoringPolicy
from prism.scoring.records import SubmissionRecord
from prism.scoring.screening import REASON as SCREEN_REASON
from prism.scoring.screening import screened_out
from prism.scoring.standings import FamilyEntry, OwnershipEvent, Standings, VariantEntry, VersionEntry
from prism.scoring.submissions import Sub, prepare
from prism.scoring.training import Variant, replay_training


def _valid_runs(sub: Sub) -> int:
    return sum(1 for v in sub.verdicts if v.outcome == "valid")


def _family_entry(family: Family, subs: list[Sub], leader: str | None) -> FamilyEntry:
    family_id = family.family_id
    members = [s for s in subs if s.record.family_id == family_id and s.eligible]
    heldout, probe = family.score
    canonical, lead = family.canonical_comparison, family.lead_comparison
    return FamilyEntry(
        family_id=family_id,
        owner_hotkey=family.founder.record.hotkey,
        owner_zip_sha256=family.founder.record.zip_sha256,
        founded_block=family.founder.record.commit_block,
        canonical_version_id=family.canonical.record.version_id or "",
        heldout_bpb=heldout,
        probe_bpb=probe,
        runs=sum(_valid_runs(s) for s in members),
        leader=family_id == leader,
        canonical_hotkey=family.canonical.record.hotkey,
        canonical_zip_sha256=family.canonical.record.zip_sha256,
        canonical_difference_bpb=canonical.difference_bpb if canonical is not None else None,
        canonical_stderr_bpb=canonical.stderr_bpb if canonical is not None else None,
        lead_difference_bpb=lead.difference_bpb if lead is not None else None,
        lead_stderr_bpb=lead.stderr_bpb if lead is not None else None,
    )


def _variant_entry(v: Variant, best: dict[str, Variant]) -> VariantEntry:
    r = v.sub.record
    return VariantEntry(
        family_id=v.family_id,
        version_id=r.version_id or "",
        hotkey=r.hotkey,
        zip_sha256=r.zip_sha256,
        commit_block=r.commit_block,
        baseline_bpb=v.baseline_bpb,
        variant_bpb=v.variant_bpb,
        improvement_bpb=v.improvement,
        margin_bpb=v.margin,
        qualifies=v.qualifies,
        best=best.get(v.family_id) is v,
        stderr_bpb=v.stderr,
        paired=v.paired,
        pending=v.pending,
    )


def _version_entries(reps: dict[str, Sub], families: dict[str, Family]) -> list[VersionEntry]:
    return [
        VersionEntry(
            version_id=version_id,
            family_id=sub.record.family_id or "",
            hotkey=sub.record.hotkey,
            zip_sha256=sub.record.zip_sha256,
            commit_block=sub.record.commit_block,
            heldout_bpb=sub.reference.mean_heldout_bpb,
            probe_bpb=sub.reference.mean_probe_bpb,
            canonical=any(f.canonical is sub for f in families.values()),
        )
        for version_id, sub in sorted(reps.items())
    ]


def run_competitions(records: Sequence[SubmissionRecord], policy: ScoringPolicy) -> Standings:
    """Both competitions over ``records`` under ``policy``; independent of the input order.

    With screening, a first replay finds the leader each submission faced; submissions screened
    out against it take part in nothing in the second, final replay (prism.scoring.screening).
    """
    merged = merge_near_duplicates(records, policy)
    screened = (
        screened_out(merged, policy, _replay(merged, policy, frozenset())) if policy.screens else frozenset()
    )
    return _replay(merged, policy, frozenset(screened))


def _replay(
    records: Sequence[SubmissionRecord], policy: ScoringPolicy, screened: frozenset[str]
) -> Standings:
    subs = prepare(records, policy)
    for sub in subs:
        if sub.record.zip_sha256 in screened:
            sub.reasons.add(SCREEN_REASON)
            sub.eligible = False
    events: list[OwnershipEvent] = []
    comparisons: list[Comparison] = []
    reps = version_representatives(subs)
    families, leader = replay_architecture(reps, policy, events, comparisons)
    variants, best = replay_training(subs, families, reps, policy, events, comparisons)
    return Standings(
        families=tuple(_family_entry(families[f], subs, leader) for f in sorted(families)),
        versions=tuple(_version_entries(reps, families)),
        variants=tuple(_variant_entry(v, best) for v in variants),
        leader_family_id=leader,
        submissions=tuple(s.verdict() for s in subs),
        # one timeline: architecture and training events interleaved by commit block (stable sort)
        events=tuple(sorted(events, key=lambda e: e.block)),
        comparisons=tuple(comparisons),
    )
