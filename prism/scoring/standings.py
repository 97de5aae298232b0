"""Outputs of the two competitions, before pools and uids are applied."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from prism.scoring.comparison import Comparison
from prism.scoring.submissions import SubmissionVerdict

EventKind = Literal["family_founded", "canonical_version", "architecture_lead", "training_best"]


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


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
    """One family. ``canonical_*``: who submitted the canonical version (the improver, when it is
    not the owner) and the comparison that made it canonical; ``lead_*``: the family's last
    contest for the lead (how it took it, or why it does not hold it). Differences are
    incumbent minus challenger bpb, positive when the challenger measured better."""

    family_id: str
    owner_hotkey: str
    owner_zip_sha256: str
    founded_block: int
    canonical_version_id: str
    heldout_bpb: float
    probe_bpb: float
    runs: int
    leader: bool = False
    canonical_hotkey: str | None = None
    canonical_zip_sha256: str | None = None
    canonical_difference_bpb: float | None = None
    canonical_stderr_bpb: float | None = None
    lead_difference_bpb: float | None = None
    lead_stderr_bpb: float | None = None


class VariantEntry(_Frozen):
    """One training variant. Under paired rules ``baseline_bpb`` and ``variant_bpb`` are measured
    on the variant's windows and ``improvement_bpb`` is their paired difference; ``pending``
    means that measurement is not there yet (the numbers are then each side's own means)."""

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
    stderr_bpb: float = 0.0
    paired: bool = False
    pending: bool = False


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
    comparisons: tuple[Comparison, ...] = ()
