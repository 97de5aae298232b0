"""One evaluation task and its outcome (typed, JSON on the wire), and the function that runs it.

A task is everything a worker needs to evaluate one run without the validator's state: the
run's key, the ZIP (by path and sha256; a remote worker receives the bytes and checks them), the
profile, the data dir and its fingerprint, the chain beacon. ``run_task`` calls
``prism.evaluator.host.evaluate`` for that single cell and turns what happened into a
``TaskOutcome``: a manifest (whatever the run's own status), a miner fault at intake, or a
failure on our side. It never raises for a failed run.
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from prism.errors import PrismError
from prism.manifest import MANIFEST_FILENAME
from prism.scoring.paired import EvalRequest
from prism.store import RunKey
from prism.workers.slots import DeviceSlot

logger = logging.getLogger(__name__)

OutcomeState = Literal["finished", "miner_fault", "infra_fault"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PairedJob(_Strict):
    """Re-measure a finished run's weights on a challenger run's windows (scoring's request)."""

    request: EvalRequest
    profile_key: str
    model_zip_path: Path
    model_manifest_path: Path
    challenger_manifest_path: Path
    model_architecture_zip_path: Path | None = Field(
        default=None, description="a training variant's model: the canonical ZIP its runs trained on"
    )


class EvaluationTask(_Strict):
    """One run to train and measure, or (``paired`` set) one paired re-measurement; ``key`` is
    then the challenger's run."""

    key: RunKey
    zip_path: Path
    profile: str = Field(description="a profile name or a profile .yaml path")
    data_dir: Path
    data_fingerprint: str | None = Field(default=None, description="the prepared data a worker must hold")
    runs_dir: Path
    calibration_dir: Path
    heldout_seed: int | None = None
    beacon: tuple[int, str] | None = None
    slots: tuple[DeviceSlot, ...] = ()
    paired: PairedJob | None = None
    architecture_zip_path: Path | None = Field(
        default=None, description="a training_for_arch: its family's canonical ZIP (prism.submission.compose)"
    )

    @property
    def label(self) -> str:
        k = self.key
        label = f"{k.zip_sha256[:12]} {k.regime}/{k.seed} {k.recipe_mode}"
        if self.paired is not None:
            label = f"paired: {self.paired.request.model_zip_sha256[:12]} on the windows of {label}"
        return label


class TaskOutcome(_Strict):
    key: RunKey
    state: OutcomeState
    manifest_path: Path | None = None
    manifest_sha256: str | None = None
    run_status: str | None = Field(default=None, description="the manifest's own state (succeeded / failed)")
    family_id: str | None = None
    version_id: str | None = None
    heldout_bpb: float | None = None
    code: str | None = None
    message: str | None = None
    seconds: float = 0.0
    worker: str | None = Field(default=None, description="where it ran (a pid, or a Ray node)")
    paired: PairedJob | None = Field(default=None, description="set for a paired re-measurement")
    window_bytes: tuple[int, ...] = ()
    nats: tuple[float, ...] = ()


def _outcome_from_manifest(task: EvaluationTask, run_id: str, started: float) -> TaskOutcome:
    from prism.manifest import read_manifest

    path = task.runs_dir / run_id / MANIFEST_FILENAME
    data = path.read_bytes()
    manifest = read_manifest(path)
    failure = manifest.status.failure
    if failure is not None and failure.fault == "infrastructure":
        return TaskOutcome(
            key=task.key,
            state="infra_fault",
            code=failure.code,
            message=failure.message,
            seconds=time.monotonic() - started,
        )
    return TaskOutcome(
        key=task.key,
        state="finished",
        manifest_path=path,
        manifest_sha256=hashlib.sha256(data).hexdigest(),
        run_status=manifest.status.state,
        family_id=manifest.submission.family_id,
        version_id=manifest.submission.version_id,
        heldout_bpb=manifest.metrics.heldout_bpb,
        seconds=time.monotonic() - started,
    )


def _run_paired(task: EvaluationTask, job: PairedJob, started: float) -> TaskOutcome:
    from prism.evaluator.remeasure import remeasure
    from prism.manifest import read_manifest
    from prism.profiles import load_profile

    model = read_manifest(job.model_manifest_path)
    result = remeasure(
        model_zip=job.model_zip_path, model_manifest=model, model_run_dir=job.model_manifest_path.parent,
        architecture_zip=job.model_architecture_zip_path,
        challenger=read_manifest(job.challenger_manifest_path), profile=load_profile(task.profile),
        data_dir=task.data_dir, log_dir=task.runs_dir / "paired" / f"{job.request.run_id}--{model.run_id}",
    )  # fmt: skip
    seconds = time.monotonic() - started
    if result.failure is not None:
        state: OutcomeState = "miner_fault" if result.failure.fault == "miner" else "infra_fault"
        return TaskOutcome(key=task.key, state=state, code=result.failure.code, message=result.failure.message,
                           seconds=seconds, paired=job)  # fmt: skip
    return TaskOutcome(key=task.key, state="finished", seconds=seconds, paired=job,
                       window_bytes=result.window_bytes, nats=result.nats)  # fmt: skip


def run_task(task: EvaluationTask) -> TaskOutcome:
    """Evaluate the task's one cell (or its paired re-measurement). Miner faults and our failures
    are outcomes, not exceptions."""
    from prism.evaluator.host import evaluate
    from prism.profiles import load_profile
    from prism.submission import SubmissionError

    started = time.monotonic()
    key = task.key
    try:
        if task.paired is not None:
            return _run_paired(task, task.paired, started)
        manifests = evaluate(
            task.zip_path, profile=load_profile(task.profile), data_dir=task.data_dir, out_dir=task.runs_dir,
            recipe_mode=key.recipe_mode, regimes=[key.regime], seeds=[key.seed], heldout_seed=task.heldout_seed,
            attempt=0, progress=False, calibration_dir=task.calibration_dir, beacon=task.beacon,
            architecture_from=task.architecture_zip_path,
        )  # fmt: skip
        return _outcome_from_manifest(task, manifests[0].run_id, started)
    except SubmissionError as exc:
        return TaskOutcome(
            key=key,
            state="miner_fault",
            code=exc.code,
            message=exc.message,
            seconds=time.monotonic() - started,
        )
    except Exception as exc:  # ours, whatever it is: never the miner's fault
        logger.exception("evaluation of %s failed on our side", task.label)
        code = exc.code if isinstance(exc, PrismError) else "validator.evaluate_crashed"
        return TaskOutcome(
            key=key,
            state="infra_fault",
            code=code,
            message=str(exc)[:2000],
            seconds=time.monotonic() - started,
            paired=task.paired,
        )


__all__ = ["EvaluationTask", "OutcomeState", "PairedJob", "TaskOutcome", "run_task"]
