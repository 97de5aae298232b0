"""What the validator loop carries from one step to the next (all of it re-derivable at start-up)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class LoopState:
    step: int = 0
    last_weights_block: int | None = None
    last_result_step: int = 0  # the step that last recorded an outcome (a result changes scores)
    infra_streak: int = 0  # consecutive outcomes that failed on our side
    evaluation_paused_until: float = 0.0  # time.monotonic() before which nothing new is dispatched
    host_error_submissions: set[str] = field(default_factory=set)  # ZIPs of the current host-error streak
    last_weights_step: int | None = None  # the step that last set weights, since start-up
    weights_retry_block: int | None = None  # no weight set before this block (after a refusal)
    unreachable: dict[str, int] = field(default_factory=dict)  # hotkey -> block of last failed fetch
    paired_attempts: dict[tuple[str, str], int] = field(default_factory=dict)  # (run, model run) -> tries
    max_concurrent: int = 0  # most runs in flight at once, since start-up
    outcomes: int = 0  # outcomes recorded since start-up
    run_seconds: list[float] = field(default_factory=list)  # wall seconds of finished runs (status)
    started_at: float = 0.0
    first_weights_at: float | None = None
