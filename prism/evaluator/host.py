"""``evaluate()``: train and measure one submission under a profile, one manifest per run (host side).

This module only sequences the phases; each lives in its own module and returns a typed outcome:

    plan_runs (plan)  ->  calibrate (calibration)  ->  run_training (train_phase, feed)
      ->  inspect_weights / check_budgets (budgets)  ->  compute check
      ->  measure_heldout (heldout_phase: heldout_host + replay)  ->  check_identity
      ->  decide (verdicts)  ->  build_manifest (manifest_build)  ->  artifacts + manifest

It never imports torch nor the submission's code. Intake failures (``SubmissionError``) are raised
before any run starts; every failure after intake becomes a failed manifest whose fault the
verdicts module decided, except an exception of the host's own code while it handles a run's
output, which is raised as ``HostError`` (no manifest: the run is retried).
"""

from __future__ import annotations

import datetime
import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from prism import data as prism_data
from prism.errors import InfrastructureFault, MinerFault, OperatorError, PrismError
from prism.evaluator import sandbox as sb
from prism.evaluator.artifacts import (
    GRAPH_FILE,
    METADATA_FILE,
    METRICS_FILE,
    RUN_GRAPH_FILE,
    RUN_LOG,
    draw_loss_curves,
    make_read_only,
    make_writable,
    write_json,
    write_window_losses,
)  # fmt: skip
from prism.evaluator.budgets import check_budgets, inspect_weights
from prism.evaluator.calibration import Calibration, calibrate
from prism.evaluator.context import (
    CHECKPOINT_DIRNAME,
    CHECKPOINT_RECORD_FILENAME,
    CheckpointInfo,
    ContextValues,
    RunSpec,
)
from prism.evaluator.devices import gpu_health
from prism.evaluator.framing import ProtocolError
from prism.evaluator.heldout_phase import EvalComputeBudget, HeldoutResult, run_heldout
from prism.evaluator.heldout_wire import EvalProcessSpec
from prism.evaluator.identity_check import check_identity
from prism.evaluator.manifest_build import RunEvidence, build_manifest, build_metrics
from prism.evaluator.plan import (
    SANDBOX_OUT,
    EvalRequest,
    RecipeMode,
    RunPlan,
    default_calibration_dir,
    describe_data,
    plan_runs,
    reset_run_dir,
)
from prism.evaluator.progress import RunProgress
from prism.evaluator.recipe import reference_steps
from prism.evaluator.shipped_constants import constants_fault
from prism.evaluator.train_phase import TrainingJob, TrainingOutcome, run_training
from prism.evaluator.variant import submission_to_run
from prism.evaluator.verdicts import Observation, decide, host_errors_typed
from prism.manifest import MANIFEST_FILENAME, Artifacts, Failure, RunManifest, read_manifest, write_manifest
from prism.profiles import Profile

logger = logging.getLogger(__name__)

Competition = str


def default_torch_threads(device: str) -> int:
    """Intra-op threads per rank: fixed (not machine-dependent) so runs are bit-identical.
    One on CPU: on a shared machine OpenMP teams thrash (1.6 s/step with 2 threads against
    0.12 s/step with 1 for the smoke GPT on 2 loaded cores)."""
    return 4 if device == "cuda" else 1


def checkpoint_interval(profile: Profile, plan: RunPlan) -> int:
    """Steps between ``save_checkpoint`` calls: ten per official run, none but the last on smoke."""
    return max(1, reference_steps(plan.regime) // 10) if profile.official else 0


# ----------------------------------------------------------------------------------------------
# phases


def _calibration(request: EvalRequest, plan: RunPlan, isolation: sb.IsolationProbe) -> Calibration | None:
    if request.calibration_dir is None or request.profile.limits.compute_cap is None:
        return None
    data = request.data
    return calibrate(
        request.profile,
        plan.regime,
        data_dir=data.path,
        vocab_size=data.vocab_size,
        eos_id=data.eos_id,
        nproc=request.nproc,
        cache_dir=request.calibration_dir,
        isolation=isolation,
    )


def _resume_record(resume_checkpoint_dir: Path | None) -> CheckpointInfo | None:
    if resume_checkpoint_dir is None:
        return None
    record = Path(resume_checkpoint_dir).parent / CHECKPOINT_RECORD_FILENAME
    try:
        return CheckpointInfo.model_validate_json(record.read_bytes()[:4_000_000])
    except (OSError, ValueError) as exc:
        raise OperatorError(
            f"no readable checkpoint record next to {resume_checkpoint_dir}: {exc}",
            code="eval.no_resume_record",
        ) from exc


def _run_spec(request: EvalRequest, plan: RunPlan, submission_dir: Path) -> RunSpec:
    profile, regime, resume = request.profile, plan.regime, _resume_record(request.resume_checkpoint_dir)
    context = ContextValues(
        vocab_size=request.data.vocab_size, sequence_length=regime.sequence_length, max_layers=regime.max_layers,
        max_parameters=regime.max_parameters, seed=plan.seed, attempt=request.attempt, train_tokens=regime.train_tokens,
        checkpoint_dir=str(plan.sandbox_out / CHECKPOINT_DIRNAME),
        resume_checkpoint_dir=str(Path(request.resume_checkpoint_dir).resolve()) if resume else None,
        checkpoint_metadata=resume.metadata if resume else {},
    )  # fmt: skip
    sub = request.submission
    return RunSpec(
        run_id=plan.run_id, submission_dir=str(submission_dir), architecture_entrypoint=sub.architecture_entrypoint,
        training_entrypoint=sub.training_entrypoint, feed_socket="", out_dir=str(plan.sandbox_out),
        recipe_mode=request.recipe_mode, regime=regime, context=context, eos_id=request.data.eos_id,
        lr_window=profile.lr_window, probe_every_steps=profile.probe.every_steps, probe_fraction=profile.probe.fraction,
        device=profile.device, torch_threads=default_torch_threads(profile.device),
        resume_step=resume.step if resume else 0, checkpoint_every_steps=checkpoint_interval(profile, plan),
        commit_constants=profile.heldout.program_windows > 0,
    )  # fmt: skip


def _train(
    request: EvalRequest, plan: RunPlan, submission_dir: Path, isolation: sb.IsolationProbe, bars: RunProgress
) -> TrainingOutcome:
    profile = request.profile
    binds = [
        *sb.python_binds(),
        sb.Bind(src=submission_dir),
        *(sb.gpu_binds() if profile.device == "cuda" else []),
    ]
    if request.resume_checkpoint_dir is not None:
        binds.append(sb.Bind(src=Path(request.resume_checkpoint_dir).resolve()))
    job = TrainingJob(
        spec=_run_spec(request, plan, submission_dir), root=plan.root, sandbox_out=plan.sandbox_out, spec_dir=plan.spec_dir,
        weights_dir=plan.weights_dir, data_dir=request.data.path, vocab_size=request.data.vocab_size, nproc=request.nproc,
        limits=sb.SandboxLimits.from_profile(profile.limits, phase="train", device=profile.device), binds=tuple(binds),
        isolation=isolation, progress=bars, task=bars.add(f"{plan.regime.name} seed {plan.seed}", reference_steps(plan.regime)),
    )  # fmt: skip
    outcome = run_training(job)
    if outcome.plan is not None:
        bars.update(
            job.task, total=outcome.plan.total_steps, status="trained" if outcome.weights else "failed"
        )
    return outcome


def training_failure(outcome: TrainingOutcome) -> Failure | None:
    feed, report = outcome.feed, outcome.report
    complete = outcome.plan is not None and len(feed.completed) == feed.world_size
    return decide(
        Observation(
            phase="train",
            hello=feed.said_hello,
            sandbox=outcome.sandbox,
            launch_error=outcome.launch_error,
            data_error=feed.data_error,
            host_check=outcome.output_fault
            or (MinerFault(feed.recipe_error, code="eval.bad_recipe") if feed.recipe_error else None),
            channel_error=ProtocolError(feed.errors[0]) if feed.errors else None,
            claimed=report.failure.model_dump() if report and report.failure else None,
            missing=None
            if complete and outcome.weights
            else ("every training batch" if not complete else "trained weights"),
        )
    )


def _budget_failure(ev: RunEvidence) -> Failure | None:
    """Budgets and compute, counted and timed by the host (miner faults when over)."""
    assert ev.training is not None and ev.training.weights is not None
    regime = ev.plan.regime
    try:
        ev.inventory = inspect_weights(ev.training.weights)
        check_budgets(ev.inventory, max_parameters=regime.max_parameters, max_layers=regime.max_layers)
        _check_compute(ev)
    except MinerFault as exc:
        return Failure(
            code=exc.code, fault="miner", message=exc.message, phase="train", observed="counted by the host"
        )
    return None


def _check_compute(ev: RunEvidence) -> None:
    from prism.evaluator.manifest_build import build_compute

    record, cap = build_compute(ev), ev.request.profile.limits.compute_cap
    if record is not None and record.ratio is not None and cap is not None and record.ratio > cap:
        raise MinerFault(
            f"training used {record.measured_s:.1f} {record.kind} = {record.ratio:.2f}x the calibrated reference "
            f"({record.expected_s:.1f}) for this budget; the cap is {cap:.2f}x",
            code="budget.compute_exceeded",
        )


def _heldout(ev: RunEvidence, submission_dir: Path) -> Failure | None:
    request, plan, profile = ev.request, ev.plan, ev.request.profile
    assert ev.training is not None and ev.training.weights is not None and ev.training.plan is not None
    make_read_only(plan.weights_dir)
    windows, window_bytes = prism_data.heldout_windows(
        request.data.path,
        split="val",
        n_windows=profile.heldout.windows,
        seq_len=plan.regime.sequence_length,
        seed=plan.heldout_seed,
    )
    result = run_heldout(
        _heldout_spec(ev, submission_dir),
        windows=windows,
        window_bytes=window_bytes,
        heldout=profile.heldout,
        limits=sb.SandboxLimits.from_profile(profile.limits, phase="eval", device=profile.device),
        log_dir=plan.root,
        isolation=ev.isolation,
        extra_binds=tuple(sb.gpu_binds()) if profile.device == "cuda" else (),
        compute=_eval_compute_budget(ev),
        family_seed=plan.heldout_seed,
    )
    ev.heldout, ev.window_bytes = result.outcome, window_bytes
    for name, record in (("heldout", result.outcome.main), ("replay", result.outcome.replay_process)):
        if record.result is not None and record.result.cpu_accounted:
            ev.timings[f"{name}_cpu_s"] = record.result.cpu_s  # what the eval compute budget reads
    if result.failure is not None:
        return result.failure
    mismatch = _identity_fault(ev, result)
    if mismatch is None:
        return None
    return Failure(
        code=mismatch.code,
        fault="miner",
        message=mismatch.message,
        phase="heldout",
        observed="checked by the host",
    )


def _identity_fault(ev: RunEvidence, result: HeldoutResult) -> MinerFault | None:
    """What the host checks itself once the held-out phase passed: the claimed graphs against the
    weights file, and the program's shipped constants against the fresh model's commitment (only
    where the program check ran: the commitment is what that check may treat as architecture)."""
    session = result.session
    if ev.inventory is not None and session.canonical_graph and session.run_graph:
        mismatch = check_identity(session.canonical_graph, session.run_graph, ev.inventory)
        if mismatch is not None:
            return mismatch
    check = result.outcome.program
    if check is not None and check.reply.log_probs is not None and ev.training is not None:
        return constants_fault(check.reply.constants, ev.training.feed.constants or frozenset())
    return None


#: Start-up of a held-out process beyond the training calibration's (graph recording, the weights
#: load): 1.5x the calibrated start-up plus 5 s of CPU, or 60 s of wall time on GPU (the graph is
#: recorded on CPU at the run context there). The budget is there to catch training, not to time
#: start-up.
EVAL_FIXED_FACTOR = 1.5
EVAL_FIXED_EXTRA_S = {"cpu_s": 5.0, "wall_s": 60.0}


def _eval_compute_budget(ev: RunEvidence) -> EvalComputeBudget | None:
    calibration = ev.calibration
    if calibration is None:
        return None
    return EvalComputeBudget(
        kind=calibration.kind,
        fixed_s=EVAL_FIXED_FACTOR * calibration.fixed_s + EVAL_FIXED_EXTRA_S.get(calibration.kind, 60.0),
        per_position_s=ev.request.profile.limits.eval_compute_cap * calibration.per_token_s,
    )


def _heldout_spec(ev: RunEvidence, submission_dir: Path) -> EvalProcessSpec:
    request, plan, profile = ev.request, ev.plan, ev.request.profile
    assert ev.training is not None and ev.training.weights is not None and ev.training.plan is not None
    spec = _run_spec(request, plan, submission_dir)
    return EvalProcessSpec(
        submission_dir=str(submission_dir),
        architecture_entrypoint=request.submission.architecture_entrypoint,
        training_entrypoint=request.submission.training_entrypoint,
        weights_path=str(ev.training.weights),
        context=spec.context.model_dump() | {"checkpoint_dir": None, "resume_checkpoint_dir": None},
        canonical_context=profile.canonical_context.model_dump(),
        total_steps=ev.training.plan.total_steps,
        use_inference_hooks=request.recipe_mode == "submitted",
        device=profile.device,
        torch_threads=spec.torch_threads,
        max_batch_size=profile.heldout.batch_size,
    )


# ----------------------------------------------------------------------------------------------
# one run, then evaluate()


def _write_artifacts(ev: RunEvidence) -> None:
    root, artifacts = ev.plan.root, ev.artifacts
    artifacts.run_log = RUN_LOG if (root / RUN_LOG).exists() else None
    session = ev.heldout.main.session if ev.heldout else None
    if session is not None and session.canonical_graph:
        write_json(root / GRAPH_FILE, session.canonical_graph)
        artifacts.architecture_graph = GRAPH_FILE
        write_json(root / METADATA_FILE, _architecture_metadata(session.canonical_graph, ev))
        artifacts.architecture_metadata = METADATA_FILE
    if session is not None and session.run_graph:
        write_json(root / RUN_GRAPH_FILE, session.run_graph)
    probes = ev.training.probes if ev.training else []
    metrics = build_metrics(ev)
    write_json(
        root / METRICS_FILE,
        {"run_id": ev.plan.run_id, "metrics": metrics.model_dump(mode="json"), "probe_records": probes},
    )
    artifacts.metrics = METRICS_FILE
    report = ev.training.report if ev.training else None
    if report is not None and report.checkpoint is not None and ev.failure is None:
        artifacts.checkpoint = f"{SANDBOX_OUT}/{CHECKPOINT_DIRNAME}/{report.checkpoint.path}"
    if ev.failure is None and session is not None and session.window_nats is not None:
        artifacts.window_losses, artifacts.window_losses_sha256 = write_window_losses(
            root, ev.plan.run_id, ev.plan.heldout_seed, ev.window_bytes, session.window_nats
        )
    artifacts.plot, artifacts.plot_png = draw_loss_curves(
        root, probes=probes, heldout=metrics.loss_vs_tokens, title=ev.plan.run_id
    )


def _architecture_metadata(graph: dict, ev: RunEvidence) -> dict:  # type: ignore[type-arg]
    """Source-free description of the accepted architecture version (no code, no host paths)."""
    return {
        "schema": "prism_architecture_metadata.v1",
        "family_id": graph.get("family_id"),
        "version_id": graph.get("version_id"),
        "parameter_count": ev.inventory.parameter_count if ev.inventory else graph.get("parameter_count"),
        "layer_count": ev.inventory.layer_count if ev.inventory else None,
        "flops_per_token": graph.get("flops_per_token"),
        "module_tree": graph.get("modules"),
        "torch_version": graph.get("torch_version"),
    }


def run_one(
    request: EvalRequest, plan: RunPlan, submission_dir: Path, isolation: sb.IsolationProbe, bars: RunProgress
) -> RunManifest:
    """Every phase of one regime x seed; the manifest is written and returned."""
    t0 = time.perf_counter()
    reset_run_dir(plan)
    ev = RunEvidence(
        plan=plan,
        request=request,
        isolation=isolation,
        created_at=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        gpu_names=gpu_health().names if request.profile.device == "cuda" else (),
    )
    try:
        ev.calibration = _calibration(request, plan, isolation)
    except InfrastructureFault as exc:
        ev.failure = Failure(
            code=exc.code,
            fault="infrastructure",
            message=exc.message,
            phase="calibration",
            observed="calibration failed on the host",
        )
    # From here on the host reads what sandboxed processes produced: an exception of its own
    # code is a HostError (retried, not a validator-wide pause; prism.evaluator.verdicts).
    with host_errors_typed(f"run {plan.run_id}"):
        if ev.failure is None:
            _train_and_measure(ev, submission_dir, bars)
        ev.failure = _device_verdict(ev)
        if ev.training is not None and ev.training.report is not None:
            ev.timings.update({f"runner_{k}": v for k, v in ev.training.report.timings_s.items()})
        ev.timings["total"] = time.perf_counter() - t0
        _write_artifacts(ev)
        make_read_only(plan.sandbox_out)  # the record of what the submission wrote stays as it was
        manifest = build_manifest(ev)
        write_manifest(manifest, plan.root)
    return manifest


def _train_and_measure(ev: RunEvidence, submission_dir: Path, bars: RunProgress) -> None:
    """Training, the host's budget and compute checks, then the held-out measurement."""
    ev.training = _train(ev.request, ev.plan, submission_dir, ev.isolation, bars)
    ev.timings["train_sandbox"] = ev.training.wall_s
    ev.failure = training_failure(ev.training) or _budget_failure(ev)
    if ev.failure is None:
        t = time.perf_counter()
        ev.failure = _heldout(ev, submission_dir)
        ev.timings["heldout_sandbox"] = time.perf_counter() - t
        if ev.heldout is not None:
            ev.timings.update({f"heldout_{k}": v for k, v in ev.heldout.timings_s.items()})


def _device_verdict(ev: RunEvidence) -> Failure | None:
    """A GPU run that failed, on a GPU the driver no longer reports healthy, failed on our side."""
    failure = ev.failure
    if ev.request.profile.device != "cuda" or failure is None or failure.fault != "miner":
        return failure
    health = gpu_health()
    if health.ok:
        return failure
    return Failure(
        code="device.unhealthy", fault="infrastructure", phase=failure.phase,
        message=f"{failure.code} on a GPU that then failed the host's check: {health.detail}",
        observed="the host's device check failed",
    )  # fmt: skip


def existing_result(plan: RunPlan) -> RunManifest | None:
    """A finished run is not recomputed (a restarted validator finds it), unless it failed on our side."""
    path = plan.root / MANIFEST_FILENAME
    if not path.is_file():
        return None
    try:
        manifest = read_manifest(path)
    except InfrastructureFault:
        return None
    failure = manifest.status.failure
    return None if failure is not None and failure.fault == "infrastructure" else manifest


def evaluate(
    submission_path: Path,
    *,
    profile: Profile,
    data_dir: Path,
    out_dir: Path,
    recipe_mode: RecipeMode,
    competition: Competition | None = None,
    regimes: list[str] | None = None,
    seeds: list[int] | None = None,
    heldout_seed: int | None = None,
    nproc_per_node: int | None = None,
    isolation: sb.IsolationProbe | None = None,
    progress: bool = True,
    attempt: int = 0,
    resume_checkpoint_dir: Path | None = None,
    on_manifest: Callable[[RunManifest, Path], None] | None = None,
    on_cached: Callable[[RunManifest], None] | None = None,
    calibration_dir: Path | None = None,
    force: bool = False,
    beacon: tuple[int, str] | None = None,
    architecture_from: Path | None = None,
) -> list[RunManifest]:
    """Train and measure one submission under ``profile``; one manifest per regime x seed.

    Raises ``SubmissionError`` when intake rejects the submission, ``OperatorError`` for bad
    arguments and ``HostError`` when PRISM's own code raised on a run's output. ``beacon`` = (block, block hash) derives every cell's seeds from the chain
    (prism.beacon; validators on official profiles). ``calibration_dir`` (default: this machine's cache, ``prism.evaluator.plan.cache_dir``)
    holds the compute calibrations. ``architecture_from`` (a ``training_for_arch`` only): the family's
    canonical ZIP, whose architecture files the runs train with the variant's recipe
    (``prism.submission.compose``).
    """
    if recipe_mode not in ("reference", "submitted"):
        raise OperatorError(
            f"recipe mode must be reference or submitted, got {recipe_mode!r}", code="eval.bad_recipe_mode"
        )
    out_dir = Path(out_dir).resolve()
    submission, architecture_zip = submission_to_run(Path(submission_path), architecture_from, profile)
    request = EvalRequest(
        submission=submission, profile=profile, data=describe_data(Path(data_dir).resolve(), profile),
        out_dir=out_dir, recipe_mode=recipe_mode,
        competition=competition or ("training" if recipe_mode == "submitted" else "architecture"),  # type: ignore[arg-type]
        regimes=tuple(profile.regime(n) for n in regimes) if regimes else profile.regimes,
        seeds=tuple(seeds) if seeds else profile.seeds, heldout_seed=profile.heldout.seed if heldout_seed is None else heldout_seed,
        nproc=nproc_per_node or profile.nproc_per_node, attempt=attempt, resume_checkpoint_dir=resume_checkpoint_dir,
        calibration_dir=Path(calibration_dir).resolve() if calibration_dir else default_calibration_dir(), force=force,
        beacon=beacon, architecture_zip_sha256=architecture_zip,
    )  # fmt: skip
    isolation = isolation or sb.probe_isolation()
    out_dir.mkdir(parents=True, exist_ok=True)
    manifests: list[RunManifest] = []
    with tempfile.TemporaryDirectory(prefix="prism-submission-") as tmp, RunProgress(progress) as bars:
        submission_dir = Path(tmp) / "submission"
        request.submission.write_to(submission_dir)
        make_read_only(submission_dir)
        try:
            for plan in plan_runs(request):
                existing = None if force else existing_result(plan)
                if existing is not None:
                    logger.info(
                        "run %s already finished (%s); not recomputed", plan.run_id, existing.status.state
                    )
                    manifests.append(existing)
                    if on_cached is not None:
                        on_cached(existing)
                    continue
                manifests.append(run_one(request, plan, submission_dir, isolation, bars))
                if on_manifest is not None:
                    on_manifest(manifests[-1], plan.root / MANIFEST_FILENAME)
        finally:
            make_writable(submission_dir)
    return manifests


__all__ = [
    "Artifacts",
    "PrismError",
    "default_torch_threads",
    "evaluate",
    "existing_result",
    "run_one",
    "training_failure",
]
