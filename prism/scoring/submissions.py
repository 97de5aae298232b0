"""Per-submission working state of one scoring pass: verdicts, cells, reasons, paired windows.

Records are merged (duplicates of one submission pool their runs and measurements) and put in
submission order, exact copies and intake rejections are marked; the competitions then read
and annotate these objects. Nothing here leaves the scoring package except as
``SubmissionVerdict``.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict

from prism.manifest import RecipeMode
from prism.scoring.paired import RunSet, WindowIndex
from prism.scoring.policy import ScoringPolicy
from prism.scoring.records import SubmissionKind, SubmissionRecord
from prism.scoring.validation import ModeResult, RunVerdict, check_run, mode_result


class SubmissionVerdict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    hotkey: str
    zip_sha256: str
    commit_block: int
    kind: SubmissionKind
    family_id: str | None
    version_id: str | None
    reasons: tuple[str, ...]
    reference_bpb: float | None = None
    runs: tuple[RunVerdict, ...] = ()


class Sub:
    """Mutable working state of one submission during the replay (never leaves the package)."""

    def __init__(self, record: SubmissionRecord, policy: ScoringPolicy) -> None:
        self.record = record
        self.reasons: set[str] = set()
        self.verdicts: list[RunVerdict] = sorted(
            (check_run(m, record, policy) for m in record.runs),
            key=lambda v: (v.recipe_mode, v.regime, v.seed, v.run_id),
        )
        self.reference: ModeResult = mode_result(self.verdicts, "reference", policy)
        self.submitted: ModeResult = mode_result(self.verdicts, "submitted", policy)
        self.windows = WindowIndex(record.paired, policy.profile_key, record.zip_sha256)
        self.eligible = True

    def mode(self, recipe_mode: RecipeMode) -> ModeResult:
        return self.reference if recipe_mode == "reference" else self.submitted

    def stack(self, recipe_mode: RecipeMode) -> str | None:
        """The software stack of this submission's runs of ``recipe_mode`` (the first that names one)."""
        return next(
            (
                m.comparability.stack
                for m in self.record.runs
                if m.recipe_mode == recipe_mode and m.comparability.stack
            ),
            None,
        )

    def runset(self, recipe_mode: RecipeMode) -> RunSet:
        """The run of every required cell (only meaningful once the mode is complete)."""
        cells = self.mode(recipe_mode).cells
        return RunSet(self.record.zip_sha256, recipe_mode, tuple(c.run_id or "" for c in cells))

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


def merge_duplicates(records: Sequence[SubmissionRecord]) -> list[SubmissionRecord]:
    """One record per (commit, hotkey, sha) in submission order; runs and paired measurements of
    duplicates are pooled (runs by run_id) so the result cannot depend on which came first."""
    grouped: dict[tuple[int, str, str], list[SubmissionRecord]] = {}
    for record in records:
        grouped.setdefault(record.order_key, []).append(record)
    merged = []
    for order_key in sorted(grouped):
        group = sorted(grouped[order_key], key=lambda r: r.model_dump_json(exclude={"runs", "paired"}))
        if len(group) == 1:
            merged.append(group[0])
            continue
        runs = {run.run_id: run for r in group for run in r.runs}
        paired = sorted({m.model_dump_json(): m for r in group for m in r.paired}.items())
        merged.append(
            group[0].model_copy(
                update={"runs": tuple(runs[k] for k in sorted(runs)), "paired": tuple(m for _, m in paired)}
            )
        )
    return merged


def prepare(records: Sequence[SubmissionRecord], policy: ScoringPolicy) -> list[Sub]:
    """Order submissions and mark exact copies and intake rejections."""
    subs = [Sub(r, policy) for r in merge_duplicates(records)]
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
