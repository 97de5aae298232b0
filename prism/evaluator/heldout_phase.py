"""Held-out phase (host side): the main evaluation process, the program check, then the prefix
replay, then verdicts.

The replay process loads the submission only after the main one has ended and been reaped: two
live processes of one submission could signal each other (file locks on shared inodes are
blocked by the sandbox's seccomp filter, but timing channels remain), and a replay that can ask
the main process what it saw would collude with it. The replay pairs are drawn after the main
process has committed every batch. Before its ``go`` the replay answers the program check from
a forked child that runs trusted code only and has exited before ``go``: the main process's
program (its constants, and the windows it is run on) is data the main process chose, and must
never be in the memory of a process that will run submission code (docs/security.md,
"Lookahead").
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from prism.errors import InfrastructureFault, MinerFault, PrismError
from prism.evaluator.budgets import WeightsInventory, inspect_weights
from prism.evaluator.heldout_host import HeldoutJob, HeldoutProcess, SessionOutcome, random_spots
from prism.evaluator.heldout_wire import EvalProcessSpec
from prism.evaluator.program_check import ProgramCheck, check_program
from prism.evaluator.replay import ReplayOutcome, compare, cut_spots, draw_pairs, replay_count, replay_windows
from prism.evaluator.replay_runtime import replay_binds
from prism.evaluator.sandbox import Bind, IsolationProbe, SandboxLimits, SandboxResult
from prism.evaluator.spots import SpotBudget, spot_budget
from prism.evaluator.verdicts import Observation, decide, first_failure
from prism.manifest import Failure
from prism.profiles import HeldoutSpec

LN2 = math.log(2.0)


@dataclass
class ProcessRecord:
    session: SessionOutcome = field(default_factory=SessionOutcome)
    result: SandboxResult | None = None
    launch_error: PrismError | None = None


@dataclass
class HeldoutOutcome:
    main: ProcessRecord = field(default_factory=ProcessRecord)
    replay_process: ProcessRecord = field(default_factory=ProcessRecord)
    replay: ReplayOutcome = field(default_factory=ReplayOutcome)
    program: ProgramCheck | None = None
    hooks_allowed: bool = True  # the host's own spec: may the inference path be a hook?
    budget: SpotBudget = field(default_factory=lambda: SpotBudget(0, 0, 0, 0.0))
    cap_nats: float = 0.0
    timings_s: dict[str, float] = field(default_factory=dict)

    @property
    def succeeded(self) -> bool:
        return self.main.session.error is None and self.main.session.params_after is not None

    def program_failure(self) -> MinerFault | None:
        session = self.main.session
        if self.program is None:
            return None
        claimed = (session.canonical_graph or {}).get("family_id")
        # The claimed path is the process's word: it only narrows the comparison when the host
        # itself allowed hooks (the reference recipe never uses them).
        forward = not self.hooks_allowed or (session.ready or {}).get("inference_path") == "forward"
        return self.program.failure(claimed if isinstance(claimed, str) else None, forward)


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
    family_seed: int | None = None,
) -> HeldoutOutcome:
    """Measure held-out bpb with forge-proof reveals, check the main process's program (when the
    replay's spec says it answers one), then replay a sample in a fresh process that loads the
    submission only after the main one has ended. ``family_seed`` (the evaluation's held-out
    seed) picks the program check's family window; None where no family is compared."""
    # The replay starts now but waits, before loading the submission, for the host's "go": its
    # start-up (python, torch, the weights) overlaps the main evaluation, and no submission code
    # runs in it while the main process is alive.
    t0 = time.monotonic()
    main_process, replay_process = HeldoutProcess(main_job), HeldoutProcess(replay_job)
    try:
        outcome = _measure(main_process, windows, window_bytes, spec)
        if replay_job.spec.program_check:
            _check_program(outcome, replay_process, windows, spec, family_seed)
        _replay_and_close(outcome, replay_process, windows, window_bytes, spec)
    except BaseException:  # Ctrl-C or shutdown mid-protocol: leave no process of the run behind
        main_process.kill()
        replay_process.kill()
        raise
    outcome.timings_s["total"] = time.monotonic() - t0
    return outcome


def _measure(
    main_process: HeldoutProcess, windows: np.ndarray, window_bytes: np.ndarray, spec: HeldoutSpec
) -> HeldoutOutcome:
    """The main evaluation, with spots sized by ``spot_budget``; its process reaped after."""
    t0 = time.monotonic()
    n, seq_len = windows.shape[0], windows.shape[1] - 1
    cap = spec.position_cap_factor * math.log(int(main_process.job.spec.context["vocab_size"]))
    budget = spot_budget(
        positions=n * seq_len,
        total_bytes=int(window_bytes.sum()),
        lie_shift_bpb=spec.lie_shift_bpb,
        survival=spec.lie_survival,
        gain_cap_nats=cap,
    )
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
        hooks_allowed=main_process.job.spec.use_inference_hooks,
    )
    outcome.timings_s["main"] = time.monotonic() - t0
    outcome.timings_s.update({f"main_{k}": v for k, v in main.session.timings_s.items()})
    # The main process is gone (reaped, its locks and memory with it) before the replay loads the
    # submission: two live processes of one submission could talk (docs/security.md, "Lookahead").
    _close(main_process, main)
    return outcome


def _replay_and_close(
    outcome: HeldoutOutcome,
    process: HeldoutProcess,
    windows: np.ndarray,
    window_bytes: np.ndarray,
    spec: HeldoutSpec,
) -> None:
    count = replay_count(windows.shape[0], spec.batch_size, spec.replay_fraction)
    if outcome.succeeded and count and outcome.program_failure() is None:
        t1 = time.monotonic()
        _replay(outcome, process, windows, window_bytes, spec, count)
        outcome.replay.seconds = outcome.timings_s["replay"] = time.monotonic() - t1
    _close(process, outcome.replay_process)


def _check_program(
    outcome: HeldoutOutcome,
    process: HeldoutProcess,
    windows: np.ndarray,
    spec: HeldoutSpec,
    family_seed: int | None,
) -> None:
    """Run the program check in the replay's forked child (before its go)."""
    session = outcome.main.session
    if outcome.succeeded and session.program is not None:
        outcome.program = check_program(
            process, session, windows, spec.program_windows, spec.replay_tolerance_nats, family_seed
        )
        outcome.timings_s["program"] = outcome.program.seconds


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
    found = [_observe("heldout", outcome.main, outcome.program_failure())]
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


@dataclass(frozen=True)
class EvalComputeBudget:
    """What one held-out process may spend, as the host measures it (CPU seconds of its tree on
    CPU, wall seconds on GPU): the calibrated start-up plus ``cap`` training-token costs per
    position it evaluates. A model that trains while it is evaluated pays for it here."""

    kind: str  # cpu_s | wall_s, as the calibration
    fixed_s: float
    per_position_s: float

    def limit_s(self, positions: int) -> float:
        return self.fixed_s + self.per_position_s * positions


def _spent(result: SandboxResult | None, kind: str) -> float | None:
    if result is None:
        return None
    if kind == "cpu_s":
        return result.cpu_s if result.cpu_accounted else None
    return result.wall_s


def compute_failure(
    outcome: HeldoutOutcome, budget: EvalComputeBudget | None, windows: int, seq_len: int
) -> Failure | None:
    """Over the budget is training at evaluation time: the submission's fault, counted by the host."""
    if budget is None:
        return None
    records = [("heldout", outcome.main, windows * seq_len)]
    if outcome.replay.pairs:  # one replayed window per pair, and the program check's windows
        checked = len(outcome.program.windows) if outcome.program is not None else 0
        records.append(("replay", outcome.replay_process, (len(outcome.replay.pairs) + checked) * seq_len))
    for phase, record, n in records:
        spent, limit = _spent(record.result, budget.kind), budget.limit_s(n)
        if spent is not None and spent > limit:
            return Failure(
                code="budget.eval_compute_exceeded", fault="miner", phase="heldout", observed="counted by the host",
                message=f"the {phase} process spent {spent:.1f} {budget.kind} on {n:,} positions, above its budget of "
                f"{limit:.1f} (start-up plus {budget.per_position_s:.2e} s per position): evaluation must not train",
            )  # fmt: skip
    return None


def heldout_verdict(
    outcome: HeldoutOutcome, budget: EvalComputeBudget | None, windows: int, seq_len: int
) -> Failure | None:
    """The held-out phase's failure: the verdicts module's, then the eval compute budget's. A
    process that trains while it is evaluated may reach the wall clock before it ends on a loaded
    machine; its CPU over the budget is then the cause and the timeout a symptom, so the budget's
    code wins over ``eval.timeout`` (both are the miner's)."""
    failure = first_failure(*(decide(o) for o in observations(outcome)))
    if failure is None or failure.code == "eval.timeout":
        return compute_failure(outcome, budget, windows, seq_len) or failure
    return failure


@dataclass
class HeldoutResult:
    """What the host measured on one weights file (``failure`` set, and no bpb, when it failed)."""

    outcome: HeldoutOutcome
    failure: Failure | None
    inventory: WeightsInventory | None

    @property
    def session(self) -> SessionOutcome:
        return self.outcome.main.session

    @property
    def bpb(self) -> float | None:
        s = self.session
        return s.total_nats / (LN2 * s.bytes) if self.failure is None and s.bytes else None

    @property
    def loss_nats(self) -> float | None:
        s = self.session
        return s.total_nats / s.tokens if self.failure is None and s.tokens else None

    @property
    def window_nats(self) -> np.ndarray | None:
        return self.session.window_nats if self.failure is None else None

    @property
    def params_changed(self) -> bool:
        ready, after = self.session.ready or {}, self.session.params_after
        return after is not None and ready.get("params_sha256") not in (None, after)


def _validate_request(
    windows: np.ndarray, window_bytes: np.ndarray, seq_len: int
) -> tuple[np.ndarray, np.ndarray]:
    windows, window_bytes = np.asarray(windows), np.asarray(window_bytes)
    if windows.ndim != 2 or windows.shape[1] != seq_len + 1 or windows.shape[0] == 0:
        raise InfrastructureFault(
            f"held-out windows must be (N, {seq_len + 1}), got {windows.shape}", code="eval.bad_request"
        )
    if not np.issubdtype(windows.dtype, np.integer) or windows.min() < 0:
        raise InfrastructureFault(
            "held-out windows must hold non-negative token ids", code="eval.bad_request"
        )
    if window_bytes.shape != (windows.shape[0],) or np.any(window_bytes <= 0):
        raise InfrastructureFault("window_bytes must be (N,) positive byte counts", code="eval.bad_request")
    return windows.astype(np.int64), window_bytes.astype(np.int64)


def run_heldout(
    spec: EvalProcessSpec,
    *,
    windows: np.ndarray,
    window_bytes: np.ndarray,
    heldout: HeldoutSpec,
    limits: SandboxLimits,
    log_dir: Path,
    isolation: IsolationProbe,
    extra_binds: tuple[Bind, ...] = (),
    compute: EvalComputeBudget | None = None,
    family_seed: int | None = None,
) -> HeldoutResult:
    """Measure one weights file on the given windows: check the file, evaluate, replay, decide.

    Used for every run's own held-out measurement and for re-measuring an incumbent's stored
    weights on a challenger's windows (paired comparison). Raises only for a malformed request.
    """
    windows, window_bytes = _validate_request(windows, window_bytes, int(spec.context["sequence_length"]))
    weights = Path(spec.weights_path)
    try:
        inventory = inspect_weights(weights)
    except MinerFault as exc:  # checked here, before any process reads it
        failure = Failure(
            code=exc.code, fault="miner", message=exc.message, phase="heldout", observed="checked by the host"
        )
        return HeldoutResult(HeldoutOutcome(), failure, None)
    log_dir.mkdir(parents=True, exist_ok=True)
    # The replay's graphs and program are not used; it answers the program check before its go.
    checked = spec.record_program and heldout.program_windows > 0
    replay_spec = spec.model_copy(
        update={"record_graphs": False, "record_program": False, "program_check": checked}
    )
    # The replay reads private copies of every file (runtime, submission, weights): none of them
    # is an inode the main process could warm in the page cache (docs/security.md, "Lookahead").
    runtime = replay_binds(isolation)
    jobs = [
        HeldoutJob(
            spec=process_spec,
            submission_dir=Path(spec.submission_dir),
            weights_path=weights,
            log_path=log_dir / name,
            limits=limits,
            isolation=isolation,
            extra_binds=extra_binds,
            runtime_binds=private,
        )
        for process_spec, name, private in ((spec, "heldout.log", None), (replay_spec, "replay.log", runtime))
    ]
    outcome = measure_heldout(jobs[0], jobs[1], windows, window_bytes, heldout, family_seed)
    failure = heldout_verdict(outcome, compute, int(windows.shape[0]), int(windows.shape[1]) - 1)
    return HeldoutResult(outcome, failure, inventory)


__all__ = [
    "EvalComputeBudget",
    "HeldoutOutcome",
    "HeldoutResult",
    "ProcessRecord",
    "heldout_verdict",
    "measure_heldout",
    "observations",
    "run_heldout",
]
