"""Challenger vs incumbent: margins, near-ties and the recorded comparison.

Every contest of the replay (a new canonical version, a lead change, a training variant's
improvement over its baseline, a new training best) is one ``Comparison``. Under rules with
``comparison == "unpaired"`` (version 1) the difference is taken between the two submissions'
own cell means; under ``"paired"`` (version 2) it is a paired contrast measured on the
challenger's held-out windows (``prism.scoring.paired``), and a comparison whose measurement is
missing is *pending*: the incumbent keeps its place and the result lists what to evaluate.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal, NamedTuple

from pydantic import BaseModel, ConfigDict

from prism.manifest import RecipeMode
from prism.scoring.paired import Estimate, EvalRequest
from prism.scoring.policy import ScoringPolicy

ComparisonKind = Literal["canonical_version", "architecture_lead", "training_qualify", "training_best"]
ComparisonState = Literal["decided", "pending"]


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Side(_Frozen):
    hotkey: str
    zip_sha256: str
    recipe_mode: RecipeMode


class Comparison(_Frozen):
    """One contest. ``difference_bpb`` > 0 means the challenger measured better."""

    kind: ComparisonKind
    family_id: str
    block: int
    challenger: Side
    incumbent: Side
    paired: bool
    state: ComparisonState
    difference_bpb: float | None = None
    stderr_bpb: float | None = None
    window_stderr_bpb: float | None = None
    required_bpb: float | None = None
    challenger_wins: bool = False
    requests: tuple[EvalRequest, ...] = ()


def relative_margin(absolute: float, relative: float, reference_bpb: float) -> float:
    return max(absolute, relative * reference_bpb)


def gain_beats(gain: float, margin: float, tolerance: float, probes: tuple[float, float]) -> bool:
    """Is ``gain`` past ``margin``? Within ``tolerance`` of it, the probe bpb decides:
    ``probes = (challenger, incumbent)``, strictly lower wins; an exact tie keeps the incumbent."""
    if gain > margin + tolerance:
        return True
    if gain < margin - tolerance:
        return False
    return probes[0] < probes[1]


def beats(
    challenger: tuple[float, float], incumbent: tuple[float, float], margin: float, tolerance: float
) -> bool:
    """``(heldout, probe)`` pairs: does the challenger beat the incumbent by ``margin``?"""
    return gain_beats(incumbent[0] - challenger[0], margin, tolerance, (challenger[1], incumbent[1]))


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
    return training_margin(stderr, baseline_bpb, policy)


def training_margin(stderr: float, baseline_bpb: float, policy: ScoringPolicy) -> float:
    return max(
        policy.training_abs_min_delta_bpb,
        policy.training_rel_min_delta * baseline_bpb,
        policy.training_z * stderr,
    )


def unpaired_estimate(incumbent: Sequence[float], challenger: Sequence[float]) -> Estimate:
    """Rules v1: per-cell ``incumbent - challenger`` of each side's own measurement."""
    cells = [i - c for i, c in zip(incumbent, challenger, strict=True)]
    mean, stderr = paired_mean_and_stderr(cells)
    return Estimate(difference_bpb=mean, stderr_bpb=stderr, cells=tuple(cells))


class Contest(NamedTuple):
    """Who meets whom, before the numbers are known."""

    kind: ComparisonKind
    family_id: str
    block: int
    challenger: Side
    incumbent: Side
    paired: bool


def decided(contest: Contest, estimate: Estimate, required: float, wins: bool) -> Comparison:
    return Comparison(
        **contest._asdict(),
        state="decided",
        difference_bpb=estimate.difference_bpb,
        stderr_bpb=estimate.stderr_bpb,
        window_stderr_bpb=estimate.window_stderr_bpb,
        required_bpb=required,
        challenger_wins=wins,
    )


def pending(contest: Contest, requests: Sequence[EvalRequest]) -> Comparison:
    """No paired measurement yet: the incumbent keeps its place; ``requests`` say what to measure."""
    return Comparison(
        **contest._asdict(), state="pending", requests=tuple(sorted(set(requests), key=_request_key))
    )


def _request_key(r: EvalRequest) -> tuple[str, ...]:
    return tuple(str(v) for v in r.model_dump().values())
