"""Build a run's manifest from the phases' typed outcomes (pure: no I/O, no clock but the caller's).

Every number scoring reads comes from something the host measured or checked: held-out bpb from
the checked reveal, parameters and layers from the weights file, compute from outside timing.
Values the sandboxed processes reported (probe curve, recipe, hooks, parameter hashes) are
recorded as evidence under their own names.
"""

from __future__ import annotations

import math
import platform
from dataclasses import dataclass, field
from typing import Any

from prism import __version__ as prism_version
from prism.evaluator.budgets import WeightsInventory
from prism.evaluator.calibration import Calibration
from prism.evaluator.devices import peak_flops
from prism.evaluator.heldout_phase import HeldoutOutcome
from prism.evaluator.interface import HOOK_NAMES
from prism.evaluator.plan import EVALUATOR_VERSION, EvalRequest, RunPlan
from prism.evaluator.recipe import TrainPlan
from prism.evaluator.sandbox import IsolationProbe
from prism.evaluator.train_phase import TrainingOutcome
from prism.manifest import (
    Artifacts,
    BudgetRecord,
    Comparability,
    ComputeRecord,
    DatasetRecord,
    Diagnostics,
    EnvironmentRecord,
    Failure,
    HardwareRecord,
    HeldoutPoint,
    HookRecord,
    IntegrityRecord,
    Metrics,
    ProbePoint,
    ProfileRef,
    RecipeRecord,
    RegimeRef,
    RunManifest,
    Status,
    SubmissionIds,
    ThroughputRecord,
    Validation,
)  # fmt: skip
from prism.profiles import Profile

LN2 = math.log(2.0)
END_OF_TRAINING_FRACTION = 0.1  # train_bpb: mean probe bpb over the last 10% of the probes
MAX_MANIFEST_PROBE_POINTS = 1000

REASON_NOT_OFFICIAL = "profile.not_official"
REASON_DEGRADED = "isolation.degraded"
REASON_FAILED = "run.failed"
REASON_NONFINITE = "gate.nonfinite_loss"
REASON_SMUGGLED = "gate.smuggled_weights"
REASON_PARAMS_CHANGED = "gate.params_changed_during_eval"
REASON_GAP = "gate.train_heldout_gap"
REASON_NOT_REFERENCE = "recipe.not_reference"
REASON_METRICS_MISSING = "metrics.missing"


@dataclass
class RunEvidence:
    """Everything one run produced, phase by phase; ``failure`` is the verdicts module's."""

    plan: RunPlan
    request: EvalRequest
    isolation: IsolationProbe
    created_at: str
    training: TrainingOutcome | None = None
    inventory: WeightsInventory | None = None
    calibration: Calibration | None = None
    heldout: HeldoutOutcome | None = None
    failure: Failure | None = None
    artifacts: Artifacts = field(default_factory=Artifacts)
    timings: dict[str, float] = field(default_factory=dict)
    gpu_names: tuple[str, ...] = ()  # from the host's driver, not from the sandbox
    window_bytes: Any = None  # np.ndarray (N,): the UTF-8 bytes of each held-out window


def _finite(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def summarize_probes(
    records: list[dict[str, Any]], early_fraction: float, total_steps: int
) -> dict[str, float]:
    finite = [
        r for r in records if _finite(r.get("bpb")) is not None and _finite(r.get("loss_nats")) is not None
    ]
    if not finite:
        return {}
    half = finite[len(finite) // 2 :]
    tail = finite[-max(1, math.ceil(len(finite) * END_OF_TRAINING_FRACTION)) :]
    horizon = max(1, math.ceil(early_fraction * total_steps))
    early = [r for r in finite if int(r["step"]) < horizon] or finite[:1]
    return {
        "first_probe_loss_nats": float(finite[0]["loss_nats"]),
        "early_probe_loss_nats": min(float(r["loss_nats"]) for r in early),
        "probe_bpb": sum(float(r["bpb"]) for r in half) / len(half),
        "train_bpb": sum(float(r["bpb"]) for r in tail) / len(tail),
    }


def _probe_curve(probes: list[dict[str, Any]]) -> list[ProbePoint]:
    from prism.evaluator.artifacts import downsample

    return [
        ProbePoint(
            step=int(r["step"]),
            tokens_seen=int(r["tokens_seen"]),
            loss_nats=float(r["loss_nats"]),
            bpb=float(r["bpb"]),
        )
        for r in downsample(probes, MAX_MANIFEST_PROBE_POINTS)
        if _finite(r["bpb"]) is not None and _finite(r["loss_nats"]) is not None
    ]


def heldout_value(ev: RunEvidence) -> tuple[float | None, float | None]:
    """(bpb, mean nats per token) of a run that succeeded, else (None, None)."""
    if ev.failure is not None or ev.heldout is None or not ev.heldout.succeeded:
        return None, None
    session = ev.heldout.main.session
    if session.bytes <= 0 or session.tokens <= 0:
        return None, None
    return session.total_nats / (LN2 * session.bytes), session.total_nats / session.tokens


def build_metrics(ev: RunEvidence) -> Metrics:
    training = ev.training
    probes = training.probes if training else []
    report = training.report if training else None
    plan = training.plan if training else None
    total_steps = plan.total_steps if plan else 1
    summary = summarize_probes(probes, ev.request.profile.gates.smuggle_early_fraction, total_steps)
    bpb, nats = heldout_value(ev)
    session = ev.heldout.main.session if ev.heldout else None
    graph = (session.run_graph or session.canonical_graph) if session else None
    train_bpb = summary.get("train_bpb")
    failure_code = ev.failure.code if ev.failure else None
    return Metrics(
        heldout_bpb=bpb,
        heldout_loss_nats=nats,
        heldout_tokens=session.tokens if session else 0,
        heldout_bytes=session.bytes if session else 0,
        probe_bpb=summary.get("probe_bpb"),
        first_probe_loss_nats=summary.get("first_probe_loss_nats"),
        early_probe_loss_nats=summary.get("early_probe_loss_nats"),
        probe_source=report.probe_source if report else None,
        final_train_loss_nats=_finite(report.final_train_loss_nats) if report else None,
        train_bpb=train_bpb,
        train_heldout_gap_bpb=(bpb - train_bpb) if bpb is not None and train_bpb is not None else None,
        probe_curve=_probe_curve(probes),
        loss_vs_tokens=[HeldoutPoint(tokens_seen=plan.train_tokens, bpb=bpb)]
        if bpb is not None and plan
        else [],
        train_tokens=plan.train_tokens if plan else 0,
        train_bytes=report.bytes if report else 0,
        train_steps=(training.feed.served.get(0, 0) + plan.start_step) if training and plan else 0,
        parameter_count=ev.inventory.parameter_count if ev.inventory else None,
        layer_count=ev.inventory.layer_count if ev.inventory else None,
        flops_per_token=_finite(graph.get("flops_per_token")) if graph else None,
        nonfinite_loss=failure_code == "eval.nonfinite_loss" or bool(report and report.nonfinite_loss),
        nonfinite_step=report.nonfinite_step if report else None,
    )


def build_compute(ev: RunEvidence) -> ComputeRecord | None:
    measure = ev.training.compute if ev.training else None
    if measure is None:
        return None
    plan = ev.training.plan if ev.training else None
    expected = ev.calibration.expected(plan.train_tokens) if ev.calibration and plan else None
    comparable = ev.calibration is not None and ev.calibration.kind == measure.kind
    ratio = measure.seconds / expected if expected and comparable else None
    return ComputeRecord(
        kind=measure.kind,  # type: ignore[arg-type]
        measured_s=round(measure.seconds, 3),
        expected_s=round(expected, 3) if expected else None,
        ratio=round(ratio, 4) if ratio is not None else None,
        cap=ev.request.profile.limits.compute_cap,
        calibration_key=ev.calibration.key if ev.calibration else None,
    )


def build_throughput(ev: RunEvidence) -> ThroughputRecord | None:
    """Tokens per second timed by the host and, on a known GPU, the model FLOPs utilisation."""
    training = ev.training
    seconds = training.training_seconds if training else None
    if training is None or training.plan is None or not seconds or seconds <= 0:
        return None
    tokens_per_s = (
        training.plan.steps_this_attempt
        * training.plan.global_batch
        * training.plan.sequence_length
        / seconds
    )
    session = ev.heldout.main.session if ev.heldout else None
    forward = _finite(session.run_graph.get("flops_per_token")) if session and session.run_graph else None
    train_flops = 3.0 * forward if forward else None  # forward + backward (twice the forward)
    device = ev.gpu_names[0] if ev.gpu_names else None
    peak = peak_flops(device) if device else None
    mfu = tokens_per_s * train_flops / (peak * ev.request.nproc) if train_flops and peak else None
    return ThroughputRecord(
        tokens_per_s=round(tokens_per_s, 1), train_flops_per_token=train_flops, device=device, peak_flops=peak,
        mfu=round(mfu, 4) if mfu is not None else None,
    )  # fmt: skip


def build_integrity(ev: RunEvidence) -> IntegrityRecord | None:
    if ev.heldout is None:
        return None
    h, session = ev.heldout, ev.heldout.main.session
    comparison = h.replay.comparison
    return IntegrityRecord(
        positions=session.tokens,
        spot_rows=session.spot_rows,
        spot_fraction=round(session.spot_rows / session.tokens, 6) if session.tokens else 0.0,
        lie_survival_bound=h.budget.survival_bound,
        lie_shift_bpb=ev.request.profile.heldout.lie_shift_bpb,
        replay_pairs=len(h.replay.pairs),
        replay_positions=comparison.positions if comparison else 0,
        replay_max_deviation_nats=comparison.max_deviation if comparison else None,
        replay_tolerance_nats=h.replay.tolerance,
        program_windows=len(h.program.windows) if h.program and h.program.reply.log_probs is not None else 0,
        program_max_deviation_nats=h.program.max_deviation
        if h.program and h.program.reply.log_probs is not None
        else None,
        program_family_id=h.program.public_family_id if h.program else None,
        program_family_window=h.program.family_window if h.program else None,
        program_window_family_id=h.program.family_id if h.program else None,
        program_window_only_weights=h.program.window_only_weights if h.program else [],
        clipped_positions=session.clipped,
    )


def validation_reasons(
    *,
    profile: Profile,
    isolation_mode: str,
    failed: bool,
    metrics: Metrics,
    vocab_size: int,
    params_changed: bool,
    competition: str,
    recipe_mode: str,
) -> list[str]:
    """Every stable reason a run is not score-eligible (empty: eligible). Pure."""
    reasons: list[str] = []
    if not profile.official:
        reasons.append(REASON_NOT_OFFICIAL)
    if isolation_mode == "degraded":
        reasons.append(REASON_DEGRADED)
    if failed:
        reasons.append(REASON_FAILED)
    if metrics.nonfinite_loss:
        reasons.append(REASON_NONFINITE)
    early = (
        metrics.early_probe_loss_nats
        if metrics.early_probe_loss_nats is not None
        else metrics.first_probe_loss_nats
    )
    # A fresh model predicts about uniformly (ln V nats); far below that early in training means
    # it arrived trained. Advisory: the probe comes from the training process.
    if early is not None and early < profile.gates.smuggle_factor * math.log(vocab_size):
        reasons.append(REASON_SMUGGLED)
    if params_changed:
        reasons.append(REASON_PARAMS_CHANGED)
    gap = metrics.train_heldout_gap_bpb
    if gap is not None and gap > profile.gates.max_train_heldout_gap_bpb:
        reasons.append(REASON_GAP)
    if competition == "architecture" and recipe_mode != "reference":
        reasons.append(REASON_NOT_REFERENCE)
    if metrics.heldout_bpb is None or metrics.probe_bpb is None:
        reasons.append(REASON_METRICS_MISSING)
    return reasons


def _diagnostics(ev: RunEvidence) -> tuple[Diagnostics, bool]:
    session = ev.heldout.main.session if ev.heldout else None
    before = session.ready.get("params_sha256") if session and session.ready else None
    after = session.params_after if session else None
    changed = before is not None and after is not None and before != after
    sandbox = ev.training.sandbox if ev.training else None
    heldout_result = ev.heldout.main.result if ev.heldout else None
    replay_result = ev.heldout.replay_process.result if ev.heldout else None
    notes = (
        [f"torch_threads={ev.training.report.torch_threads}"] if ev.training and ev.training.report else []
    )
    return Diagnostics(
        params_sha256_before_eval=before,
        params_sha256_after_eval=after,
        params_changed_during_eval=changed,
        sandbox_probe=f"{ev.isolation.mode}; cgroups={ev.isolation.cgroups}; {ev.isolation.detail}",
        exit_codes={
            "train": sandbox.exit_code if sandbox else None,
            "heldout": heldout_result.exit_code if heldout_result else None,
            "replay": replay_result.exit_code if replay_result else None,
        },
        log_truncated=any(
            r is not None and r.log_truncated for r in (sandbox, heldout_result, replay_result)
        ),
        advisory=list(session.advisory) if session else [],
        notes=notes,
    ), changed


def _hooks(ev: RunEvidence) -> dict[str, HookRecord]:
    report = ev.training.report if ev.training else None
    if report is not None and report.hooks:
        return {name: HookRecord(**use.model_dump()) for name, use in report.hooks.items()}
    present = dict(ev.request.submission.hooks)
    return {
        name: HookRecord(present=name in present, used=False, source_file=present.get(name))
        for name in HOOK_NAMES
    }


def _ids(ev: RunEvidence) -> SubmissionIds:
    sub = ev.request.submission
    session = ev.heldout.main.session if ev.heldout else None
    graph = session.canonical_graph if session else None
    return SubmissionIds(
        zip_sha256=sub.zip_sha256,
        kind=sub.kind,  # type: ignore[arg-type]
        architecture_fingerprint=sub.architecture_fingerprint,
        training_fingerprint=sub.training_fingerprint,
        target_architecture_id=sub.architecture_id if sub.kind == "training_for_arch" else None,
        family_id=graph.get("family_id") if graph else None,
        version_id=graph.get("version_id") if graph else None,
        family_ops=[str(op) for op in graph["family_ops"]]
        if graph and isinstance(graph.get("family_ops"), list)
        else None,
        architecture_zip_sha256=ev.request.architecture_zip_sha256,
    )


def _environment(ev: RunEvidence) -> tuple[HardwareRecord, EnvironmentRecord]:
    report = ev.training.report if ev.training else None
    profile = ev.request.profile
    hardware = HardwareRecord(
        device_type=profile.device,
        gpu_count=report.gpu_count if report else 0,
        device_names=report.device_names if report else [],
        world_size=ev.request.nproc,
        distributed_backend=report.distributed_backend if report else None,
    )
    environment = EnvironmentRecord(
        python=platform.python_version(),
        torch=(
            report.torch_version
            if report and report.torch_version
            else ev.calibration.hardware.get("torch")
            if ev.calibration
            else None
        ),
        cuda=report.cuda_version if report else None,
        prism=prism_version,
        platform=platform.platform(),
    )
    return hardware, environment


def _recipe(plan: TrainPlan) -> RecipeRecord:
    """The host's plan: what the harness was told to use (the process's own account is evidence)."""
    effective = plan.recipe.model_dump(mode="json") | {
        "global_batch": plan.global_batch,
        "per_rank_batch": plan.per_rank_batch,
        "optimizer_source": "configure_optimizer" if plan.custom_optimizer else "harness",
        "mode": plan.recipe_mode,
    }
    return RecipeRecord(
        declared=plan.declared.model_dump(mode="json"), effective=effective, clamped=plan.clamped
    )


def software_stack(environment: EnvironmentRecord, cudnn: str | None) -> str:
    """The part of a run's identity that can move its numbers: torch, and CUDA/cuDNN on GPUs."""
    parts = [f"torch {environment.torch or 'unknown'}"]
    if environment.cuda:
        parts.append(f"cuda {environment.cuda}")
    if cudnn:
        parts.append(f"cudnn {cudnn}")
    return "; ".join(parts)


def _regime_ref(plan: RunPlan) -> RegimeRef:
    regime = plan.regime
    return RegimeRef(
        name=regime.name,
        max_parameters=regime.max_parameters,
        max_layers=regime.max_layers,
        sequence_length=regime.sequence_length,
        train_tokens=regime.train_tokens,
    )


def _budget(inventory: WeightsInventory | None) -> BudgetRecord | None:
    """What the host counted in the weights file (None when training wrote none)."""
    if inventory is None:
        return None
    return BudgetRecord(
        parameter_count=inventory.parameter_count,
        layer_count=inventory.layer_count,
        tensors=len(inventory.tensors),
        weights_bytes=inventory.file_bytes,
    )


def _comparability(ev: RunEvidence, environment: EnvironmentRecord) -> Comparability:
    request, plan = ev.request, ev.plan
    cudnn = ev.training.report.cudnn_version if ev.training and ev.training.report else None
    return Comparability(
        tokenizer=request.data.tokenizer,
        sequence_length=plan.regime.sequence_length,
        heldout_windows=request.profile.heldout.windows,
        heldout_seed=plan.heldout_seed,
        profile_key=request.profile.key,
        stack=software_stack(environment, cudnn),
    )


def _validation(ev: RunEvidence, metrics: Metrics, params_changed: bool) -> Validation:
    request = ev.request
    reasons = validation_reasons(
        profile=request.profile,
        isolation_mode=ev.isolation.mode,
        failed=ev.failure is not None,
        metrics=metrics,
        vocab_size=request.data.vocab_size,
        params_changed=params_changed,
        competition=request.competition,
        recipe_mode=request.recipe_mode,
    )
    return Validation(score_eligible=not reasons, reasons=reasons)


def build_manifest(ev: RunEvidence) -> RunManifest:
    """The manifest of one run (the caller writes it)."""
    request, plan, profile = ev.request, ev.plan, ev.request.profile
    metrics = build_metrics(ev)
    diagnostics, params_changed = _diagnostics(ev)
    hardware, environment = _environment(ev)
    train_plan = ev.training.plan if ev.training else None
    return RunManifest(
        evaluator_version=EVALUATOR_VERSION,
        run_id=plan.run_id,
        created_at=ev.created_at,
        competition=request.competition,
        recipe_mode=request.recipe_mode,
        profile=ProfileRef(name=profile.name, version=profile.version, official=profile.official),
        regime=_regime_ref(plan),
        seed=plan.seed,
        nominal_seed=plan.nominal_seed if plan.beacon is not None else None,
        beacon=plan.beacon,
        submission=_ids(ev),
        recipe=_recipe(train_plan) if train_plan else None,
        dataset=DatasetRecord.model_validate(
            request.data.record
            | {"heldout_seed": plan.heldout_seed, "heldout_windows": profile.heldout.windows}
        ),
        hardware=hardware,
        isolation=ev.isolation.mode,
        environment=environment,
        hooks=_hooks(ev),
        training_files=list(request.submission.training_files),
        timings_s={k: round(v, 3) for k, v in ev.timings.items()},
        metrics=metrics,
        compute=build_compute(ev),
        throughput=build_throughput(ev),
        budget=_budget(ev.inventory),
        integrity=build_integrity(ev),
        diagnostics=diagnostics,
        comparability=_comparability(ev, environment),
        validation=_validation(ev, metrics, params_changed),
        status=Status(state="failed" if ev.failure else "succeeded", failure=ev.failure),
        artifacts=ev.artifacts,
    )


__all__ = [
    "RunEvidence",
    "build_manifest",
    "build_metrics",
    "heldout_value",
    "summarize_probes",
    "validation_reasons",
]
