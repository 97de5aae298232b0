"""The simulated population of ``bench_validator_day.py``: submissions of varied quality, and
what screening would save on them at the official GPU profile.

Every submission is one of the examples (gpt, mixer, recurrence, tiny) with its size, depth and
learning rate edited in its code, packed to a ZIP and checked by intake like ``prism check``. A
few are deliberately weak (a learning rate far below the profile's window, so the reference
recipe trains at the window's floor) and a few are exact copies of an earlier ZIP committed by
another hotkey.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from prism.profiles import Profile
from prism.scoring import ScoringPolicy, SubmissionRecord
from prism.scoring.screening import behind_leader, first_cell_bpb, screening_margin
from prism.store import RunKey
from prism.submission import Submission, check_submission, pack_to
from prism.validator import planned_runs
from prism.validator.intake_stage import screening_cell

ROOT = Path(__file__).resolve().parents[1]
BASES = ("gpt", "mixer", "recurrence", "tiny")
# (scale, depth cap, learning rate). scale: the share of the parameter budget the model sizes
# itself to (gpt and mixer; recurrence takes half of that); tiny has one
# embedding and one projection, whose width follows scale x depth.
GRID = tuple(
    (scale, depth, lr) for lr in (1e-3, 3e-3, 6e-4) for scale in (1.0, 0.6, 0.35) for depth in (3, 2, 1)
)
WEAK_LR = 1e-5  # below every profile's lr window: the reference recipe trains at the floor
# GPU minutes per cell of gpu_proxy_eval, low and high: docs/evaluator.md's estimate ("p20m
# ~5-10 min, p60m ~30-45 min per seed"), not a measurement (no GPU was lent to this work).
GPU_MINUTES_PER_CELL = {"p20m": (5.0, 10.0), "p60m": (30.0, 45.0)}


@dataclass(frozen=True)
class Entry:
    """One hotkey's submission: a variant of an example, or a copy of an earlier entry's ZIP."""

    label: str
    base: str
    zip_path: Path
    submission: Submission
    weak: bool = False
    copy_of: str | None = None

    @property
    def sha256(self) -> str:
        return self.submission.zip_sha256


def _replace(path: Path, old: str, new: str, count: int = 1) -> None:
    """Replace every ``old`` (exactly ``count`` of them) in ``path``."""
    text = path.read_text()
    if text.count(old) != count:
        raise RuntimeError(f"{path}: expected {count} x {old!r}; has the example changed?")
    path.write_text(text.replace(old, new))


def _sizing(call: str, scale: float, depth: int) -> tuple[str, str]:
    """gpt and mixer size themselves with ``call(vocab, T, max_layers, max_parameters)``."""
    old = f"{call}(ctx.vocab_size, ctx.sequence_length, ctx.max_layers, ctx.max_parameters)"
    return old, old.replace("ctx.max_layers", f"min(ctx.max_layers, {depth})").replace(
        "ctx.max_parameters)", f"int(ctx.max_parameters * {scale}))"
    )


def _edit(base: str, src: Path, scale: float, depth: int, lr: float) -> None:
    model = src / "model.py"
    if base == "gpt":  # build_model and get_recipe both size the model
        _replace(model, *_sizing("choose_config", scale, depth), count=2)
        _replace(
            src / "train.py", "learning_rate = 1e-3 if d_model <= 256 else 6e-4", f"learning_rate = {lr!r}"
        )
    elif base == "mixer":
        _replace(model, *_sizing("choose_shape", scale, depth))
        _replace(model, "learning_rate=2e-3", f"learning_rate={lr!r}")
    elif base == "recurrence":
        _replace(model, "min(ctx.max_layers, 4)", f"min(ctx.max_layers, {depth})")
        # the example (4 blocks, its full budget) trains at 2.1-2.3x the reference's CPU time on
        # local_cpu_smoke (cap 3.0 since @3, 2.25 before); 4 blocks at half the budget measured
        # 1.74x, so at most 3 blocks and half the budget keep every variant well clear of the cap
        _replace(model, "<= ctx.max_parameters", f"<= int(ctx.max_parameters * {scale * 0.5})")
        _replace(model, "learning_rate=2e-3", f"learning_rate={lr!r}")
    else:  # tiny: an embedding and a projection, 64 wide; 18..96 here (96 fits tests' tiny profile)
        width = 8 + int(88 * scale * depth / 3)
        _replace(model, "64", str(width), count=2)
        _replace(src / "train.py", "learning_rate=3e-4", f"learning_rate={lr!r}")


def _checked(zip_path: Path) -> Submission:
    """Intake as ``prism check`` runs it: every problem found, or the submission."""
    report = check_submission(zip_path)
    if not report.ok or report.submission is None:
        raise RuntimeError(f"{zip_path.name} fails intake: {[p.to_dict() for p in report.problems]}")
    return report.submission


def _variant(work: Path, index: int, base: str, variant: int, weak: bool) -> Entry:
    scale, depth, lr = GRID[(variant * 7) % len(GRID)]
    lr = round(WEAK_LR * (1 + 0.1 * variant), 9) if weak else lr  # distinct, all below the window
    label = f"{index:03d}-{base}-s{scale}-d{depth}-lr{lr:g}"
    src = shutil.copytree(ROOT / "examples" / base, work / "src" / label)
    _edit(base, src / "src", scale, depth, lr)
    zip_path = work / "zips" / f"{label}.zip"
    zip_path.parent.mkdir(parents=True, exist_ok=True)
    pack_to(src, zip_path)
    return Entry(label=label, base=base, zip_path=zip_path, submission=_checked(zip_path), weak=weak)


def build_population(work: Path, count: int) -> list[Entry]:
    """``count`` entries in commit order: every 16th a copy of an earlier ZIP, every 7th weak."""
    entries: list[Entry] = []
    made = {base: 0 for base in BASES}
    for index in range(count):
        if index % 16 == 15:
            originals = [e for e in entries if e.copy_of is None]
            original = originals[(index // 16 * 5 + 6) % len(originals)]
            entries.append(Entry(label=f"{index:03d}-copy-of-{original.label[:3]}", base=original.base,
                                 zip_path=original.zip_path, submission=original.submission,
                                 copy_of=original.label))  # fmt: skip
            continue
        base = BASES[index % len(BASES)]
        entries.append(_variant(work, index, base, made[base], weak=index % 7 == 3))
        made[base] += 1
    shas = [e.sha256 for e in entries if e.copy_of is None]
    if len(set(shas)) != len(shas):
        raise RuntimeError("two variants packed to the same ZIP: the population has unintended copies")
    return entries


# --- screening on the official profile --------------------------------------------------------


def _gpu_hours(runs: list[RunKey]) -> tuple[float, float]:
    low = sum(GPU_MINUTES_PER_CELL[r.regime][0] for r in runs) / 60
    high = sum(GPU_MINUTES_PER_CELL[r.regime][1] for r in runs) / 60
    return low, high


def screening_savings(
    entries: list[Entry], records: list[SubmissionRecord], smoke_policy: ScoringPolicy,
    gpu_profile: Profile, gpu_policy: ScoringPolicy,
) -> dict[str, object]:  # fmt: skip
    """Replay the population in commit order at ``gpu_profile``: a submission's smoke held-out
    bpb stands for its first cell; it is screened when behind the best earlier first cell by more
    than the screening margin (or when its first cell is not a valid result)."""
    by_sha = {e.sha256: e for e in entries if e.copy_of is None}
    first_cells = {r.zip_sha256: first_cell_bpb(r, smoke_policy) for r in records if r.zip_sha256 in by_sha}
    leader: float | None = None
    full: list[RunKey] = []
    skipped: list[RunKey] = []
    screened, seen = [], set()
    for record in sorted(records, key=lambda r: r.order_key):
        if record.zip_sha256 in seen or record.zip_sha256 not in by_sha:
            continue  # an exact copy runs nothing of its own: no cells to save
        seen.add(record.zip_sha256)
        runs = planned_runs(by_sha[record.zip_sha256].submission, gpu_profile)
        first, bpb = screening_cell(runs, gpu_policy), first_cells[record.zip_sha256]
        full += runs
        # an invalid first cell cannot complete a score: the validator screens it too
        if bpb is None or (leader is not None and behind_leader(bpb, leader, gpu_policy)):
            skipped += [r for r in runs if r != first]
            screened.append(by_sha[record.zip_sha256].label)
        if bpb is not None:
            leader = bpb if leader is None else min(leader, bpb)
    (full_low, full_high), (saved_low, saved_high) = _gpu_hours(full), _gpu_hours(skipped)
    return {
        "profile": gpu_profile.key, "rules_version": gpu_policy.version,
        "margin": f"max({gpu_policy.screening_margin_bpb}, {gpu_policy.screening_margin_rel} x leader bpb)",
        "margin_at_final_leader_bpb": round(screening_margin(leader or 0.0, gpu_policy), 4),
        "unique_submissions": len(seen), "screened_out": len(screened), "screened": screened,
        "cells_full_matrix": len(full), "cells_skipped": len(skipped),
        "gpu_hours_full_matrix": [round(full_low, 1), round(full_high, 1)],
        "gpu_hours_saved": [round(saved_low, 1), round(saved_high, 1)],
        "share_saved": round(len(skipped) / len(full), 3) if full else 0.0,
        "first_cell_bpb": {by_sha[s].label: (round(b, 4) if b is not None else None) for s, b in first_cells.items()},
    }  # fmt: skip
