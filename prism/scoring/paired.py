"""Paired held-out measurements: several trained models scored on one challenger's windows.

When a challenger is compared with an incumbent, both must be measured on the same held-out
windows, so the difference is not moved by which windows each happened to draw. The validator
re-runs the incumbent's held-out evaluation, on its stored weights, on the windows of the
challenger's run, and records per-window losses of every model it evaluated there. This module
holds that input (``PairedMeasurement``, carried on the challenger's ``SubmissionRecord``), the
request scoring emits when a measurement it needs is missing (``EvalRequest``), and the
statistics of a paired contrast (see docs/scoring.md, "Paired comparison").

A contrast is a signed sum of models' bits per byte on the same windows: ``incumbent -
challenger`` for a lead or canonical change, ``baseline - variant`` for a training improvement,
``(baseline_new - new) - (baseline_best - best)`` for a new training best. Per cell,
``d = sum_w sum_m coef_m * nats_m,w / (ln 2 * sum_w bytes_w)``; its window-sampling variance is
the ratio-estimator variance ``n/(n-1) * sum_w (delta_w/ln 2 - d * bytes_w)^2 / (sum_w bytes_w)^2``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, model_validator

from prism.manifest import RecipeMode

LN2 = math.log(2.0)


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelEval(_Frozen):
    """One trained model (the weights written by ``run_id``) scored on the cell's windows."""

    zip_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    recipe_mode: RecipeMode
    run_id: str
    nats: tuple[float, ...] = Field(default=(), description="summed nats of each window, in window order")
    failure_code: str | None = Field(
        default=None, description="the re-measurement failed, blamed on the model (it then has no nats)"
    )

    @model_validator(mode="after")
    def _finite(self) -> ModelEval:
        if not all(math.isfinite(x) and x >= 0.0 for x in self.nats):
            raise ValueError("window nats must be finite and non-negative")
        if (self.failure_code is None) != bool(self.nats):
            raise ValueError("a model eval has window nats, or a failure code and none")
        return self

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.zip_sha256, self.recipe_mode, self.run_id)


class PairedCell(_Frozen):
    """The held-out windows of one challenger run (one regime x seed) and every model on them."""

    regime: str
    seed: int
    run_id: str = Field(description="the challenger run whose held-out windows these are")
    windows_sha256: str | None = Field(default=None, description="hash of the window list, for audit")
    window_bytes: tuple[int, ...] = Field(min_length=1, description="UTF-8 bytes each window covers")
    evals: tuple[ModelEval, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> PairedCell:
        if any(b <= 0 for b in self.window_bytes):
            raise ValueError("every window covers at least one byte")
        if any(len(e.nats) != len(self.window_bytes) for e in self.evals if e.failure_code is None):
            raise ValueError("every model needs one loss per window")
        if len({e.key for e in self.evals}) != len(self.evals):
            raise ValueError("a model is evaluated at most once per cell")
        return self


class PairedMeasurement(_Frozen):
    """Everything measured on the held-out windows of one challenger's runs of one recipe mode."""

    profile_key: str
    zip_sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="the challenger")
    recipe_mode: RecipeMode
    cells: tuple[PairedCell, ...] = Field(min_length=1)


class EvalRequest(_Frozen):
    """Evaluate the weights of ``model_run_id`` on the held-out windows of ``run_id``."""

    zip_sha256: str
    recipe_mode: RecipeMode
    regime: str
    seed: int
    run_id: str
    model_zip_sha256: str
    model_recipe_mode: RecipeMode
    model_run_id: str


class RunSet(NamedTuple):
    """The runs of one submission's recipe mode, one per required cell (policy order)."""

    zip_sha256: str
    recipe_mode: RecipeMode
    run_ids: tuple[str, ...]


class Estimate(_Frozen):
    """A contrast over the required cells: mean, standard errors and the per-cell values.

    ``forfeit``: a model of the contrast could not be measured on the windows through its own
    fault; ``incumbent`` when the failed models are all on the incumbent's side (positive
    coefficients), ``challenger`` otherwise. The contest is then decided by the forfeit alone.
    """

    difference_bpb: float
    stderr_bpb: float
    window_stderr_bpb: float | None = None
    cells: tuple[float, ...]
    forfeit: Literal["incumbent", "challenger"] | None = None


class _WindowsCell(NamedTuple):
    window_bytes: tuple[int, ...]
    evals: dict[tuple[str, str, str], ModelEval]


class WindowIndex:
    """A challenger's measurements merged per run: ``run_id -> windows and model evals``.

    Several measurements of the same run (incumbents evaluated at different times) are pooled.
    They must agree on the windows; if two disagree, the lexicographically smallest
    ``(windows_sha256, window_bytes)`` is kept, so the choice never depends on input order. A
    model evaluated twice keeps the smallest loss vector, for the same reason.
    """

    def __init__(self, measurements: Iterable[PairedMeasurement], profile_key: str, zip_sha256: str) -> None:
        groups: dict[str, dict[tuple[str, tuple[int, ...]], list[PairedCell]]] = {}
        for m in measurements:
            if m.profile_key != profile_key or m.zip_sha256 != zip_sha256:
                continue
            for cell in m.cells:
                key = (m.recipe_mode, cell.regime, str(cell.seed), cell.run_id)
                groups.setdefault("\0".join(key), {}).setdefault(
                    (cell.windows_sha256 or "", cell.window_bytes), []
                ).append(cell)
        self._cells: dict[str, _WindowsCell] = {}
        for key, by_windows in groups.items():
            windows = min(by_windows)
            evals: dict[tuple[str, str, str], ModelEval] = {}
            for cell in by_windows[windows]:
                for e in cell.evals:
                    if e.key not in evals or e.nats < evals[e.key].nats:
                        evals[e.key] = e
            self._cells[key] = _WindowsCell(windows[1], evals)

    def cell(self, mode: str, regime: str, seed: int, run_id: str) -> _WindowsCell | None:
        return self._cells.get("\0".join((mode, regime, str(seed), run_id)))


def combine_coefficients(terms: Sequence[tuple[RunSet, float]]) -> dict[RunSet, float]:
    """Sum coefficients of identical run sets and drop the ones that cancel."""
    total: dict[RunSet, float] = {}
    for runs, coef in terms:
        total[runs] = total.get(runs, 0.0) + coef
    return {runs: coef for runs, coef in total.items() if coef != 0.0}


def _cell_contrast(cell: _WindowsCell, coefs: Mapping[tuple[str, str, str], float]) -> tuple[float, float]:
    """(difference in bpb, window-sampling variance of it) for one cell."""
    total_bytes = math.fsum(cell.window_bytes)
    deltas = [
        math.fsum(coef * cell.evals[key].nats[w] for key, coef in sorted(coefs.items())) / LN2
        for w in range(len(cell.window_bytes))
    ]
    diff = math.fsum(deltas) / total_bytes
    n = len(deltas)
    if n < 2:
        return diff, 0.0
    resid = math.fsum((d - diff * b) ** 2 for d, b in zip(deltas, cell.window_bytes, strict=True))
    return diff, n / (n - 1) * resid / total_bytes**2


def stratified_stderr(values: Sequence[float], regimes: Sequence[str]) -> float:
    """Standard error of the mean of ``values`` when seeds are replicates within each regime.

    Regimes are fixed effects (a real gain may differ between budgets); only the spread between
    seeds of one regime is noise: ``sqrt(sum_r s_r^2 / n_r) / R`` over regimes with n_r >= 2.
    """
    by_regime: dict[str, list[float]] = {}
    for value, regime in zip(values, regimes, strict=True):
        by_regime.setdefault(regime, []).append(value)
    terms = []
    for regime in sorted(by_regime):
        xs = by_regime[regime]
        if len(xs) < 2:
            continue
        mean = math.fsum(xs) / len(xs)
        terms.append(math.fsum((x - mean) ** 2 for x in xs) / (len(xs) - 1) / len(xs))
    return math.sqrt(math.fsum(terms)) / len(by_regime)


def _forfeit(
    cell: _WindowsCell | None, keys: Mapping[tuple[str, str, str], float]
) -> Literal["incumbent", "challenger"] | None:
    """Which side forfeits this cell: the side of the models whose re-measurement failed."""
    if cell is None:
        return None
    failed = [coef for key, coef in keys.items() if key in cell.evals and cell.evals[key].failure_code]
    if not failed:
        return None
    return "incumbent" if all(coef > 0 for coef in failed) else "challenger"


def paired_estimate(
    index: WindowIndex,
    challenger: RunSet,
    cells: Sequence[tuple[str, int]],
    coefs: Mapping[RunSet, float],
) -> Estimate | list[EvalRequest]:
    """The contrast ``coefs`` on the challenger's windows, or the evaluations still missing.

    ``stderr_bpb = max(seed stderr within regimes, window-sampling stderr)``: the seed spread
    already contains the window noise, the window term is a floor for when few seeds agree by
    chance.
    """
    diffs, variances, missing = [], [], []
    for i, (regime, seed) in enumerate(cells):
        run_id = challenger.run_ids[i]
        cell = index.cell(challenger.recipe_mode, regime, seed, run_id)
        keys = {(runs.zip_sha256, runs.recipe_mode, runs.run_ids[i]): coef for runs, coef in coefs.items()}
        forfeit = _forfeit(cell, keys)
        if forfeit is not None:
            return Estimate(difference_bpb=0.0, stderr_bpb=0.0, cells=(), forfeit=forfeit)
        absent = sorted(k for k in keys if cell is None or k not in cell.evals)
        missing += [
            EvalRequest(
                zip_sha256=challenger.zip_sha256, recipe_mode=challenger.recipe_mode, regime=regime,
                seed=seed, run_id=run_id, model_zip_sha256=z, model_recipe_mode=m, model_run_id=r,
            )
            for z, m, r in absent
        ]  # fmt: skip
        if cell is not None and not absent:
            diff, variance = _cell_contrast(cell, keys)
            diffs.append(diff)
            variances.append(variance)
    if missing:
        return missing
    window_se = math.sqrt(math.fsum(variances)) / len(cells)
    seed_se = stratified_stderr(diffs, [regime for regime, _ in cells])
    return Estimate(
        difference_bpb=math.fsum(diffs) / len(diffs),
        stderr_bpb=max(seed_se, window_se),
        window_stderr_bpb=window_se,
        cells=tuple(diffs),
    )
