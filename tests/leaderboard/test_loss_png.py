"""The PNG loss curve: smoothed probe, held-out point, a baseline run overlaid (prism.evaluator.plot)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from leaderboard_helpers import _load_manifest_builders

from prism.evaluator.plot import (
    BASELINE_COLOR,
    HELDOUT_COLOR,
    LossCurve,
    curve_from_manifest,
    plot_loss_png,
    smooth,
    smoothing_window,
)


def test_smoothing_is_a_centered_moving_average_that_shrinks_at_the_ends() -> None:
    assert smooth([1.0, 2.0, 3.0, 10.0, 5.0], 3) == pytest.approx([1.0, 2.0, 5.0, 6.0, 5.0])
    assert smooth([4.0, 8.0], 1) == [4.0, 8.0]
    assert smooth([], 5) == []
    with pytest.raises(ValueError):
        smooth([1.0], 0)
    assert [smoothing_window(n) for n in (1, 23, 32, 100, 1000)] == [1, 1, 3, 7, 63]


def _pixels_of(path: Path, color: str) -> int:
    import matplotlib.image

    image = matplotlib.image.imread(path)[..., :3]
    target = np.array([int(color[i : i + 2], 16) / 255 for i in (1, 3, 5)])
    return int((np.abs(image - target).max(axis=-1) < 0.02).sum())


def _probes(n: int, start: float, end: float) -> list[dict[str, float]]:
    return [
        {"tokens_seen": i * 256, "bpb": start + (end - start) * i / (n - 1) + 0.2 * math.sin(i)}
        for i in range(n)
    ]


def test_png_draws_the_run_and_overlays_the_baseline(tmp_path: Path) -> None:
    baseline = LossCurve(label="baseline", probes=tuple((p["tokens_seen"], p["bpb"]) for p in _probes(64, 8.0, 6.5)),
                         heldout=((16384, 6.4),))  # fmt: skip
    probes = _probes(64, 8.0, 5.0)
    with_base = plot_loss_png(tmp_path / "with.png", probes=probes, heldout=[{"tokens_seen": 16384, "bpb": 4.9}],
                              baseline=baseline, title="run-x")  # fmt: skip
    alone = plot_loss_png(tmp_path / "alone.png", probes=probes, heldout=[{"tokens_seen": 16384, "bpb": 4.9}],
                          title="run-x")  # fmt: skip
    assert with_base.read_bytes()[:8] == alone.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert _pixels_of(with_base, BASELINE_COLOR) > 200 and _pixels_of(alone, BASELINE_COLOR) == 0
    assert _pixels_of(alone, HELDOUT_COLOR) > 20  # the held-out point
    # identical inputs give identical bytes (no timestamp in the file)
    again = plot_loss_png(tmp_path / "again.png", probes=probes, heldout=[{"tokens_seen": 16384, "bpb": 4.9}],
                          baseline=baseline, title="run-x")  # fmt: skip
    assert again.read_bytes() == with_base.read_bytes()


def test_non_finite_points_are_left_out_and_a_manifest_gives_the_baseline(tmp_path: Path) -> None:
    builders = _load_manifest_builders()
    manifest = builders.make_manifest("base", heldout=1.25, probe_curve=[
        {"step": i, "tokens_seen": i * 100, "loss_nats": 2.0, "bpb": 2.0 - i / 100} for i in range(10)
    ], loss_vs_tokens=[{"tokens_seen": 1000, "bpb": 1.25}])  # fmt: skip
    curve = curve_from_manifest(manifest)
    assert curve.label == "baseline base-reference-small-0" and len(curve.probes) == 10
    assert curve.heldout == ((1000, 1.25),)
    probes = [*_probes(20, 3.0, 2.0), {"tokens_seen": 99999, "bpb": float("nan")}]
    path = plot_loss_png(
        tmp_path / "nan.png", probes=probes, heldout=[], baseline=curve, title="nan at the end"
    )
    assert path.stat().st_size > 5_000
