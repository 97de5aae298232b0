"""Held-out phase (host side): the main evaluation process, then the prefix replay, then verdicts.

Both processes start together, so the replay's start-up (imports, build, weights) overlaps the
main evaluation and only its few batches add wall time. The replay pairs are drawn after the
main process has committed every batch.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from prism.errors import MinerFault, PrismError
from prism.evaluator.heldout_host import HeldoutJob, HeldoutProcess, SessionOutcome, random_spots
from prism.evaluator.replay import ReplayOutcome, compare, cut_spots, draw_pairs, replay_count, replay_windows
from prism.evaluator.sandbox import SandboxResult
from prism.evaluator.spots import SpotBudget, spot_budget
from prism.evaluator.verdicts import Observation
from prism.profiles import HeldoutSpec


@dataclass
class ProcessRecord:
    session: SessionOutcome = field(default_factory=SessionOutcome)
    result: SandboxResult | None = None
    launch_error: PrismError | None = None


@dataclass
class HeldoutOutcome:
    main: ProcessRecord
    replay_process: ProcessRecord
    replay: ReplayOutcome
    budget: SpotBudget
    cap_nats: float
    timings_s: dict[str, float] = field(default_factory=dict)

    @property
    def succeeded(self) -> bool:
        return self.main.session.error is None and self.main.session.params_after is not None


def _close(process: HeldoutProcess, record: ProcessRecord) -> ProcessRecord:
    record.result = process.close(record.session)
    record.launch_error = process.launch_error
    return record


def measure_heldout(
    main_job: HeldoutJob,
    replay_job: HeldoutJob,
    windows: np.ndarray,
    window_bytes: np.ndarray,
    spec: HeldoutSpec,
) -> HeldoutOutcome:
    """Measure held-out bpb with forge-proof reveals and replay a sample in a fresh process."""
    n, seq_len = windows.shape[0], windows.shape[1] - 1
    vocab = int(main_job.spec.context["vocab_size"])
    cap = spec.position_cap_factor * math.log(vocab)
    budget = spot_budget(
        positions=n * seq_len,
        total_bytes=int(window_bytes.sum()),
        lie_shift_bpb=spec.lie_shift_bpb,
        survival=spec.lie_survival,
        gain_cap_nats=cap,
    )
    t0 = time.monotonic()
    main_process, replay_process = HeldoutProcess(main_job), HeldoutProcess(replay_job)
    main = ProcessRecord(
        main_process.drive(
            windows,
            window_bytes,
            batch_size=spec.batch_size,
            cap_nats=cap,
            spots=random_spots(budget.per_batch),
        )
    )
    outcome = HeldoutOutcome(
        main=main,
        replay_process=ProcessRecord(),
        replay=ReplayOutcome(tolerance=spec.replay_tolerance_nats),
        budget=budget,
        cap_nats=cap,
    )
    outcome.timings_s["main"] = time.monotonic() - t0
    outcome.timings_s.update({f"main_{k}": v for k, v in main.session.timings_s.items()})
    count = replay_count(n, spec.batch_size, spec.replay_fraction)
    if outcome.succeeded and count:
        t1 = time.monotonic()
        _replay(outcome, replay_process, windows, window_bytes, spec, count)  # while the main process exits
        outcome.replay.seconds = outcome.timings_s["replay"] = time.monotonic() - t1
    _close(main_process, main)
    _close(replay_process, outcome.replay_process)
    outcome.timings_s["total"] = time.monotonic() - t0
    return outcome


def _replay(
    outcome: HeldoutOutcome,
    process: HeldoutProcess,
    windows: np.ndarray,
    window_bytes: np.ndarray,
    spec: HeldoutSpec,
    count: int,
) -> None:
    n, seq_len = windows.shape[0], windows.shape[1] - 1
    pairs = draw_pairs(n, seq_len, count)  # only now: the main process has committed everything
    rows, row_bytes = replay_windows(windows, window_bytes, pairs)
    session = process.drive(
        rows,
        row_bytes,
        batch_size=spec.batch_size,
        cap_nats=outcome.cap_nats,
        spots=cut_spots(pairs, spec.batch_size),
        keep_spot_rows=True,
    )
    outcome.replay_process.session = session
    outcome.replay.pairs, outcome.replay.session = pairs, session
    if session.error is None and session.params_after is not None:
        outcome.replay.comparison = compare(outcome.main.session, session, pairs, windows)
    outcome.timings_s.update({f"replay_{k}": v for k, v in session.timings_s.items()})


def _observe(phase: str, record: ProcessRecord, host_check: PrismError | None = None) -> Observation:
    error = record.session.error
    return Observation(
        phase=phase,
        hello=record.session.hello,
        sandbox=record.result,
        launch_error=record.launch_error,
        host_check=host_check or (error if isinstance(error, MinerFault) else None),
        channel_error=error if error is not None and not isinstance(error, MinerFault) else None,
        claimed=record.session.reported_error,
    )


def observations(outcome: HeldoutOutcome) -> list[Observation]:
    """What the verdicts module judges: the main process, then (if it ran) the replay."""
    found = [_observe("heldout", outcome.main)]
    if outcome.replay.pairs:
        mismatch = None
        comparison = outcome.replay.comparison
        if outcome.replay.mismatch and comparison is not None:
            window, position = comparison.worst or (-1, -1)
            mismatch = MinerFault(
                f"a fresh process gave log-probabilities up to {comparison.max_deviation:.3g} nats away from the "
                f"main evaluation's (tolerance {outcome.replay.tolerance:.3g}; window {window}, position {position}): "
                "the model reads later tokens, adapts while it is evaluated, or keeps state between batches",
                code="eval.replay_mismatch",
            )
        found.append(_observe("replay", outcome.replay_process, mismatch))
    return found


__all__ = ["HeldoutOutcome", "ProcessRecord", "measure_heldout", "observations"]
