"""Architecture competition: versions, families, canonical versions and the lead.

Scored versions are replayed in submission order. A version of an unknown family founds it (its
submitter owns it for good); a later version becomes canonical only if it beats the canonical
one by the version margin; a family whose canonical version changed takes the lead only if it
beats the leader by the family margin. Under rules with ``owner_share < 1`` the submitter of
the canonical version shares the family's reward (prism.scoring.weights).
"""

from __future__ import annotations

from prism.manifest import RecipeMode
from prism.scoring.comparison import (
    Comparison,
    ComparisonKind,
    Contest,
    Side,
    decided,
    gain_beats,
    pending,
    relative_margin,
    unpaired_estimate,
)
from prism.scoring.paired import combine_coefficients, paired_estimate
from prism.scoring.policy import ScoringPolicy
from prism.scoring.standings import EventKind, OwnershipEvent
from prism.scoring.submissions import Sub


class Family:
    def __init__(self, founder: Sub) -> None:
        self.founder = founder
        self.canonical = founder
        self.canonical_comparison: Comparison | None = None  # the win that made it canonical
        self.lead_comparison: Comparison | None = None  # its last contest for the lead
        self.former_canonicals: list[Sub] = []

    @property
    def family_id(self) -> str:
        return self.founder.record.family_id or ""

    @property
    def score(self) -> tuple[float, float]:
        ref = self.canonical.reference
        assert ref.mean_heldout_bpb is not None and ref.mean_probe_bpb is not None
        return (ref.mean_heldout_bpb, ref.mean_probe_bpb)


def event(kind: EventKind, sub: Sub, family_id: str) -> OwnershipEvent:
    r = sub.record
    return OwnershipEvent(
        block=r.commit_block,
        kind=kind,
        family_id=family_id,
        hotkey=r.hotkey,
        zip_sha256=r.zip_sha256,
        version_id=r.version_id,
    )


def side(sub: Sub, mode: RecipeMode = "reference") -> Side:
    return Side(hotkey=sub.record.hotkey, zip_sha256=sub.record.zip_sha256, recipe_mode=mode)


def version_representatives(subs: list[Sub]) -> dict[str, Sub]:
    """The first architecture submission of each version; later ones are version copies."""
    reps: dict[str, Sub] = {}
    for sub in subs:
        if not (sub.eligible and sub.record.competes_in_architecture):
            continue
        version = sub.record.version_id
        assert version is not None
        if version in reps:
            sub.reasons.add("copy.version")
            continue
        reps[version] = sub
        sub.reasons.update(sub.reference.reasons)
    return reps


def compare_architectures(
    kind: ComparisonKind,
    family_id: str,
    challenger: Sub,
    incumbent: Sub,
    margin: float,
    policy: ScoringPolicy,
) -> Comparison:
    """``challenger`` vs ``incumbent`` on their reference runs, past ``margin``."""
    paired = policy.comparison == "paired"
    contest = Contest(
        kind, family_id, challenger.record.commit_block, side(challenger), side(incumbent), paired
    )
    if paired:
        coefs = combine_coefficients(
            [(incumbent.runset("reference"), 1.0), (challenger.runset("reference"), -1.0)]
        )
        estimate = paired_estimate(
            challenger.windows, challenger.runset("reference"), policy.required_cells, coefs
        )
        if isinstance(estimate, list):
            return pending(contest, estimate)
        if estimate.forfeit is not None:
            return decided(contest, estimate, margin, estimate.forfeit == "incumbent")
    else:
        estimate = unpaired_estimate(incumbent.reference.heldout_values, challenger.reference.heldout_values)
    if challenger.stack("reference") != incumbent.stack("reference"):
        margin += policy.stack_tolerance_bpb  # different torch/CUDA builds move numbers a little
    required = max(margin, policy.architecture_z * estimate.stderr_bpb)
    probes = (challenger.reference.mean_probe_bpb or 0.0, incumbent.reference.mean_probe_bpb or 0.0)
    wins = gain_beats(estimate.difference_bpb, required, policy.tie_tolerance_bpb, probes)
    return decided(contest, estimate, required, wins)


def _lost(sub: Sub, family: Family, comparison: Comparison, policy: ScoringPolicy) -> None:
    """Why a later version of a known family earns nothing."""
    if policy.owner_share >= 1.0:
        if sub.record.hotkey != family.founder.record.hotkey:
            sub.reasons.add("copy.family")  # rules v1: only the owner is ever paid
        return
    sub.reasons.add("comparison.pending" if comparison.state == "pending" else "version.below_margin")


def _challenge_canonical(
    sub: Sub,
    family: Family,
    policy: ScoringPolicy,
    comparisons: list[Comparison],
    events: list[OwnershipEvent],
) -> bool:
    margin = relative_margin(policy.version_margin_bpb, policy.version_margin_rel, family.score[0])
    comparison = compare_architectures(
        "canonical_version", family.family_id, sub, family.canonical, margin, policy
    )
    comparisons.append(comparison)
    if not comparison.challenger_wins:
        _lost(sub, family, comparison, policy)
        return False
    if policy.owner_share >= 1.0 and sub.record.hotkey != family.founder.record.hotkey:
        sub.reasons.add("copy.family")
    family.former_canonicals.append(family.canonical)
    family.canonical = sub
    family.canonical_comparison = comparison
    events.append(event("canonical_version", sub, family.family_id))
    return True


def _challenge_lead(
    family: Family, leader: Family, policy: ScoringPolicy, comparisons: list[Comparison]
) -> bool:
    margin = relative_margin(policy.family_margin_bpb, policy.family_margin_rel, leader.score[0])
    comparison = compare_architectures(
        "architecture_lead", family.family_id, family.canonical, leader.canonical, margin, policy
    )
    comparisons.append(comparison)
    family.lead_comparison = comparison
    if comparison.state == "pending":
        family.canonical.reasons.add("comparison.pending")
    return comparison.challenger_wins


def replay_architecture(
    reps: dict[str, Sub], policy: ScoringPolicy, events: list[OwnershipEvent], comparisons: list[Comparison]
) -> tuple[dict[str, Family], str | None]:
    families: dict[str, Family] = {}
    leader: str | None = None
    scored = sorted((s for s in reps.values() if s.reference.complete), key=lambda s: s.record.order_key)
    for sub in scored:
        family_id = sub.record.family_id
        assert family_id is not None
        family = families.get(family_id)
        if family is None:
            family = families[family_id] = Family(sub)
            events.append(event("family_founded", sub, family_id))
            events.append(event("canonical_version", sub, family_id))
        elif not _challenge_canonical(sub, family, policy, comparisons, events):
            continue  # the family's score did not change: its standing against the leader neither
        if leader is None or (
            leader != family_id and _challenge_lead(family, families[leader], policy, comparisons)
        ):
            leader = family_id
            events.append(event("architecture_lead", family.founder, family_id))
    _mark_superseded(families, policy)
    return families, leader


def _mark_superseded(families: dict[str, Family], policy: ScoringPolicy) -> None:
    if policy.owner_share >= 1.0:
        return
    for family in families.values():
        for former in family.former_canonicals:
            if former is not family.founder:
                former.reasons.add("version.superseded")
