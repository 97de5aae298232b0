"""Loss curves of one run: online probe bpb against training tokens, plus the held-out bpb point(s).

Drawn with matplotlib's Agg backend (no display needed):

* :func:`plot_run`: the raw curve, SVG or PNG by the suffix (the run artifact ``loss_curve.svg``);
* :func:`plot_loss_png`: the PNG a researcher reads: the probe curve smoothed (the raw one
  faint behind it), the held-out point(s), and a baseline run's curve overlaid when given
  (:func:`curve_from_manifest` turns a run manifest into one).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from prism.manifest import RunManifest

logger = logging.getLogger(__name__)


def plot_run(path: Path, *, probes: Sequence[dict[str, Any]], heldout: Iterable[Any], title: str) -> Path:
    """Write the plot to ``path`` (``.svg`` or ``.png``) and return it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [(int(p["tokens_seen"]), float(p["bpb"])) for p in probes]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    try:
        if points:
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, lw=1.2, label="online probe bpb (before each update)")
        held = [(int(_get(h, "tokens_seen")), float(_get(h, "bpb"))) for h in heldout]
        if held:
            hx, hy = zip(*held, strict=True)
            ax.scatter(hx, hy, color="crimson", zorder=3, label=f"held-out bpb ({hy[-1]:.3f})")
        ax.set_xlabel("training tokens")
        ax.set_ylabel("bits per byte")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper right", fontsize=8)
        fig.tight_layout()
        fmt = "png" if path.suffix.lower() == ".png" else "svg"
        # A fixed svg hash salt keeps the file identical for identical data.
        fig.savefig(path, format=fmt, metadata={"Date": None} if fmt == "svg" else None)
    finally:
        plt.close(fig)
    return path


def _get(item: Any, name: str) -> Any:
    return item[name] if isinstance(item, dict) else getattr(item, name)


# --- the smoothed PNG with a baseline -------------------------------------------------------------


RUN_COLOR = "#1f77b4"
HELDOUT_COLOR = "#d62728"
BASELINE_COLOR = "#ff7f0e"


class LossCurve(BaseModel):
    """A run's curve as plotted: probe points and held-out points, (training tokens, bpb) each."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    label: str
    probes: tuple[tuple[int, float], ...] = ()
    heldout: tuple[tuple[int, float], ...] = Field(default=(), description="usually one point, at the end")


def curve_from_manifest(manifest: RunManifest, label: str | None = None) -> LossCurve:
    """The baseline curve of a run manifest (its probe curve and held-out points)."""
    return LossCurve(
        label=label or f"baseline {manifest.run_id}",
        probes=tuple(_finite_points(manifest.metrics.probe_curve)),
        heldout=tuple(_finite_points(manifest.metrics.loss_vs_tokens)),
    )


def smoothing_window(points: int) -> int:
    """Odd moving-average width, about 1/16 of the curve (3 for the 32 points of a tiny run; 1 below 24)."""
    width = max(1, round(points / 16))
    return width if width % 2 else width + 1


def smooth(values: Sequence[float], window: int) -> list[float]:
    """Centered moving average; the window shrinks symmetrically at the ends, so they are not biased."""
    if window < 1:
        raise ValueError("window must be >= 1")
    half = window // 2
    out = []
    for i in range(len(values)):
        reach = min(half, i, len(values) - 1 - i)
        span = values[i - reach : i + reach + 1]
        out.append(sum(span) / len(span))
    return out


def plot_loss_png(
    path: Path,
    *,
    probes: Sequence[Any],
    heldout: Iterable[Any],
    baseline: LossCurve | None = None,
    title: str,
    window: int | None = None,
) -> Path:
    """Write the smoothed loss-curve PNG to ``path`` and return it.

    ``probes``: probe records (dicts or ``ProbePoint``: ``tokens_seen``, ``bpb``); ``heldout``:
    held-out points (``tokens_seen``, ``bpb``); ``baseline``: a curve to compare with (dashed);
    ``window``: moving-average width (default :func:`smoothing_window`). Non-finite points are
    left out (a NaN run draws what was finite before it).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=120)
    try:
        run = LossCurve(
            label="this run", probes=tuple(_finite_points(probes)), heldout=tuple(_finite_points(heldout))
        )
        if baseline is not None:
            _draw_curve(ax, baseline, window, color=BASELINE_COLOR, dashed=True)
        _draw_curve(ax, run, window, color=RUN_COLOR, dashed=False)
        ax.set_xlabel("training tokens")
        ax.set_ylabel("bits per byte")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="upper right", fontsize=8)
        fig.tight_layout()
        fig.savefig(path, format="png", metadata={"Software": None})
    finally:
        plt.close(fig)
    return path


def _draw_curve(ax: Any, curve: LossCurve, window: int | None, *, color: str, dashed: bool) -> None:
    if curve.probes:
        xs, ys = zip(*curve.probes, strict=True)
        width = window or smoothing_window(len(ys))
        if width > 1 and not dashed:
            ax.plot(xs, ys, lw=0.8, color=color, alpha=0.25)
        label = f"{curve.label}: probe bpb" + (f" (moving average of {width})" if width > 1 else "")
        ax.plot(xs, smooth(list(ys), width), lw=1.6, color=color, ls="--" if dashed else "-", label=label)
    if curve.heldout:
        hx, hy = zip(*curve.heldout, strict=True)
        marker = {"facecolors": "none", "edgecolors": color} if dashed else {"color": HELDOUT_COLOR}
        ax.scatter(hx, hy, zorder=3, s=36, label=f"{curve.label}: held-out bpb {hy[-1]:.4f}", **marker)


def _finite_points(items: Iterable[Any]) -> list[tuple[int, float]]:
    points = []
    for item in items:
        tokens, bpb = _get(item, "tokens_seen"), _get(item, "bpb")
        if bpb is not None and math.isfinite(float(bpb)):
            points.append((int(tokens), float(bpb)))
    return points
