"""Loss curve of one run: online probe bpb against training tokens, plus the held-out bpb point(s).

Drawn with matplotlib's Agg backend (no display needed) as SVG or PNG, chosen by the suffix.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

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
