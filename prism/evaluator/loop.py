"""The harness training loop (inside the sandbox): optimizer, schedule, update, online probe.

Reads top to bottom like nanoGPT's: get a batch, set the lr, compute the loss, step, log. Every
call into submission code goes through :func:`prism.evaluator.untrusted.call_submission`.

The online probe is predict-then-train. In the reference recipe it costs nothing: a batch's
training loss is computed *before* the update that uses it, so it already is the loss of an
unseen batch (``probe_source = "train_loss"``). In the submitted recipe a hook may add
auxiliary terms to its loss, so the probe is a separate no-grad forward of the inference path on
the first ``ceil(fraction * B)`` sequences (``probe_source = "inference"``). Either way the probe
is evidence: this process runs submission code.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from prism.errors import MinerFault
from prism.evaluator.interface import Batch, PrismContext, TrainingRecipe
from prism.evaluator.loading import check_logits, inference_logits
from prism.evaluator.recipe import TrainPlan, lr_multiplier
from prism.evaluator.untrusted import call_submission

LN2 = math.log(2.0)


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


@dataclass
class LoopHooks:
    """The callables one update goes through (None: the harness default)."""

    inference: dict[str, Callable[..., Any]]
    compute_loss: Callable[..., Any] | None = None
    train_step: Callable[..., Any] | None = None
    scheduler: Any = None


@dataclass
class LoopResult:
    steps: int = 0
    tokens: int = 0
    bytes: int = 0
    final_loss: float | None = None
    nonfinite_step: int | None = None
    probes: list[dict[str, Any]] = field(default_factory=list)


def make_harness_optimizer(model: torch.nn.Module, recipe: TrainingRecipe) -> torch.optim.Optimizer:
    """AdamW/Adam/SGD from the recipe; weight decay only on matrices (not norms, biases).
    On CUDA the fused Adam kernels (one launch per step instead of one per tensor)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": recipe.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    fused = {"fused": True} if params and all(p.is_cuda for p in params) else {}
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=recipe.learning_rate, betas=recipe.betas, **fused)
    if recipe.optimizer == "adam":
        return torch.optim.Adam(groups, lr=recipe.learning_rate, betas=recipe.betas, **fused)
    return torch.optim.SGD(groups, lr=recipe.learning_rate, momentum=0.9)


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
        self.pending: list[tuple[int, int, torch.Tensor, int, float]] = []  # step, seen, nats, tokens, bytes
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


@dataclass
class LoopParts:
    """What one run's loop works on (built by the runner, read here)."""

    model: torch.nn.Module  # the bare module: probe, inference hooks, weights
    train_model: torch.nn.Module  # what the update runs through (DDP wrapper or the model)
    optimizer: torch.optim.Optimizer
    hooks: LoopHooks
    ctx: PrismContext
    plan: TrainPlan
    harness_schedule: bool
    probe: ProbeWriter
    probe_from_train_loss: bool
    probe_every: int
    probe_fraction: float
    device: torch.device
    autocast: bool = False  # bf16 autocast of the reference recipe's forward on CUDA


def _update(parts: LoopParts, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """One optimizer update on (x, y); returns the batch's loss measured before the update."""
    hooks, ctx, model = parts.hooks, parts.ctx, parts.train_model
    batch = Batch(x, y)
    if hooks.train_step is not None:
        out = call_submission(
            "hook.train_step_failed", "train_step", hooks.train_step, model, batch, parts.optimizer, ctx
        )
        return _scalar_loss(out, "train_step")
    if hooks.compute_loss is not None:
        out = call_submission(
            "hook.compute_loss_failed", "compute_loss", hooks.compute_loss, model, batch, ctx
        )
        loss = _scalar_loss(out, "compute_loss")
    else:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=parts.autocast):
            loss = call_submission(
                "eval.forward_failed", "model forward", default_loss, model, x, y, ctx.vocab_size
            )
    call_submission("eval.backward_failed", "loss.backward()", loss.backward)
    if parts.plan.recipe.grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(parts.model.parameters(), parts.plan.recipe.grad_clip)
    call_submission("eval.optimizer_failed", "optimizer.step()", parts.optimizer.step)
    parts.optimizer.zero_grad(set_to_none=True)
    return loss


def _probe(
    parts: LoopParts,
    step: int,
    x: torch.Tensor,
    y: torch.Tensor,
    window_bytes: np.ndarray,
    loss: torch.Tensor | None,
) -> None:
    seen = step * parts.plan.global_batch * parts.plan.sequence_length
    if parts.probe_from_train_loss and loss is not None:
        parts.probe.add(step, seen, loss.detach() * x.numel(), x.numel(), float(window_bytes.sum()))
        return
    n = max(1, math.ceil(parts.probe_fraction * x.shape[0]))
    nats = call_submission(
        "eval.probe_failed",
        "the inference path",
        probe_nats,
        parts.model,
        parts.hooks,
        x[:n],
        y[:n],
        parts.ctx,
    )
    parts.probe.add(step, seen, nats, n * x.shape[1], float(window_bytes[:n].sum()))


def train_loop(
    parts: LoopParts,
    batches: Iterator[tuple[np.ndarray, np.ndarray]],
    *,
    flush_every: int,
    on_step_end: Callable[[int], None] | None = None,
) -> LoopResult:
    """Predict-then-train over the host's batches, from ``plan.start_step`` to ``plan.total_steps``."""
    plan, result = parts.plan, LoopResult()
    base_lrs = [group["lr"] for group in parts.optimizer.param_groups]
    losses: list[torch.Tensor] = []
    for step in range(plan.start_step, plan.total_steps):
        tokens_np, window_bytes = next(batches)  # (B, T+1) int64, (B,) bytes: exactly the plan's batches
        tokens = torch.from_numpy(tokens_np)
        if parts.device.type == "cuda":
            tokens = tokens.pin_memory()  # so the copy below is asynchronous
        tokens = tokens.to(parts.device, non_blocking=True)
        x, y = tokens[:, :-1], tokens[:, 1:]  # (B, T), (B, T)
        if parts.harness_schedule:
            mult = lr_multiplier(step, plan.total_steps, plan.recipe)
            for group, base in zip(parts.optimizer.param_groups, base_lrs, strict=True):
                group["lr"] = base * mult
        probing = step % parts.probe_every == 0
        if probing and not parts.probe_from_train_loss:
            _probe(parts, step, x, y, window_bytes, None)  # before the update sees the batch
        loss = _update(parts, x, y)
        if probing and parts.probe_from_train_loss:
            _probe(parts, step, x, y, window_bytes, loss)
        if parts.hooks.scheduler is not None:
            call_submission("hook.scheduler_failed", "scheduler.step()", parts.hooks.scheduler.step)
        losses.append(loss.detach())
        result.steps += 1
        result.tokens += plan.global_batch * plan.sequence_length
        result.bytes += int(window_bytes.sum())  # this rank's bytes; the runner sums ranks
        if (step + 1) % flush_every == 0 or step + 1 == plan.total_steps:
            _flush(parts, losses, result, step)
        if on_step_end is not None:
            on_step_end(step)
    result.probes = parts.probe.records
    return result


def _flush(parts: LoopParts, losses: list[torch.Tensor], result: LoopResult, step: int) -> None:
    """Check finiteness of the losses since the last flush and stream the probe records."""
    recent = torch.stack(losses).float().cpu()
    first = step + 1 - len(losses)
    losses.clear()
    parts.probe.flush()
    result.final_loss = float(recent[-1])
    finite = torch.isfinite(recent)
    if not bool(finite.all()):
        result.nonfinite_step = first + int((~finite).nonzero()[0])
        where = (
            "at initialisation (step 0)" if result.nonfinite_step == 0 else f"at step {result.nonfinite_step}"
        )
        raise MinerFault(f"the training loss became non-finite {where}", code="eval.nonfinite_loss")
    if parts.plan.recipe_mode == "reference":
        torch.use_deterministic_algorithms(True)  # re-asserted: submission code may have turned it off


__all__ = [
    "Dist",
    "LoopHooks",
    "LoopParts",
    "LoopResult",
    "ProbeWriter",
    "default_loss",
    "make_harness_optimizer",
    "probe_nats",
    "train_loop",
]
