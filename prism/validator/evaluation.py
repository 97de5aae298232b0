"""The validator's evaluation stages: hand runs to the pool, record what comes back.

    collect (pool outcomes -> store)  ->  screen (held runs released or screened)
      ->  dispatch (queued runs and paired re-measurements onto free slots)

Nothing here waits for a run: a run takes minutes to hours, and the loop must keep syncing,
scoring and setting weights meanwhile. Whose fault a failure is was decided where it happened
(``prism.evaluator.verdicts`` for a run, intake for a ZIP); here a miner fault is a result and
anything else is retried up to ``max_attempts`` and backs the loop off, except a host error
(``prism.errors.HostError``: PRISM's own code raised on one run's output) from a single
submission, which may be that submission's doing and must not pause everyone else's runs.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from prism.errors import HostError
from prism.scoring import ScoringPolicy, WeightResult
from prism.scoring.paired import EvalRequest
from prism.scoring.submissions import SubmissionVerdict
from prism.store import RunKey, Store
from prism.validator.state import LoopState
from prism.workers.slots import DeviceSlot
from prism.workers.tasks import EvaluationTask, PairedJob, TaskOutcome

logger = logging.getLogger(__name__)

INFRA_BACKOFF_S = 30.0
INFRA_BACKOFF_MAX_S = 900.0
SCREEN_REASON = "screen.behind_leader"


class Pool(Protocol):
    """What the loop needs of a pool (``prism.workers.LocalPool``, ``prism.workers.RayPool``)."""

    name: str
    slots: list[DeviceSlot]

    def free_slots(self) -> list[DeviceSlot]: ...

    def in_flight(self) -> list[EvaluationTask]: ...

    def submit(self, task: EvaluationTask, slots_needed: int = 1) -> bool: ...

    def poll(self) -> list[TaskOutcome]: ...

    def shutdown(self) -> list[RunKey]: ...


@dataclass(frozen=True)
class EvaluationSettings:
    """What every task of this validator shares."""

    profile: str  # a profile name or .yaml path, as the workers load it
    data_dir: Path
    data_fingerprint: str | None
    runs_dir: Path
    calibration_dir: Path
    heldout_seed: int | None
    max_attempts: int
    require_beacon: bool
    slots_per_run: int = 1


# --- collect ------------------------------------------------------------------------------------


def record_outcome(
    store: Store, outcome: TaskOutcome, settings: EvaluationSettings, state: LoopState
) -> dict[str, Any]:
    """Put one outcome in the store. Returns the numbers the stage callbacks log."""
    state.outcomes += 1
    if outcome.paired is not None:
        return _record_paired(store, outcome, settings, state)
    key = outcome.key
    infra = outcome.state == "infra_fault"
    if outcome.state == "finished":
        assert outcome.manifest_path is not None and outcome.manifest_sha256 is not None
        store.finish_run(key, outcome.manifest_path, outcome.manifest_sha256)
        if outcome.family_id and outcome.version_id:
            store.set_identity(key.zip_sha256, family_id=outcome.family_id, version_id=outcome.version_id)
        state.run_seconds.append(outcome.seconds)
        run_state = outcome.run_status or "succeeded"
    else:
        fault = "infrastructure" if infra else "miner"
        run_state = store.fail_run(key, code=outcome.code or "validator.unknown", fault=fault,
                                   message=outcome.message or "", retry=infra, max_attempts=settings.max_attempts)  # fmt: skip
    if not infra:
        state.last_result_step = state.step
    _back_off_for(outcome, state)
    return {"run": f"{key.zip_sha256[:12]} {key.regime}/{key.seed} {key.recipe_mode}", "state": run_state,
            "code": outcome.code, "heldout_bpb": outcome.heldout_bpb, "seconds": round(outcome.seconds, 1),
            "infra": infra, "worker": outcome.worker}  # fmt: skip


def _record_paired(
    store: Store, outcome: TaskOutcome, settings: EvaluationSettings, state: LoopState
) -> dict[str, Any]:
    job = outcome.paired
    assert job is not None
    request, infra = job.request, outcome.state == "infra_fault"
    if outcome.state == "finished":
        store.record_paired_eval(request, profile_key=job.profile_key, window_bytes=outcome.window_bytes,
                                 nats=outcome.nats)  # fmt: skip
    elif outcome.state == "miner_fault":  # the model's own fault: it forfeits (prism.scoring.paired)
        store.record_paired_eval(
            request, profile_key=job.profile_key, failure_code=outcome.code or "paired.failed"
        )
    else:
        tries = state.paired_attempts.get((request.run_id, request.model_run_id), 0) + 1
        state.paired_attempts[(request.run_id, request.model_run_id)] = tries
    if not infra:
        state.last_result_step = state.step
    _back_off_for(outcome, state)
    return {"paired": request.model_run_id, "on": request.run_id, "state": outcome.state, "code": outcome.code,
            "seconds": round(outcome.seconds, 1), "infra": infra}  # fmt: skip


def _back_off_for(outcome: TaskOutcome, state: LoopState) -> None:
    if outcome.state != "infra_fault":
        state.host_error_submissions.clear()
        back_off_after_infrastructure_failures(state, False)
    elif pauses_evaluation(outcome, state):
        back_off_after_infrastructure_failures(state, True)
    # else: one submission's host errors, neither an outage nor a result: the streak stays


def pauses_evaluation(outcome: TaskOutcome, state: LoopState) -> bool:
    """Whether a failure on our side counts towards the validator-wide back-off.

    Any does, except a host error (``prism.errors.HostError``) until the streak of them spans two
    submissions: one submission may provoke them on purpose (a free pause of every other miner's
    evaluation, issue 9 class 7), while a bug of ours that every run hits shows up on the next
    submission too, and then pausing keeps it from burning every queued run's attempts.
    """
    if outcome.code != HostError.default_code:
        return True
    state.host_error_submissions.add(outcome.key.zip_sha256)
    return len(state.host_error_submissions) >= 2


def back_off_after_infrastructure_failures(state: LoopState, infra: bool) -> None:
    """Consecutive failures on our side (GPU gone, disk full) pause new dispatches with exponential
    backoff, so an outage does not burn every queued run's attempts in seconds."""
    state.infra_streak = state.infra_streak + 1 if infra else 0
    if infra:
        delay = min(INFRA_BACKOFF_S * 2 ** (state.infra_streak - 1), INFRA_BACKOFF_MAX_S)
        state.evaluation_paused_until = time.monotonic() + delay
        logger.warning("infrastructure failure #%d in a row: pausing new evaluations for %.0f s",
                       state.infra_streak, delay)  # fmt: skip


# --- screen -------------------------------------------------------------------------------------


def apply_screening(store: Store, result: WeightResult, policy: ScoringPolicy) -> dict[str, int]:
    """Decide the held runs of submissions whose first cell is done: queued when the submission
    still needs them, screened when scoring screens it out or its first cell is not a valid
    result (it cannot complete a score then). A screened submission that scoring no longer
    screens (earlier results changed the leader it faced) is queued after all."""
    verdicts = {v.zip_sha256: v for v in result.leaderboard.submissions}
    counts = {"released": 0, "screened": 0, "unscreened": 0}
    for zip_sha256 in store.held_submissions():
        verdict = verdicts.get(zip_sha256)
        if verdict is None or not store.first_cell_done(zip_sha256):
            continue
        if _needs_other_cells(verdict, policy):
            counts["released"] += store.release_held(zip_sha256)
        else:
            counts["screened"] += store.screen_held(zip_sha256)
    for zip_sha256 in store.screened_submissions():
        verdict = verdicts.get(zip_sha256)
        if verdict is not None and _needs_other_cells(verdict, policy):
            counts["unscreened"] += store.unscreen(zip_sha256)
    return counts


def _needs_other_cells(verdict: SubmissionVerdict, policy: ScoringPolicy) -> bool:
    if SCREEN_REASON in verdict.reasons:
        return False
    cell = ("reference", policy.screening_regime, policy.screening_seed)
    return any((r.recipe_mode, r.regime, r.seed) == cell and r.outcome == "valid" for r in verdict.runs)


def canonical_at(result: WeightResult, family_id: str, block: int) -> str | None:
    """The ZIP of ``family_id``'s canonical version as of ``block`` (its founding, or the last
    version change committed at or before it), from the replay's ownership events."""
    zip_sha256 = None
    for event in result.events:
        founding_or_version = event.kind in ("family_founded", "canonical_version")
        if founding_or_version and event.family_id == family_id and event.block <= block:
            zip_sha256 = event.zip_sha256
    return zip_sha256


def release_variants(store: Store, result: WeightResult) -> dict[str, int]:
    """Training variants train their family's canonical code as of their commit. Once no reference
    run committed at or before it is pending, that canonical is final (the same on every
    validator): the variant's runs are queued on it, or screened if the family did not exist."""
    counts = {"variants_released": 0, "variants_without_family": 0}
    for zip_sha256, block, target in store.held_variants():
        if store.pending_reference_runs_until(block):
            continue
        canonical = canonical_at(result, target, block) if target else None
        if canonical is None:
            counts["variants_without_family"] += store.screen_held(zip_sha256)
            continue
        store.set_architecture_zip(zip_sha256, canonical)
        counts["variants_released"] += store.release_held(zip_sha256)
    return counts


# --- dispatch -----------------------------------------------------------------------------------


def dispatch(store: Store, pool: Pool, settings: EvaluationSettings, result: WeightResult | None,
             state: LoopState, *, paused: bool) -> list[str]:  # fmt: skip
    """Fill free slots: paired re-measurements first (cheap, and they unblock decisions), then the
    queue's next runs. Returns the labels of what started."""
    started: list[str] = []
    if paused:
        return started
    requests = _wanted_paired(store, pool, result, settings, state) if result is not None else []
    while len(pool.free_slots()) >= settings.slots_per_run:
        task = _paired_task(store, requests.pop(0), settings, result) if requests else None
        if task is None and not requests:
            key = store.claim_next_run(require_beacon=settings.require_beacon)
            if key is None:
                break
            task = run_task_for(store, key, settings)
        if task is None:
            continue
        if not pool.submit(task, settings.slots_per_run):
            if task.paired is None:
                store.release_run(task.key)
            break
        started.append(task.label)
    return started


def run_task_for(store: Store, key: RunKey, settings: EvaluationSettings) -> EvaluationTask:
    beacon = None
    if settings.require_beacon:
        block, block_hash = store.beacon_of(key.zip_sha256)
        beacon = (block, block_hash)
    architecture = store.architecture_zip_of(key.zip_sha256)
    return EvaluationTask(
        key=key, zip_path=store.blob_path(key.zip_sha256), profile=settings.profile, data_dir=settings.data_dir,
        data_fingerprint=settings.data_fingerprint, runs_dir=settings.runs_dir, calibration_dir=settings.calibration_dir,
        heldout_seed=None if settings.require_beacon else settings.heldout_seed, beacon=beacon,
        architecture_zip_path=store.blob_path(architecture) if architecture else None,
    )  # fmt: skip


def _wanted_paired(store: Store, pool: Pool, result: WeightResult, settings: EvaluationSettings,
                   state: LoopState) -> list[EvalRequest]:  # fmt: skip
    in_flight = {
        (t.paired.request.run_id, t.paired.request.model_run_id) for t in pool.in_flight() if t.paired
    }
    wanted = []
    for request in result.eval_requests:
        pair = (request.run_id, request.model_run_id)
        if request.run_id == request.model_run_id or pair in in_flight:
            continue  # a run's own windows come from its manifest, not from a re-measurement
        if state.paired_attempts.get(pair, 0) >= settings.max_attempts or store.paired_eval_known(request):
            continue
        wanted.append(request)
    return wanted


def outstanding_paired(store: Store, pool: Pool, result: WeightResult | None, settings: EvaluationSettings,
                       state: LoopState) -> int:  # fmt: skip
    """Paired re-measurements the last scoring asked for that are not finished: in flight or wanted."""
    running = sum(1 for t in pool.in_flight() if t.paired)
    return running + (len(_wanted_paired(store, pool, result, settings, state)) if result is not None else 0)


def _paired_task(store: Store, request: EvalRequest, settings: EvaluationSettings,
                 result: WeightResult | None) -> EvaluationTask | None:  # fmt: skip
    model_manifest = store.manifest_of_run(request.model_run_id)
    challenger_manifest = store.manifest_of_run(request.run_id)
    challenger_key = store.run_key_of(challenger_manifest) if challenger_manifest else None
    if model_manifest is None or challenger_manifest is None or challenger_key is None or result is None:
        logger.warning("paired request %s on %s names a run this store does not hold", request.model_run_id,
                       request.run_id)  # fmt: skip
        return None
    model_architecture = (
        store.architecture_zip_of(request.model_zip_sha256)
        if request.model_recipe_mode == "submitted"
        else None
    )
    job = PairedJob(request=request, profile_key=result.leaderboard.profile_key,
                    model_zip_path=store.blob_path(request.model_zip_sha256), model_manifest_path=model_manifest,
                    challenger_manifest_path=challenger_manifest,
                    model_architecture_zip_path=store.blob_path(model_architecture) if model_architecture else None)  # fmt: skip
    return run_task_for(store, challenger_key, settings).model_copy(update={"paired": job})


def release_in_flight(store: Store, pool: Pool) -> int:
    """Orderly shutdown: kill the workers; their runs go back to the queue without an attempt."""
    keys = pool.shutdown()
    for key in keys:
        store.release_run(key)
    return len(keys)
