"""Out-of-process prefix replay: lookahead, hidden state and test-time adaptation (host side).

After the main held-out process has committed everything, the host draws random
``(window, cut)`` pairs across all batches (fresh OS entropy: the draw never changes an honest
score, so validators need not agree on it). Each replay sequence is the window up to and
including position ``cut``, followed by the same positions of another held-out window. A *fresh*
sandboxed process (same weights, same batch shapes, the same protocol, no state from the main
process) answers them. For a causal, stateless model the log-probabilities at positions
``<= cut`` are the same in both processes:

* positions ``i < cut`` (same prefix, same target): the main process's ``z - L`` against the
  replay's ``z' - L'``;
* position ``cut`` (same prefix, but the next token differs): the main process's ``z - L``
  against the log-probability the replay's revealed row gives *the main process's target*.

A model that reads a later token, adapts on the batch it is answering, or carries state from
earlier batches changes these values. A deviation above the tolerance (calibrated per device and
dtype, see docs/evaluator_measurement.md) is ``eval.replay_mismatch``, a miner fault.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

import numpy as np

from prism.evaluator.heldout_host import SessionOutcome, SpotPolicy


@dataclass(frozen=True)
class ReplayPair:
    window: int  # index into the main session's windows
    cut: int  # last position whose prefix is the window's own
    filler: int  # the window whose later tokens replace the rest


@dataclass
class ReplayComparison:
    pairs: int = 0
    positions: int = 0
    max_deviation: float = 0.0
    worst: tuple[int, int] | None = None  # (window, position) of the largest deviation


def replay_count(n_windows: int, batch_size: int, fraction: float) -> int:
    """Pairs to replay: ``fraction`` of the windows, rounded up to whole batches, at most all."""
    if fraction <= 0 or n_windows == 0:
        return 0
    wanted = max(1, int(np.ceil(fraction * n_windows)))
    return min(n_windows, int(np.ceil(wanted / batch_size)) * batch_size)


def draw_pairs(
    n_windows: int, seq_len: int, count: int, rng: np.random.Generator | None = None
) -> list[ReplayPair]:
    generator = rng if rng is not None else np.random.default_rng(secrets.randbits(128))
    chosen = generator.choice(n_windows, size=count, replace=False)
    # cut <= T - 2: at least the input after the cut differs (cut = T - 1 would change only a target)
    cuts = generator.integers(0, max(1, seq_len - 1), size=count)
    shifts = generator.integers(1, max(2, n_windows), size=count)
    return [
        ReplayPair(int(w), int(c), int((w + s) % n_windows))
        for w, c, s in zip(chosen, cuts, shifts, strict=True)
    ]


def replay_windows(
    windows: np.ndarray, window_bytes: np.ndarray, pairs: list[ReplayPair]
) -> tuple[np.ndarray, np.ndarray]:
    """(P, T+1) spliced sequences and their byte counts (bytes only size the process's work)."""
    rows = np.empty((len(pairs), windows.shape[1]), dtype=windows.dtype)
    for i, pair in enumerate(pairs):
        rows[i, : pair.cut + 1] = windows[pair.window, : pair.cut + 1]
        rows[i, pair.cut + 1 :] = windows[pair.filler, pair.cut + 1 :]
    return rows, np.array([window_bytes[p.window] for p in pairs], dtype=np.int64)


def cut_spots(pairs: list[ReplayPair], batch_size: int) -> SpotPolicy:
    """Reveal, in each replay row, the row at its cut (the position whose next token changed)."""

    def policy(batch: int, rows: int, _seq_len: int) -> list[tuple[int, int]]:
        first = batch * batch_size
        return [(b, pairs[first + b].cut) for b in range(rows)]

    return policy


def _log_prob(row: np.ndarray, token: int) -> float:
    values = row.astype(np.float64)
    top = values.max()
    return float(values[token] - (top + np.log(np.exp(values - top).sum())))


def compare(
    main: SessionOutcome, replay: SessionOutcome, pairs: list[ReplayPair], windows: np.ndarray
) -> ReplayComparison:
    """Largest |log p_main - log p_replay| over every compared position (see the module docstring)."""
    assert main.lse is not None and main.target_logit is not None
    assert replay.lse is not None and replay.target_logit is not None
    result = ReplayComparison(pairs=len(pairs))
    for i, pair in enumerate(pairs):
        main_lp = main.target_logit[pair.window, : pair.cut + 1] - main.lse[pair.window, : pair.cut + 1]
        replay_lp = replay.target_logit[i, : pair.cut] - replay.lse[i, : pair.cut]
        deviations = list(np.abs(main_lp[: pair.cut] - replay_lp))
        row = replay.kept_rows[(i, pair.cut)]
        deviations.append(
            abs(float(main_lp[pair.cut]) - _log_prob(row, int(windows[pair.window, pair.cut + 1])))
        )
        result.positions += len(deviations)
        worst = int(np.argmax(deviations))
        if deviations[worst] > result.max_deviation:
            result.max_deviation, result.worst = float(deviations[worst]), (pair.window, worst)
    return result


@dataclass
class ReplayOutcome:
    pairs: list[ReplayPair] = field(default_factory=list)
    session: SessionOutcome | None = None
    comparison: ReplayComparison | None = None
    tolerance: float = 0.0
    seconds: float = 0.0

    @property
    def mismatch(self) -> bool:
        return self.comparison is not None and self.comparison.max_deviation > self.tolerance


__all__ = [
    "ReplayComparison",
    "ReplayOutcome",
    "ReplayPair",
    "compare",
    "cut_spots",
    "draw_pairs",
    "replay_count",
    "replay_windows",
]
