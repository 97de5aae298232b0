"""The two competitions: families/versions (architecture) and variants (training).

Everything is a replay in submission order (commit block, then hotkey, then sha), so the
outcome is a pure function of the stored results: the first scored submission of a family owns
it; a later version becomes canonical only past the version margin; a newer family takes the
architecture lead only past the family margin over the leader of that moment; within a family
the current best training variant changes only past the noise margin.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict

from prism.scoring.policy import ScoringPolicy
from prism.scoring.records import SubmissionKind, SubmissionRecord
from prism.scoring.validation import ModeResult, RunVerdict, check_run, mode_result

EventKind = Literal["family_founded", "canonical_version", "architecture_lead", "training_best"]


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SubmissionVerdict(_Frozen):
    hotkey: str
    zip_sha256: str
    commit_block: int
    kind: SubmissionKind
    family_id: str | None
    version_id: str | None
    reasons: tuple[str, ...]
    reference_bpb: float | None = None
    runs: tuple[RunVerdict, ...] = ()


class VersionEntry(_Frozen):
    version_id: str
    family_id: str
    hotkey: str
    zip_sha256: str
    commit_block: int
    heldout_bpb: float | None
    probe_bpb: float | None
    canonical: bool = False


class FamilyEntry(_Frozen):
    family_id: str
    owner_hotkey: str
    owner_zip_sha256: str
    founded_block: int
    canonical_version_id: str
    heldout_bpb: float
    probe_bpb: float
    runs: int
    leader: bool = False


class VariantEntry(_Frozen):
    family_id: str
    version_id: str
    hotkey: str
    zip_sha256: str
    commit_block: int
    baseline_bpb: float
    variant_bpb: float
    improvement_bpb: float
    margin_bpb: float
    qualifies: bool
    best: bool = False


class OwnershipEvent(_Frozen):
    block: int
    kind: EventKind
    family_id: str
    hotkey: str
    zip_sha256: str
    version_id: str | None = None


class Standings(_Frozen):
    """Outcome of both competitions before pools and uids are applied."""

    families: tuple[FamilyEntry, ...]
    versions: tuple[VersionEntry, ...]
    variants: tuple[VariantEntry, ...]
    leader_family_id: str | None
    submissions: tuple[SubmissionVerdict, ...]
    events: tuple[OwnershipEvent, ...]


# ---------------------------------------------------------------------------------------------
# Comparisons


def relative_margin(absolute: float, relative: float, reference_bpb: float) -> float:
    return max(absolute, relative * reference_bpb)


def beats(
    challenger: tuple[float, float], incumbent: tuple[float, float], margin: float, tolerance: float
) -> bool:
    """``(heldout, probe)`` pairs: does the challenger beat the incumbent by ``margin``?

    Within ``tolerance`` of the margin boundary the held-out difference is a near-tie and the
    probe bpb decides (strictly lower wins); an exact tie keeps the incumbent (earlier commit).
    """
    gain = incumbent[0] - challenger[0]
    if gain > margin + tolerance:
        return True
    if gain < margin - tolerance:
        return False
    return challenger[1] < incumbent[1]


def paired_mean_and_stderr(differences: Sequence[float]) -> tuple[float, float]:
    """Mean and standard error (sample stdev / sqrt n) of per-cell paired differences."""
    n = len(differences)
    mean = math.fsum(differences) / n
    if n < 2:
        return mean, 0.0
    variance = math.fsum((d - mean) ** 2 for d in differences) / (n - 1)
    return mean, math.sqrt(variance) / math.sqrt(n)


def noise_margin(differences: Sequence[float], baseline_bpb: float, policy: ScoringPolicy) -> float:
    """max(abs_min_delta, rel_min_delta * baseline, z * stderr(differences))."""
    _, stderr = paired_mean_and_stderr(differences)
    return max(
        policy.training_abs_min_delta_bpb,
        policy.training_rel_min_delta * baseline_bpb,
        policy.training_z * stderr,
    )


# ---------------------------------------------------------------------------------------------
# Per-submission preparation


class _Sub:
    """Mutable working state of one submission during the replay (never leaves this module)."""

    def __init__(self, record: SubmissionRecord, policy: ScoringPolicy) -> None:
        self.record = record
        self.reasons: set[str] = set()
        self.verdicts: list[RunVerdict] = sorted(
            (check_run(m, record, policy) for m in record.runs),
            key=lambda v: (v.recipe_mode, v.regime, v.seed, v.run_id),
        )
        self.reference: ModeResult = mode_result(self.verdicts, "reference", policy)
        self.submitted: ModeResult = mode_result(self.verdicts, "submitted", policy)
        self.eligible = True

    def verdict(self) -> SubmissionVerdict:
        r = self.record
        return SubmissionVerdict(
            hotkey=r.hotkey,
            zip_sha256=r.zip_sha256,
            commit_block=r.commit_block,
            kind=r.kind,
            family_id=r.family_id,
            version_id=r.version_id,
            reasons=tuple(sorted(self.reasons)),
            reference_bpb=self.reference.mean_heldout_bpb,
            runs=tuple(self.verdicts),
        )


def _merge_duplicates(records: Sequence[SubmissionRecord]) -> list[SubmissionRecord]:
    """One record per (commit, hotkey, sha) in submission order; runs of duplicates are pooled
    (sorted by run_id) so the result cannot depend on which duplicate came first."""
    grouped: dict[tuple[int, str, str], list[SubmissionRecord]] = {}
    for record in records:
        grouped.setdefault(record.order_key, []).append(record)
    merged = []
    for order_key in sorted(grouped):
        group = sorted(grouped[order_key], key=lambda r: r.model_dump_json(exclude={"runs"}))
        if len(group) == 1:
            merged.append(group[0])
            continue
        runs = {run.run_id: run for r in group for run in r.runs}
        merged.append(group[0].model_copy(update={"runs": tuple(runs[k] for k in sorted(runs))}))
    return merged


def _prepare(records: Sequence[SubmissionRecord], policy: ScoringPolicy) -> list[_Sub]:
    """Order submissions and mark exact copies and intake rejections."""
    subs = [_Sub(r, policy) for r in _merge_duplicates(records)]
    seen_sha: set[str] = set()
    for sub in subs:
        if sub.record.zip_sha256 in seen_sha:
            sub.reasons.add("copy.exact")
            sub.eligible = False
        seen_sha.add(sub.record.zip_sha256)
        if not sub.record.intake_ok:
            sub.reasons.add("intake.rejected")
            sub.eligible = False
        elif sub.record.family_id is None or sub.record.version_id is None:
            sub.reasons.add("submission.no_family")
            sub.eligible = False
    return subs


# ---------------------------------------------------------------------------------------------
# Architecture competition


class _Family:
    def __init__(self, founder: _Sub) -> None:
        self.founder = founder
        self.canonical = founder

    @property
    def score(self) -> tuple[float, float]:
        ref = self.canonical.reference
        assert ref.mean_heldout_bpb is not None and ref.mean_probe_bpb is not None
        return (ref.mean_heldout_bpb, ref.mean_probe_bpb)


def _version_representatives(subs: list[_Sub]) -> dict[str, _Sub]:
    """The first architecture submission of each version; later ones are version copies."""
    reps: dict[str, _Sub] = {}
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


def _event(kind: EventKind, sub: _Sub, family_id: str) -> OwnershipEvent:
    r = sub.record
    return OwnershipEvent(
        block=r.commit_block,
        kind=kind,
        family_id=family_id,
        hotkey=r.hotkey,
        zip_sha256=r.zip_sha256,
        version_id=r.version_id,
    )


def _replay_architecture(
    reps: dict[str, _Sub], policy: ScoringPolicy, events: list[OwnershipEvent]
) -> tuple[dict[str, _Family], str | None]:
    families: dict[str, _Family] = {}
    leader: str | None = None
    scored = sorted((s for s in reps.values() if s.reference.complete), key=lambda s: s.record.order_key)
    for sub in scored:
        family_id = sub.record.family_id
        assert family_id is not None
        family = families.get(family_id)
        if family is None:
            family = families[family_id] = _Family(sub)
            events.append(_event("family_founded", sub, family_id))
            events.append(_event("canonical_version", sub, family_id))
        else:
            if sub.record.hotkey != family.founder.record.hotkey:
                sub.reasons.add("copy.family")
            candidate = (sub.reference.mean_heldout_bpb or 0.0, sub.reference.mean_probe_bpb or 0.0)
            margin = relative_margin(policy.version_margin_bpb, policy.version_margin_rel, family.score[0])
            if beats(candidate, family.score, margin, policy.tie_tolerance_bpb):
                family.canonical = sub
                events.append(_event("canonical_version", sub, family_id))
        if leader is None:
            leader = family_id
            events.append(_event("architecture_lead", family.founder, family_id))
        elif leader != family_id:
            incumbent = families[leader].score
            margin = relative_margin(policy.family_margin_bpb, policy.family_margin_rel, incumbent[0])
            if beats(family.score, incumbent, margin, policy.tie_tolerance_bpb):
                leader = family_id
                events.append(_event("architecture_lead", family.founder, family_id))
    return families, leader


# ---------------------------------------------------------------------------------------------
# Training competition


class _Variant:
    def __init__(self, sub: _Sub, baseline: ModeResult, policy: ScoringPolicy) -> None:
        self.sub = sub
        base = [c.heldout_bpb or 0.0 for c in baseline.cells]
        mine = [c.heldout_bpb or 0.0 for c in sub.submitted.cells]
        self.baseline_bpb = math.fsum(base) / len(base)
        self.variant_bpb = math.fsum(mine) / len(mine)
        self.gains = [b - v for b, v in zip(base, mine, strict=True)]
        self.improvement, _ = paired_mean_and_stderr(self.gains)
        self.margin = noise_margin(self.gains, self.baseline_bpb, policy)
        self.qualifies = self.improvement > self.margin

    def beats(self, best: _Variant, policy: ScoringPolicy) -> bool:
        """Past the noise margin of the per-cell difference of the two improvements."""
        deltas = [mine - theirs for mine, theirs in zip(self.gains, best.gains, strict=True)]
        mean, _ = paired_mean_and_stderr(deltas)
        return mean > noise_margin(deltas, best.baseline_bpb, policy)


def _variant_candidate(
    sub: _Sub, families: dict[str, _Family], reps: dict[str, _Sub], policy: ScoringPolicy
) -> _Variant | None:
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
    return _Variant(sub, baseline.reference, policy)


def _replay_training(
    subs: list[_Sub],
    families: dict[str, _Family],
    reps: dict[str, _Sub],
    policy: ScoringPolicy,
    events: list[OwnershipEvent],
) -> tuple[list[_Variant], dict[str, _Variant]]:
    variants: list[_Variant] = []
    best: dict[str, _Variant] = {}
    fingerprints: dict[str, set[str]] = {}
    for sub in subs:
        r = sub.record
        if not (sub.eligible and r.competes_in_training):
            continue
        if r.training_fingerprint is not None and r.family_id is not None:
            seen = fingerprints.setdefault(r.family_id, set())
            if r.training_fingerprint in seen:
                sub.reasons.add("copy.training")
                continue
            seen.add(r.training_fingerprint)
        variant = _variant_candidate(sub, families, reps, policy)
        if variant is None:
            continue
        variants.append(variant)
        family_id = r.family_id or ""
        current = best.get(family_id)
        if variant.qualifies and (current is None or variant.beats(current, policy)):
            best[family_id] = variant
            events.append(_event("training_best", sub, family_id))
        else:
            sub.reasons.add("training.below_margin")
    return variants, best


# ---------------------------------------------------------------------------------------------
# Entry point


def _valid_runs(sub: _Sub) -> int:
    return sum(1 for v in sub.verdicts if v.outcome == "valid")


def run_competitions(records: Sequence[SubmissionRecord], policy: ScoringPolicy) -> Standings:
    """Both competitions over ``records`` under ``policy``; independent of the input order."""
    subs = _prepare(records, policy)
    events: list[OwnershipEvent] = []
    reps = _version_representatives(subs)
    families, leader = _replay_architecture(reps, policy, events)
    variants, best = _replay_training(subs, families, reps, policy, events)

    family_entries = []
    for family_id in sorted(families):
        family = families[family_id]
        members = [s for s in subs if s.record.family_id == family_id and s.eligible]
        heldout, probe = family.score
        family_entries.append(
            FamilyEntry(
                family_id=family_id,
                owner_hotkey=family.founder.record.hotkey,
                owner_zip_sha256=family.founder.record.zip_sha256,
                founded_block=family.founder.record.commit_block,
                canonical_version_id=family.canonical.record.version_id or "",
                heldout_bpb=heldout,
                probe_bpb=probe,
                runs=sum(_valid_runs(s) for s in members),
                leader=family_id == leader,
            )
        )
    version_entries = [
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
    variant_entries = [
        VariantEntry(
            family_id=v.sub.record.family_id or "",
            version_id=v.sub.record.version_id or "",
            hotkey=v.sub.record.hotkey,
            zip_sha256=v.sub.record.zip_sha256,
            commit_block=v.sub.record.commit_block,
            baseline_bpb=v.baseline_bpb,
            variant_bpb=v.variant_bpb,
            improvement_bpb=v.improvement,
            margin_bpb=v.margin,
            qualifies=v.qualifies,
            best=best.get(v.sub.record.family_id or "") is v,
        )
        for v in variants
    ]
    return Standings(
        families=tuple(family_entries),
        versions=tuple(version_entries),
        variants=tuple(variant_entries),
        leader_family_id=leader,
        submissions=tuple(s.verdict() for s in subs),
        # one timeline: architecture and training events interleaved by commit block (stable sort)
        events=tuple(sorted(events, key=lambda e: e.block)),
    )
