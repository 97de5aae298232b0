"""The in-sandbox training runner (entry point). Started by the host as

    torchrun --standalone --nnodes=1 --nproc-per-node=N -m prism.evaluator.runner --spec /spec/run_spec.json

Each rank connects to the host's feed, says ``hello`` *before* importing submission code, builds
the model, sends the declared recipe, receives the host's plan and trains on exactly the batches
the host sends. Rank 0 writes into the spec's out dir:

* ``weights.safetensors``: the ``state_dict`` (tensors only, CPU, cloned so tied weights save as
  separate tensors); the host counts the budgets from this file;
* ``probe.jsonl``: the online probe, one record per probed step;
* ``runner_report.json`` (and ``runner_report.rank<R>.json`` from a failing rank): hooks, recipe,
  steps, timings, a failure with the miner's own stack frames.

All of it is evidence: this process runs submission code. See docs/evaluator.md.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import logging
import os
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

from prism.errors import InfrastructureFault, MinerFault, PrismError
from prism.evaluator import reference_model
from prism.evaluator.checkpoints import accept_checkpoint
from prism.evaluator.context import (
    CHECKPOINT_DIRNAME,
    CHECKPOINT_RECORD_FILENAME,
    EXIT_INFRA_FAULT,
    EXIT_MINER_FAULT,
    EXIT_OK,
    PROBE_FILENAME,
    RUNNER_REPORT_FILENAME,
    WEIGHTS_FILENAME,
    CheckpointInfo,
    HookUse,
    RunnerFailure,
    RunnerReport,
    RunSpec,
    make_context,
)
from prism.evaluator.feed_client import FeedClient
from prism.evaluator.interface import HOOK_NAMES, PrismContext, coerce_recipe
from prism.evaluator.loading import (
    INFERENCE_HOOKS,
    LoadedSubmission,
    count_layers,
    count_parameters,
    hook_source_file,
    inference_path_name,
    load_submission_modules,
    resolve_hooks,
)
from prism.evaluator.loop import Dist, LoopHooks, LoopParts, ProbeWriter, make_harness_optimizer, train_loop
from prism.evaluator.recipe import TrainPlan
from prism.evaluator.untrusted import SubmissionCodeError, call_submission

logger = logging.getLogger("prism.evaluator.runner")


def setup_distributed(spec: RunSpec) -> Dist:
    """Read torchrun's environment; start a process group only when there is more than one rank."""
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    device = torch.device("cpu")
    if spec.device == "cuda":
        if not torch.cuda.is_available():
            raise InfrastructureFault("profile wants CUDA but no GPU is visible", code="runner.no_cuda")
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    backend = None
    if world_size > 1:
        backend = "nccl" if spec.device == "cuda" else "gloo"
        torch.distributed.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=10))
    return Dist(rank=rank, local_rank=local_rank, world_size=world_size, backend=backend, device=device)


def seed_everything(seed: int, threads: int, device: str, *, strict: bool) -> None:
    """Same seed, same thread count, deterministic kernels: two runs give the same numbers.

    ``strict`` (the reference recipe): an op without a deterministic kernel is an error, and the
    loop re-asserts the setting after submission code ran. Otherwise it is only logged.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    if device == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
        torch.set_float32_matmul_precision("high")
    torch.use_deterministic_algorithms(True, warn_only=not strict)


# ----------------------------------------------------------------------------------------------
# model, recipe, optimizer


def build_checked_model(build_model, ctx: PrismContext) -> tuple[torch.nn.Module, int, int]:  # type: ignore[no-untyped-def]
    """``build_model(ctx)`` plus early budget checks (advisory: the host counts the weights file)."""
    model = call_submission("eval.build_failed", "build_model(ctx)", build_model, ctx)
    if not isinstance(model, torch.nn.Module):
        raise MinerFault(
            f"build_model returned {type(model).__name__}, not torch.nn.Module", code="eval.not_a_module"
        )
    params = call_submission("eval.build_failed", "counting parameters", count_parameters, model)
    if params > ctx.max_parameters:
        raise MinerFault(
            f"model has {params:,} parameters, above max_parameters={ctx.max_parameters:,}",
            code="budget.parameters_exceeded",
        )
    layers = call_submission("eval.build_failed", "counting layers", count_layers, model)
    if layers > ctx.max_layers:
        raise MinerFault(
            f"model has {layers} layers, above max_layers={ctx.max_layers}", code="budget.layers_exceeded"
        )
    return model, params, layers


def configure_submitted_optimizer(
    hook, model: torch.nn.Module, plan: TrainPlan, ctx: PrismContext
) -> tuple[torch.optim.Optimizer, object]:  # type: ignore[no-untyped-def]
    out = call_submission(
        "hook.configure_optimizer_failed", "configure_optimizer", hook, model, plan.declared, ctx
    )
    scheduler = None
    if isinstance(out, tuple) and len(out) == 2:
        out, scheduler = out
    if not isinstance(out, torch.optim.Optimizer):
        raise MinerFault(
            f"configure_optimizer must return an optimizer or (optimizer, scheduler), got {type(out).__name__}",
            code="hook.bad_optimizer",
        )
    if scheduler is not None and not callable(getattr(scheduler, "step", None)):
        raise MinerFault("configure_optimizer returned a scheduler without step()", code="hook.bad_optimizer")
    return out, scheduler


def save_weights(model: torch.nn.Module, path: Path) -> None:
    """Tensors only. Cloned so tied weights become separate tensors (safetensors refuses shared storage)."""
    from safetensors.torch import save_file

    state = {
        name: t.detach().to("cpu").contiguous().clone()
        for name, t in model.state_dict().items()
        if isinstance(t, torch.Tensor)
    }
    tmp = path.with_suffix(".tmp")
    save_file(state, str(tmp))
    tmp.replace(path)


def save_submitted_checkpoint(
    hook, model: torch.nn.Module, checkpoint_dir: Path, ctx: PrismContext, step: int, out_dir: Path
) -> CheckpointInfo | None:  # type: ignore[no-untyped-def]
    returned = call_submission(
        "hook.save_checkpoint_failed", "save_checkpoint", hook, model, str(checkpoint_dir), ctx
    )
    accepted = accept_checkpoint(returned, checkpoint_dir)
    if accepted is None:
        return None
    info = CheckpointInfo(
        path=accepted.path, metadata=accepted.metadata, step=step, workspace_bytes=accepted.workspace_bytes
    )
    # The harness's own record (next to, not inside, the miner's workspace) tells a retry where to resume.
    (out_dir / CHECKPOINT_RECORD_FILENAME).write_text(info.model_dump_json(indent=2), encoding="utf-8")
    return info


# ----------------------------------------------------------------------------------------------
# one run, top to bottom


def _load(spec: RunSpec) -> LoadedSubmission:
    if spec.builtin_model == "reference":
        return LoadedSubmission(
            root=Path(reference_model.__file__).parent, architecture=reference_model, training=None
        )
    assert spec.submission_dir is not None
    return load_submission_modules(
        Path(spec.submission_dir), spec.architecture_entrypoint, spec.training_entrypoint
    )


def _record_environment(report: RunnerReport, spec: RunSpec, dist: Dist) -> None:
    report.world_size, report.distributed_backend = dist.world_size, dist.backend
    report.device_type = spec.device
    report.torch_version, report.cuda_version = torch.__version__, torch.version.cuda
    cudnn = (
        torch.backends.cudnn.version()
        if spec.device == "cuda" and torch.backends.cudnn.is_available()
        else None
    )
    report.cudnn_version = str(cudnn) if cudnn else None
    report.torch_threads = torch.get_num_threads()
    if spec.device == "cuda":
        report.gpu_count = torch.cuda.device_count()
        report.device_names = [torch.cuda.get_device_name(i) for i in range(report.gpu_count)]


def _record_hooks(report: RunnerReport, hooks: dict, used: dict[str, bool], root: Path) -> None:  # type: ignore[type-arg]
    report.hooks = {
        name: HookUse(
            present=name in hooks,
            used=used.get(name, False),
            source_file=hook_source_file(hooks[name], root) if name in hooks else None,
        )
        for name in HOOK_NAMES
    }


def _plan(
    feed: FeedClient,
    loaded: ModuleType,
    ctx: PrismContext,
    report: RunnerReport,
    custom_optimizer: bool,
    commit: Callable[[], list[str] | None],
) -> TrainPlan:
    declared = call_submission("eval.bad_recipe", "get_recipe(ctx)", loaded.get_recipe, ctx)
    try:
        declared_recipe = coerce_recipe(declared)
    except (TypeError, ValueError) as exc:
        raise MinerFault(f"get_recipe returned an invalid recipe: {exc}", code="eval.bad_recipe") from exc
    # The model as it will train (get_recipe may still change it), before the host sends a batch.
    plan = feed.plan(declared_recipe, custom_optimizer=custom_optimizer, constants=commit())
    report.recipe_declared = declared_recipe.model_dump(mode="json")
    report.recipe_effective = plan.recipe.model_dump(mode="json") | {
        "global_batch": plan.global_batch,
        "per_rank_batch": plan.per_rank_batch,
        "optimizer_source": "configure_optimizer" if custom_optimizer else "harness",
        "mode": plan.recipe_mode,
    }
    report.recipe_clamped = plan.clamped
    report.planned_steps = plan.total_steps
    return plan


def _commit_constants(
    spec: RunSpec, dist: Dist, model: torch.nn.Module, hooks: dict[str, Any], ctx: PrismContext
) -> list[str] | None:
    """Rank 0: the shipped constants of the untrained model's inference pass, as the held-out
    process will record it (the hooks only in the submitted recipe, autocast only in the reference
    one on CUDA); see ``prism.evaluator.shipped_constants``."""
    if not (spec.commit_constants and dist.is_main):
        return None
    from prism.evaluator.constants_commit import commit_constants

    submitted = spec.recipe_mode == "submitted"
    inference = {k: hooks[k] for k in INFERENCE_HOOKS if k in hooks} if submitted else {}
    return commit_constants(
        model, inference, ctx, dist.device, autocast=spec.device == "cuda" and not submitted
    )


def _wire(
    spec: RunSpec,
    dist: Dist,
    model: torch.nn.Module,
    hooks: dict,
    plan: TrainPlan,
    ctx: PrismContext,
    used: dict[str, bool],
    probe: ProbeWriter,
) -> LoopParts:  # type: ignore[type-arg]
    """Optimizer, DDP wrapper and the hooks the loop goes through, per the recipe mode."""
    submitted = spec.recipe_mode == "submitted"
    train_model: torch.nn.Module = model
    if dist.world_size > 1:
        device_ids = [dist.local_rank] if spec.device == "cuda" else None
        train_model = call_submission(
            "eval.build_failed",
            "wrapping the model in DDP",
            torch.nn.parallel.DistributedDataParallel,
            model,
            device_ids,
        )
    loop_hooks = LoopHooks(
        inference={k: hooks[k] for k in INFERENCE_HOOKS if k in hooks} if submitted else {}
    )
    if plan.custom_optimizer:
        optimizer, loop_hooks.scheduler = configure_submitted_optimizer(
            hooks["configure_optimizer"], model, plan, ctx
        )
        used["configure_optimizer"] = True
    else:
        optimizer = make_harness_optimizer(model, plan.recipe)
    if inference_path_name(loop_hooks.inference) in loop_hooks.inference:
        used[inference_path_name(loop_hooks.inference)] = True
    if submitted and "train_step" in hooks:
        loop_hooks.train_step, used["train_step"] = hooks["train_step"], True
    elif submitted and "compute_loss" in hooks:
        loop_hooks.compute_loss, used["compute_loss"] = hooks["compute_loss"], True
    return LoopParts(
        model=model, train_model=train_model, optimizer=optimizer, hooks=loop_hooks, ctx=ctx, plan=plan,
        harness_schedule=not plan.custom_optimizer, probe=probe, probe_from_train_loss=not submitted,
        probe_every=spec.probe_every_steps, probe_fraction=spec.probe_fraction, device=dist.device,
        autocast=spec.device == "cuda" and not submitted,
    )  # fmt: skip


def _resume(
    spec: RunSpec,
    hooks: dict,
    model: torch.nn.Module,
    ctx: PrismContext,
    used: dict[str, bool],
    report: RunnerReport,
) -> None:  # type: ignore[type-arg]
    """Approved retry: the submission restores its own state; the host skips the steps done."""
    approved = spec.context.attempt > 0 and spec.context.resume_checkpoint_dir is not None
    if spec.recipe_mode == "submitted" and approved and "load_checkpoint" in hooks:
        call_submission(
            "hook.load_checkpoint_failed",
            "load_checkpoint",
            hooks["load_checkpoint"],
            model,
            spec.context.resume_checkpoint_dir,
            ctx,
        )
        used["load_checkpoint"] = True
        report.resumed_from_step = spec.resume_step


@dataclass
class BuiltRun:
    """What the build step made, in the order the loop needs it (one rank's view)."""

    loaded: LoadedSubmission
    hooks: dict  # type: ignore[type-arg]
    used: dict[str, bool]
    model: torch.nn.Module
    ctx: PrismContext
    plan: TrainPlan
    parts: LoopParts
    checkpoint_dir: Path


def run(spec: RunSpec, dist: Dist, report: RunnerReport, feed: FeedClient) -> None:
    t0 = time.perf_counter()
    out_dir = Path(spec.out_dir)
    if dist.is_main:
        (out_dir / CHECKPOINT_DIRNAME).mkdir(parents=True, exist_ok=True)
    seed_everything(
        spec.context.seed, spec.torch_threads, spec.device, strict=spec.recipe_mode == "reference"
    )
    _record_environment(report, spec, dist)
    feed.hello(dist.rank, dist.world_size)  # from here on, this process is the submission's
    built = _build(spec, dist, report, feed, t0)
    _train(spec, dist, report, feed, built)
    _save(spec, dist, report, built)


def _build(spec: RunSpec, dist: Dist, report: RunnerReport, feed: FeedClient, t0: float) -> BuiltRun:
    """Import the submission and build the model (same seed on every rank: identical init)."""
    timings, out_dir = report.timings_s, Path(spec.out_dir)
    checkpoint_dir = out_dir / CHECKPOINT_DIRNAME
    loaded = _load(spec)
    hooks = resolve_hooks(loaded) if spec.builtin_model is None else {}
    used: dict[str, bool] = dict.fromkeys(HOOK_NAMES, False)
    ctx_kwargs = {"rank": dist.rank, "local_rank": dist.local_rank, "world_size": dist.world_size,
                  "device": str(dist.device), "distributed_backend": dist.backend, "checkpoint_dir": str(checkpoint_dir)}  # fmt: skip
    ctx = make_context(spec.context, **ctx_kwargs)
    timings["import"] = time.perf_counter() - t0
    t = time.perf_counter()
    torch.manual_seed(spec.context.seed)
    model, report.parameter_count, report.layer_count = build_checked_model(
        loaded.architecture.build_model, ctx
    )
    call_submission("eval.build_failed", "moving the model to the device", model.to, dist.device)
    call_submission("eval.build_failed", "model.train()", model.train)
    custom_optimizer = spec.recipe_mode == "submitted" and "configure_optimizer" in hooks
    commit = functools.partial(_commit_constants, spec, dist, model, hooks, ctx)  # code and seed only
    plan = _plan(feed, loaded.architecture, ctx, report, custom_optimizer, commit)
    ctx = make_context(spec.context, **ctx_kwargs, total_steps=plan.total_steps)  # hooks are told the budget
    _resume(spec, hooks, model, ctx, used, report)
    parts = _wire(spec, dist, model, hooks, plan, ctx, used, ProbeWriter(out_dir / PROBE_FILENAME, dist))
    report.probe_source = "train_loss" if parts.probe_from_train_loss else "inference"
    timings["build"] = time.perf_counter() - t
    _record_hooks(report, hooks, used, loaded.root)  # already known if training fails below
    return BuiltRun(loaded, hooks, used, model, ctx, plan, parts, checkpoint_dir)


def _save_hook(spec: RunSpec, built: BuiltRun):  # type: ignore[no-untyped-def]
    """The submission's own checkpoint hook; only the submitted recipe uses it."""
    return built.hooks.get("save_checkpoint") if spec.recipe_mode == "submitted" else None


def _checkpoint(spec: RunSpec, dist: Dist, report: RunnerReport, built: BuiltRun, step: int) -> None:
    save_hook = _save_hook(spec, built)
    if dist.is_main and save_hook is not None:
        saved = save_submitted_checkpoint(
            save_hook, built.model, built.checkpoint_dir, built.ctx, step, Path(spec.out_dir)
        )
        report.checkpoint = saved or report.checkpoint
    if dist.world_size > 1:
        torch.distributed.barrier()


def _train(spec: RunSpec, dist: Dist, report: RunnerReport, feed: FeedClient, built: BuiltRun) -> None:
    """Train on exactly the host's batches, checkpointing through the submission's hook if any."""
    plan, every, t = built.plan, spec.checkpoint_every_steps, time.perf_counter()
    logger.info(
        "training %d steps of %d sequences x %d tokens (%s recipe)",
        plan.total_steps,
        plan.global_batch,
        plan.sequence_length,
        plan.recipe_mode,
    )

    def on_step_end(step: int) -> None:
        if every and (step + 1) % every == 0 and step + 1 < plan.total_steps:
            _checkpoint(spec, dist, report, built, step + 1)

    try:
        result = train_loop(
            built.parts,
            feed.batches(plan),
            flush_every=spec.log_every_steps,
            on_step_end=on_step_end if _save_hook(spec, built) else None,
        )
    except MinerFault as exc:
        report.nonfinite_loss = exc.code == "eval.nonfinite_loss"
        raise
    report.timings_s["train"] = time.perf_counter() - t
    _finish_report(report, plan, dist, result.bytes, result.final_loss)
    logger.info("trained %d steps in %.1fs", result.steps, report.timings_s["train"])


def _save(spec: RunSpec, dist: Dist, report: RunnerReport, built: BuiltRun) -> None:
    """Side effects on rank 0: the submission's checkpoint, then the harness's weights."""
    t = time.perf_counter()
    if _save_hook(spec, built) is not None:
        _checkpoint(spec, dist, report, built, built.plan.total_steps)
        built.used["save_checkpoint"] = True
    if dist.is_main:
        call_submission(
            "eval.save_failed",
            "saving the trained weights",
            save_weights,
            built.model,
            Path(spec.out_dir) / WEIGHTS_FILENAME,
        )
    report.timings_s["save"] = time.perf_counter() - t
    _record_hooks(report, built.hooks, built.used, built.loaded.root)


def _finish_report(
    report: RunnerReport, plan: TrainPlan, dist: Dist, rank_bytes: int, final_loss: float | None
) -> None:
    """Tokens count the whole run (a resumed attempt includes the steps done before); bytes only this attempt's."""
    report.steps = plan.total_steps
    report.tokens = plan.train_tokens
    report.bytes = rank_bytes
    if dist.world_size > 1:
        total_bytes = torch.tensor([rank_bytes], dtype=torch.float64, device=dist.device)
        torch.distributed.all_reduce(total_bytes)
        report.bytes = int(total_bytes.item())
    report.final_train_loss_nats = final_loss


def _write_report(report: RunnerReport, out_dir: Path, rank: int) -> None:
    name = RUNNER_REPORT_FILENAME if rank == 0 else f"runner_report.rank{rank}.json"
    tmp = out_dir / (name + ".tmp")
    tmp.write_text(report.model_dump_json(indent=2), encoding="utf-8")
    tmp.replace(out_dir / name)


def _failure(exc: BaseException) -> RunnerFailure:
    if isinstance(exc, PrismError):
        frames = exc.frames if isinstance(exc, SubmissionCodeError) else []
        fault = "miner" if exc.fault == "miner" else "infrastructure"
        return RunnerFailure(
            code=exc.code, fault=fault, message=exc.message[:2000], phase="train", frames=frames
        )
    return RunnerFailure(
        code="runner.crashed",
        fault="infrastructure",
        message=f"{type(exc).__name__}: {exc}"[:2000],
        phase="train",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="prism.evaluator.runner")
    parser.add_argument("--spec", required=True, type=Path)
    args = parser.parse_args(argv)
    spec = RunSpec.read(args.spec)
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format=f"%(asctime)s [rank{rank}] %(levelname)s %(name)s: %(message)s",
    )
    report, code, dist, feed = RunnerReport(ok=False), EXIT_OK, None, None
    try:
        dist = setup_distributed(spec)
        feed = FeedClient(Path(spec.feed_socket))
        run(spec, dist, report, feed)
        report.ok = True
    except Exception as exc:  # every failure is reported; the host decides whose it is
        logger.error("run failed: %s", exc, exc_info=not isinstance(exc, PrismError))
        report.failure = _failure(exc)
        code = EXIT_MINER_FAULT if report.failure.fault == "miner" else EXIT_INFRA_FAULT
    if rank == 0 or not report.ok:
        _write_report(report, Path(spec.out_dir), rank)
    if feed is not None:
        feed.close()
    if dist is not None and dist.world_size > 1 and report.ok:
        torch.distributed.destroy_process_group()
    return code


if __name__ == "__main__":
    exit_code = main()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(exit_code)  # skip the interpreter's teardown (a second or more with torch loaded)
