"""The in-sandbox training runner. Started by the host as

    torchrun --standalone --nnodes=1 --nproc-per-node=N -m prism.evaluator.runner --spec /spec/run_spec.json

It reads the :class:`~prism.evaluator.context.RunSpec`, imports the submission, builds and checks
the model, trains it for the regime's token budget with an online (predict-then-train) probe, and
writes into the spec's out dir:

* ``weights.safetensors`` (rank 0): the harness-saved ``state_dict`` (tensors only, CPU, cloned so
  tied weights save as separate tensors and load back with a strict key match);
* ``probe.jsonl`` (rank 0): one JSON record per probe ``{step, tokens_seen, loss_nats, bpb, ...}``;
* ``runner_report.json`` (rank 0) and ``runner_report.rank<R>.json`` (a failing non-zero rank):
  hooks present/used, recipe declared/effective/clamped, steps, tokens, bytes, timings, failure.

Everything the submission does runs through :func:`_miner_call`, which turns any exception into
a typed :class:`~prism.errors.MinerFault`; an exception anywhere else is ours (infrastructure).
See docs/evaluator.md for the hook semantics, batch format and recipe modes.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import math
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from prism.errors import InfrastructureFault, MinerFault, PrismError
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
from prism.evaluator.interface import HOOK_NAMES, PrismContext, TrainingRecipe, coerce_recipe
from prism.evaluator.loading import (
    INFERENCE_HOOKS,
    check_logits,
    count_layers,
    count_parameters,
    hook_source_file,
    inference_logits,
    inference_path_name,
    load_submission_modules,
    resolve_hooks,
)

logger = logging.getLogger("prism.evaluator.runner")

LN2 = math.log(2.0)
# Reference recipe: the harness defaults every architecture is trained with (only lr is read).
REFERENCE_BETAS = (0.9, 0.95)
REFERENCE_WEIGHT_DECAY = 0.1
REFERENCE_WARMUP_FRACTION = 0.05
REFERENCE_GRAD_CLIP = 1.0
MIN_LR_RATIO = 0.1  # cosine and linear schedules decay to 10% of the peak lr


# ----------------------------------------------------------------------------------------------
# process setup


@dataclass
class Dist:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    backend: str | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(spec: RunSpec) -> Dist:
    """Read torchrun's environment; start a process group only when there is more than one rank."""
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if spec.device == "cuda":
        if not torch.cuda.is_available():
            raise InfrastructureFault("profile wants CUDA but no GPU is visible", code="runner.no_cuda")
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    backend = None
    if world_size > 1:
        backend = "nccl" if spec.device == "cuda" else "gloo"
        torch.distributed.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=10))
    return Dist(rank=rank, local_rank=local_rank, world_size=world_size, backend=backend, device=device)


def seed_everything(seed: int, threads: int, device: str) -> None:
    """Same seed, same thread count, deterministic kernels: two runs give the same numbers."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    if device == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
        # TF32 matmuls for every submission alike: deterministic, and several times faster than
        # full float32 on Ampere/Hopper. (Unmeasured here: no GPU was available.)
        torch.set_float32_matmul_precision("high")
    # warn_only: a submission using an op without a deterministic kernel still runs (and is logged).
    torch.use_deterministic_algorithms(True, warn_only=True)


def _miner_call(code: str, what: str, fn: Callable[..., Any], *args: Any) -> Any:
    """Call submission code; anything it raises is the submission's fault, with a stable code."""
    try:
        return fn(*args)
    except PrismError:
        raise
    except Exception as exc:
        raise MinerFault(f"{what} raised {type(exc).__name__}: {exc}", code=code) from exc


# ----------------------------------------------------------------------------------------------
# model, recipe, optimizer


def build_checked_model(
    build_model: Callable[..., Any], ctx: PrismContext
) -> tuple[torch.nn.Module, int, int]:
    """``build_model(ctx)`` plus the budget checks: (model, parameter_count, layer_count)."""
    model = _miner_call("eval.build_failed", "build_model(ctx)", build_model, ctx)
    if not isinstance(model, torch.nn.Module):
        raise MinerFault(
            f"build_model returned {type(model).__name__}, not torch.nn.Module", code="eval.not_a_module"
        )
    params = _miner_call("eval.build_failed", "counting parameters", count_parameters, model)
    if params > ctx.max_parameters:
        raise MinerFault(
            f"model has {params:,} parameters, above max_parameters={ctx.max_parameters:,}",
            code="eval.too_many_parameters",
        )
    layers = _miner_call("eval.build_failed", "counting layers", count_layers, model)
    if layers > ctx.max_layers:
        raise MinerFault(
            f"model has {layers} layers, above max_layers={ctx.max_layers}", code="eval.too_many_layers"
        )
    return model, params, layers


@dataclass
class EffectiveRecipe:
    recipe: TrainingRecipe  # what the harness optimizer and schedule use
    global_batch: int  # sequences per update, all ranks together
    per_rank_batch: int
    clamped: list[str]


def effective_recipe(
    declared: TrainingRecipe, spec: RunSpec, *, world_size: int, custom_optimizer: bool
) -> EffectiveRecipe:
    """Apply the recipe mode's rules to the declared recipe (see docs/evaluator.md, "Recipe modes")."""
    lo, hi = spec.lr_window
    regime = spec.regime
    if spec.recipe_mode == "reference":
        recipe = TrainingRecipe(
            learning_rate=min(max(declared.learning_rate, lo), hi),
            batch_size=regime.batch_size,
            optimizer="adamw",
            scheduler="cosine",
            weight_decay=REFERENCE_WEIGHT_DECAY,
            warmup_fraction=REFERENCE_WARMUP_FRACTION,
            grad_clip=REFERENCE_GRAD_CLIP,
            betas=REFERENCE_BETAS,
        )
    else:
        batch = min(max(declared.batch_size, 1), regime.batch_size_cap)
        # configure_optimizer owns the lr completely; the fallback optimizer gets the safe window.
        lr = declared.learning_rate if custom_optimizer else min(max(declared.learning_rate, lo), hi)
        recipe = declared.model_copy(update={"batch_size": batch, "learning_rate": lr})
    per_rank = math.ceil(recipe.batch_size / world_size)
    if per_rank * world_size != recipe.batch_size:  # every rank takes the same share
        recipe = recipe.model_copy(update={"batch_size": per_rank * world_size})
    declared_d, effective_d = declared.model_dump(), recipe.model_dump()
    clamped = [k for k in declared_d if declared_d[k] != effective_d[k]]
    return EffectiveRecipe(
        recipe=recipe, global_batch=recipe.batch_size, per_rank_batch=per_rank, clamped=clamped
    )


def make_harness_optimizer(model: torch.nn.Module, recipe: TrainingRecipe) -> torch.optim.Optimizer:
    """AdamW/Adam/SGD from the recipe; weight decay only on matrices (not norms, biases)."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": recipe.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=recipe.learning_rate, betas=recipe.betas)
    if recipe.optimizer == "adam":
        return torch.optim.Adam(groups, lr=recipe.learning_rate, betas=recipe.betas)
    return torch.optim.SGD(groups, lr=recipe.learning_rate, momentum=0.9)


def lr_multiplier(step: int, total_steps: int, recipe: TrainingRecipe) -> float:
    """Linear warmup, then the recipe's schedule down to MIN_LR_RATIO of the peak."""
    warmup = int(recipe.warmup_fraction * total_steps)
    if step < warmup:
        return (step + 1) / warmup
    if recipe.scheduler == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total_steps - warmup)
    if recipe.scheduler == "linear":
        return 1.0 - (1.0 - MIN_LR_RATIO) * progress
    return MIN_LR_RATIO + (1.0 - MIN_LR_RATIO) * 0.5 * (1.0 + math.cos(math.pi * progress))


def configure_submitted_optimizer(
    hook: Callable[..., Any], model: torch.nn.Module, recipe: TrainingRecipe, ctx: PrismContext
) -> tuple[torch.optim.Optimizer, Any]:
    out = _miner_call("hook.configure_optimizer_failed", "configure_optimizer", hook, model, recipe, ctx)
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


# ----------------------------------------------------------------------------------------------
# data


@dataclass
class TrainBatch:
    tokens: torch.Tensor  # (B, T+1) int64 on the device
    window_bytes: np.ndarray  # (B,) UTF-8 bytes covered by each window's targets


def open_batches(spec: RunSpec, dist: Dist, per_rank_batch: int, start_step: int = 0) -> Iterator[TrainBatch]:
    """This rank's share of the training stream (prism.data.TrainLoader), as device tensors.

    Shard hashes were verified by the host before launch; here only headers are checked.
    """
    from prism.data import TrainLoader

    loader = TrainLoader(
        Path(spec.data_dir),
        split="train",
        batch_size=per_rank_batch,
        seq_len=spec.regime.sequence_length,
        rank=dist.rank,
        world_size=dist.world_size,
        seed=spec.context.seed,
        check_hashes=False,
        start_step=start_step,
    )
    for batch in loader:
        tokens = torch.from_numpy(np.ascontiguousarray(batch.tokens, dtype=np.int64))
        yield TrainBatch(tokens=tokens.to(dist.device, non_blocking=True), window_bytes=_window_bytes(batch))


def _window_bytes(batch: Any) -> np.ndarray:
    for name in ("window_bytes", "target_bytes_per_window", "bytes_per_window"):
        value = getattr(batch, name, None)
        if value is not None:
            return np.asarray(value, dtype=np.int64)
    total = int(batch.target_bytes)  # only a total is known: spread it evenly over the windows
    rows = len(batch.tokens)
    return np.full(rows, total / rows)


# ----------------------------------------------------------------------------------------------
# the training loop


@dataclass
class LoopHooks:
    """The callables one update goes through (None: the harness default)."""

    inference: dict[str, Callable[..., Any]]
    compute_loss: Callable[..., Any] | None = None
    train_step: Callable[..., Any] | None = None


@dataclass
class LoopResult:
    steps: int = 0
    tokens: int = 0
    bytes: int = 0
    final_loss: float | None = None
    nonfinite: bool = False
    probes: list[dict[str, Any]] = field(default_factory=list)


def _scalar_loss(value: Any, where: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor) or value.numel() != 1 or not value.is_floating_point():
        raise MinerFault(
            f"{where} must return a scalar float loss tensor, got {value!r:.80}", code="hook.bad_loss"
        )
    return value.reshape(())


def default_loss(
    model: torch.nn.Module, input_ids: torch.Tensor, targets: torch.Tensor, vocab: int
) -> torch.Tensor:
    logits = model(input_ids)  # (B, T, V)
    logits = check_logits(
        logits,
        batch=input_ids.shape[0],
        seq_len=input_ids.shape[1],
        vocab_size=vocab,
        where="model(input_ids)",
    )
    return F.cross_entropy(logits.float().reshape(-1, vocab), targets.reshape(-1))


def probe_nats(
    model: torch.nn.Module,
    hooks: LoopHooks,
    input_ids: torch.Tensor,
    targets: torch.Tensor,
    ctx: PrismContext,
) -> torch.Tensor:
    """Summed nats of ``targets`` under the inference path, in eval mode, without gradients."""
    model.eval()
    with torch.no_grad():
        logits = inference_logits(model, hooks.inference, input_ids, ctx)  # (n, T, V)
        nats = F.cross_entropy(
            logits.float().reshape(-1, ctx.vocab_size), targets.reshape(-1), reduction="sum"
        )
    model.train()
    return nats


class ProbeWriter:
    """Buffers probe sums on the device; every flush moves them to the host once, all-reduces them
    across ranks (on the device, as NCCL requires) and appends the records to probe.jsonl."""

    def __init__(self, path: Path | None, dist: Dist) -> None:
        self.path = path
        self.dist = dist
        # (step, tokens_seen, summed nats (0-dim device tensor), tokens, bytes) of this rank
        self.pending: list[tuple[int, int, torch.Tensor, int, float]] = []
        self.records: list[dict[str, Any]] = []
        if path is not None and dist.is_main:
            path.write_text("", encoding="utf-8")

    def add(self, step: int, tokens_seen: int, nats: torch.Tensor, tokens: int, nbytes: float) -> None:
        self.pending.append((step, tokens_seen, nats.detach(), tokens, nbytes))

    def flush(self) -> None:
        if not self.pending:
            return
        nats = torch.stack([p[2] for p in self.pending]).to(torch.float64)  # (k,) on the device
        counts = torch.tensor([[p[3], p[4]] for p in self.pending], dtype=torch.float64, device=nats.device)
        sums = torch.cat([nats[:, None], counts], dim=1)  # (k, 3): nats, tokens, bytes
        if self.dist.world_size > 1:
            torch.distributed.all_reduce(sums)
        lines = []
        for (step, seen, *_), (total_nats, toks, nbytes) in zip(
            self.pending, sums.cpu().tolist(), strict=True
        ):
            record = {
                "step": step,
                "tokens_seen": seen,
                "loss_nats": total_nats / toks if toks else float("nan"),
                "bpb": total_nats / (LN2 * nbytes) if nbytes else float("nan"),
                "tokens": int(toks),
                "bytes": round(nbytes),
            }
            self.records.append(record)
            lines.append(json.dumps(record, allow_nan=True))
        self.pending.clear()
        if self.path is not None and self.dist.is_main:
            with self.path.open("a", encoding="utf-8") as fh:
                fh.write("\n".join(lines) + "\n")


def train_loop(
    *,
    model: torch.nn.Module,
    train_model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    batches: Iterator[TrainBatch],
    hooks: LoopHooks,
    ctx: PrismContext,
    recipe: TrainingRecipe,
    harness_schedule: bool,
    total_steps: int,
    start_step: int,
    global_batch: int,
    probe_every: int,
    probe_fraction: float,
    probe: ProbeWriter,
    flush_every: int,
    on_step_end: Callable[[int], None] | None = None,
) -> LoopResult:
    """Predict-then-train: probe the incoming batch under the inference path, then update on it.

    ``model`` is the bare module (probe, inference hooks); ``train_model`` is what the update
    runs through (the DDP wrapper when world_size > 1, else ``model``).
    """
    vocab = ctx.vocab_size
    seq_len = ctx.sequence_length
    result = LoopResult()
    base_lrs = [group["lr"] for group in optimizer.param_groups]
    grad_clip = recipe.grad_clip
    losses: list[torch.Tensor] = []
    for step in range(start_step, total_steps):
        try:
            batch = next(batches)
        except StopIteration as exc:
            raise InfrastructureFault(
                "the training data ran out before the token budget", code="data.exhausted"
            ) from exc
        input_ids, targets = batch.tokens[:, :-1], batch.tokens[:, 1:]  # (B, T), (B, T)
        tokens_seen = step * global_batch * seq_len

        # 1) online probe: loss of the first ceil(fraction * B) sequences, before the update sees them
        if step % probe_every == 0:
            n = max(1, math.ceil(probe_fraction * input_ids.shape[0]))
            nats = _miner_call(
                "eval.probe_failed",
                "the inference path",
                probe_nats,
                model,
                hooks,
                input_ids[:n],
                targets[:n],
                ctx,
            )
            probe.add(step, tokens_seen, nats, n * seq_len, float(batch.window_bytes[:n].sum()))

        # 2) the update
        if harness_schedule:
            mult = lr_multiplier(step, total_steps, recipe)
            for group, base in zip(optimizer.param_groups, base_lrs, strict=True):
                group["lr"] = base * mult
        hook_batch = {"input_ids": input_ids, "targets": targets}
        if hooks.train_step is not None:
            loss = _scalar_loss(
                _miner_call(
                    "hook.train_step_failed",
                    "train_step",
                    hooks.train_step,
                    train_model,
                    hook_batch,
                    optimizer,
                    ctx,
                ),
                "train_step",
            )
        else:
            if hooks.compute_loss is not None:
                loss = _scalar_loss(
                    _miner_call(
                        "hook.compute_loss_failed",
                        "compute_loss",
                        hooks.compute_loss,
                        train_model,
                        hook_batch,
                        ctx,
                    ),
                    "compute_loss",
                )
            else:
                loss = _miner_call(
                    "eval.forward_failed",
                    "model forward",
                    default_loss,
                    train_model,
                    input_ids,
                    targets,
                    vocab,
                )
            _miner_call("eval.backward_failed", "loss.backward()", loss.backward)
            if grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            _miner_call("eval.optimizer_failed", "optimizer.step()", optimizer.step)
            optimizer.zero_grad(set_to_none=True)
        if scheduler is not None:
            _miner_call("hook.scheduler_failed", "scheduler.step()", scheduler.step)
        losses.append(loss.detach())
        result.steps = step + 1 - start_step
        result.tokens += global_batch * seq_len
        result.bytes += round(float(batch.window_bytes.sum()))  # this rank's bytes; run() sums ranks

        # 3) every flush_every steps (and at the end): check finiteness, stream probe records
        if (step + 1) % flush_every == 0 or step + 1 == total_steps:
            recent = torch.stack(losses).float().cpu()
            losses.clear()
            probe.flush()
            result.final_loss = float(recent[-1])
            if not bool(torch.isfinite(recent).all()):
                result.nonfinite = True
                raise MinerFault(
                    f"training loss became non-finite by step {step}", code="eval.nonfinite_loss"
                )
        if on_step_end is not None:
            on_step_end(step)
    result.probes = probe.records
    return result


# ----------------------------------------------------------------------------------------------
# checkpoints and weights


def save_submitted_checkpoint(
    hook: Callable[..., Any],
    model: torch.nn.Module,
    checkpoint_dir: Path,
    ctx: PrismContext,
    step: int,
    out_dir: Path,
) -> CheckpointInfo | None:
    returned = _miner_call(
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


# ----------------------------------------------------------------------------------------------
# one run, top to bottom


def run(spec: RunSpec, dist: Dist, report: RunnerReport) -> None:
    timings = report.timings_s
    t0 = time.perf_counter()
    out_dir = Path(spec.out_dir)
    checkpoint_dir = out_dir / CHECKPOINT_DIRNAME
    if dist.is_main:
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(spec.context.seed, spec.torch_threads, spec.device)
    report.world_size, report.distributed_backend = dist.world_size, dist.backend
    report.device_type = spec.device
    report.torch_version, report.cuda_version = torch.__version__, torch.version.cuda
    report.torch_threads = torch.get_num_threads()
    if spec.device == "cuda":
        report.gpu_count = torch.cuda.device_count()
        report.device_names = [torch.cuda.get_device_name(i) for i in range(report.gpu_count)]

    # --- import the submission and resolve hooks
    loaded = load_submission_modules(
        Path(spec.submission_dir), spec.architecture_entrypoint, spec.training_entrypoint
    )
    hooks = resolve_hooks(loaded)
    submitted = spec.recipe_mode == "submitted"
    used: dict[str, bool] = dict.fromkeys(HOOK_NAMES, False)
    ctx = make_context(
        spec.context,
        rank=dist.rank,
        local_rank=dist.local_rank,
        world_size=dist.world_size,
        device=str(dist.device),
        distributed_backend=dist.backend,
        checkpoint_dir=str(checkpoint_dir),
    )
    timings["import"] = time.perf_counter() - t0

    # --- build the model under the budgets (same seed on every rank: identical init)
    t = time.perf_counter()
    torch.manual_seed(spec.context.seed)
    model, report.parameter_count, report.layer_count = build_checked_model(
        loaded.architecture.build_model, ctx
    )
    _miner_call("eval.build_failed", "moving the model to the device", model.to, dist.device)
    _miner_call("eval.build_failed", "model.train()", model.train)
    declared = _miner_call("eval.bad_recipe", "get_recipe(ctx)", loaded.architecture.get_recipe, ctx)
    try:
        declared_recipe = coerce_recipe(declared)
    except (TypeError, ValueError) as exc:
        raise MinerFault(f"get_recipe returned an invalid recipe: {exc}", code="eval.bad_recipe") from exc
    custom_optimizer = submitted and "configure_optimizer" in hooks
    eff = effective_recipe(
        declared_recipe, spec, world_size=dist.world_size, custom_optimizer=custom_optimizer
    )
    report.recipe_declared = declared_recipe.model_dump(mode="json")
    report.recipe_effective = eff.recipe.model_dump(mode="json") | {
        "global_batch": eff.global_batch,
        "per_rank_batch": eff.per_rank_batch,
        "optimizer_source": "configure_optimizer" if custom_optimizer else "harness",
        "mode": spec.recipe_mode,
    }
    report.recipe_clamped = eff.clamped

    # --- approved retry: the submission restores its own state, the harness skips the steps done
    start_step = 0
    approved_retry = spec.context.attempt > 0 and spec.context.resume_checkpoint_dir is not None
    if submitted and approved_retry and "load_checkpoint" in hooks:
        # ctx carries is_resume=True and the accepted checkpoint's metadata (make_context).
        _miner_call(
            "hook.load_checkpoint_failed",
            "load_checkpoint",
            hooks["load_checkpoint"],
            model,
            spec.context.resume_checkpoint_dir,
            ctx,
        )
        used["load_checkpoint"] = True
        start_step = spec.resume_step
        report.resumed_from_step = start_step

    # --- optimizer: the submission's (submitted mode with the hook) or the harness's
    train_model: torch.nn.Module = model
    if dist.world_size > 1:
        device_ids = [dist.local_rank] if spec.device == "cuda" else None
        train_model = _miner_call(
            "eval.build_failed",
            "wrapping the model in DDP",
            torch.nn.parallel.DistributedDataParallel,
            model,
            device_ids,
        )
    scheduler = None
    if custom_optimizer:
        optimizer, scheduler = configure_submitted_optimizer(
            hooks["configure_optimizer"], model, declared_recipe, ctx
        )
        used["configure_optimizer"] = True
    else:
        optimizer = make_harness_optimizer(model, eff.recipe)
    # Reference mode ignores every hook (the probe uses model(input_ids), as the held-out eval does).
    inference = {k: hooks[k] for k in INFERENCE_HOOKS if k in hooks} if submitted else {}
    loop_hooks = LoopHooks(inference=inference)
    if inference_path_name(inference) in inference:
        used[inference_path_name(inference)] = True
    if submitted and "train_step" in hooks:
        loop_hooks.train_step = hooks["train_step"]
        used["train_step"] = True
    elif submitted and "compute_loss" in hooks:
        loop_hooks.compute_loss = hooks["compute_loss"]
        used["compute_loss"] = True
    timings["build"] = time.perf_counter() - t
    _record_hooks(report, hooks, used, loaded.root)  # already known if training fails below

    # --- train
    regime = spec.regime
    total_steps = max(1, regime.train_tokens // (eff.global_batch * regime.sequence_length))
    report.planned_steps = total_steps
    batches = open_batches(spec, dist, eff.per_rank_batch, start_step)  # same order as an interrupted attempt
    probe = ProbeWriter(out_dir / PROBE_FILENAME, dist)
    save_hook = hooks.get("save_checkpoint") if submitted else None
    every = spec.checkpoint_every_steps

    def on_step_end(step: int) -> None:
        if save_hook is not None and every and (step + 1) % every == 0 and step + 1 < total_steps:
            _checkpoint(step + 1)

    def _checkpoint(step: int) -> None:
        if dist.is_main:
            info = save_submitted_checkpoint(save_hook, model, checkpoint_dir, ctx, step, out_dir)
            report.checkpoint = info or report.checkpoint
        if dist.world_size > 1:
            torch.distributed.barrier()

    t = time.perf_counter()
    logger.info(
        "training %d steps of %d sequences x %d tokens (%s recipe)",
        total_steps,
        eff.global_batch,
        regime.sequence_length,
        spec.recipe_mode,
    )
    try:
        result = train_loop(
            model=model,
            train_model=train_model,
            optimizer=optimizer,
            scheduler=scheduler,
            batches=batches,
            hooks=loop_hooks,
            ctx=ctx,
            recipe=eff.recipe,
            harness_schedule=not custom_optimizer,
            total_steps=total_steps,
            start_step=start_step,
            global_batch=eff.global_batch,
            probe_every=spec.probe_every_steps,
            probe_fraction=spec.probe_fraction,
            probe=probe,
            flush_every=spec.log_every_steps,
            on_step_end=on_step_end if every else None,
        )
    except MinerFault as exc:
        report.nonfinite_loss = exc.code == "eval.nonfinite_loss"
        raise
    timings["train"] = time.perf_counter() - t
    # Tokens count the whole run (a resumed attempt includes the steps done before the interruption);
    # bytes are measured, so only this attempt's batches count.
    report.steps, report.bytes = start_step + result.steps, result.bytes
    report.tokens = report.steps * eff.global_batch * regime.sequence_length
    if dist.world_size > 1:
        total_bytes = torch.tensor([result.bytes], dtype=torch.float64, device=dist.device)
        torch.distributed.all_reduce(total_bytes)
        report.bytes = int(total_bytes.item())
    report.final_train_loss_nats = result.final_loss
    logger.info(
        "trained %d steps, %d tokens in %.1fs (%.0f tokens/s)",
        result.steps,
        result.tokens,
        timings["train"],
        result.tokens / max(timings["train"], 1e-9),
    )

    # --- side effects on rank 0: the submission's checkpoint, then the harness's weights
    t = time.perf_counter()
    if save_hook is not None:
        _checkpoint(total_steps)
        used["save_checkpoint"] = True
    if dist.is_main:
        _miner_call(
            "eval.save_failed", "saving the trained weights", save_weights, model, out_dir / WEIGHTS_FILENAME
        )
    timings["save"] = time.perf_counter() - t
    _record_hooks(report, hooks, used, loaded.root)


def _record_hooks(
    report: RunnerReport, hooks: dict[str, Callable[..., Any]], used: dict[str, bool], root: Path
) -> None:
    report.hooks = {
        name: HookUse(
            present=name in hooks,
            used=used.get(name, False),
            source_file=hook_source_file(hooks[name], root) if name in hooks else None,
        )
        for name in HOOK_NAMES
    }


def _write_report(report: RunnerReport, out_dir: Path, rank: int) -> None:
    name = RUNNER_REPORT_FILENAME if rank == 0 else f"runner_report.rank{rank}.json"
    tmp = out_dir / (name + ".tmp")
    tmp.write_text(report.model_dump_json(indent=2), encoding="utf-8")
    tmp.replace(out_dir / name)


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
    report = RunnerReport(ok=False)
    code = EXIT_OK
    dist: Dist | None = None
    try:
        dist = setup_distributed(spec)
        run(spec, dist, report)
        report.ok = True
    except PrismError as exc:
        fault = "miner" if exc.fault == "miner" else "infrastructure"
        report.failure = RunnerFailure(code=exc.code, fault=fault, message=exc.message[:2000], phase="train")
        code = EXIT_MINER_FAULT if fault == "miner" else EXIT_INFRA_FAULT
        logger.error("run failed: %s", exc)
    except Exception as exc:  # a bug on our side, not the submission's (submission calls are guarded)
        logger.exception("runner crashed")
        report.failure = RunnerFailure(
            code="runner.crashed",
            fault="infrastructure",
            message=f"{type(exc).__name__}: {exc}"[:2000],
            phase="train",
        )
        code = EXIT_INFRA_FAULT
    if rank == 0 or not report.ok:
        _write_report(report, Path(spec.out_dir), rank)
    if dist is not None and dist.world_size > 1 and report.ok:
        torch.distributed.destroy_process_group()
    return code


if __name__ == "__main__":
    raise SystemExit(main())
