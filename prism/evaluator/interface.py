"""The miner-facing API: everything a submission may import from PRISM.

Submissions import this module as ``prism.evaluator.interface`` or, for projects written against
the original package name, ``prism_challenge.evaluator.interface``. It is deliberately light: it
does not import torch, so ``prism check`` and the static gate stay fast.

Contract (see docs/submissions.md):

    def build_model(ctx: PrismContext) -> torch.nn.Module
    def get_recipe(ctx: PrismContext) -> TrainingRecipe | dict

Optional hooks, looked up in the training entrypoint first and then in the architecture
entrypoint (single-file submissions keep everything in one module):

    configure_optimizer(model, recipe, ctx)      -> optimizer, or (optimizer, scheduler)
    inference_logits(model, batch, ctx)          -> logits (B, T, V); preferred over infer
    infer(model, batch, ctx)                     -> logits (B, T, V)
    compute_loss(model, batch, ctx)              -> scalar loss tensor
    train_step(model, batch, optimizer, ctx)     -> scalar loss tensor (the hook steps itself)
    save_checkpoint(model, checkpoint_dir, ctx)  -> None | str | {"path": str, "metadata": dict}
    load_checkpoint(model, checkpoint_dir, ctx)  -> None
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

CHECKPOINT_API_VERSION = 1
CHECKPOINT_WORKSPACE_CAP_BYTES = 10_000_000_000

#: Optional hooks and their exact positional parameters, in the order the evaluator may call them.
HOOK_SIGNATURES: dict[str, tuple[str, ...]] = {
    "configure_optimizer": ("model", "recipe", "ctx"),
    "inference_logits": ("model", "batch", "ctx"),
    "infer": ("model", "batch", "ctx"),
    "compute_loss": ("model", "batch", "ctx"),
    "train_step": ("model", "batch", "optimizer", "ctx"),
    "save_checkpoint": ("model", "checkpoint_dir", "ctx"),
    "load_checkpoint": ("model", "checkpoint_dir", "ctx"),
}
HOOK_NAMES: tuple[str, ...] = tuple(HOOK_SIGNATURES)
REQUIRED_FUNCTIONS: tuple[str, ...] = ("build_model", "get_recipe")

OptimizerName = Literal["adamw", "adam", "sgd"]
SchedulerName = Literal["cosine", "linear", "constant"]


class TrainingRecipe(BaseModel):
    """Recipe metadata a submission declares. The evaluator may clamp it (see docs/evaluator.md)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    learning_rate: float = Field(default=3e-4, gt=0.0, le=10.0)
    batch_size: int = Field(default=8, ge=1, le=4096)
    optimizer: OptimizerName = "adamw"
    scheduler: SchedulerName = "cosine"
    weight_decay: float = Field(default=0.1, ge=0.0, le=10.0)
    warmup_fraction: float = Field(default=0.05, ge=0.0, le=0.5)
    grad_clip: float | None = Field(default=1.0, gt=0.0)
    betas: tuple[float, float] = (0.9, 0.95)

    @field_validator("learning_rate", "weight_decay")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value

    @field_validator("betas")
    @classmethod
    def _betas_in_range(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not all(0.0 <= b < 1.0 for b in value):
            raise ValueError("betas must lie in [0, 1)")
        return value


@dataclass(frozen=True)
class PrismContext:
    """What the evaluator tells a submission about the run it is part of."""

    vocab_size: int
    sequence_length: int
    max_layers: int
    max_parameters: int
    seed: int
    checkpoint_dir: str | None = None
    resume_checkpoint_dir: str | None = None
    checkpoint_api_version: int = CHECKPOINT_API_VERSION
    attempt: int = 0
    is_resume: bool = False
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    distributed_backend: str | None = None
    device: str = "cpu"
    checkpoint_metadata: dict[str, Any] = field(default_factory=dict)
    #: Training tokens of this run (all ranks together): the regime's token budget.
    train_tokens: int | None = None
    #: Optimizer updates this run will make. ``None`` while ``build_model`` and ``get_recipe`` run
    #: (the update count follows from the batch size the recipe declares); set for every hook.
    total_steps: int | None = None

    @property
    def is_main_process(self) -> bool:
        return self.rank == 0


class Batch(Mapping[str, Any]):
    """What hooks receive: ``batch["input_ids"]`` (B, T) and ``batch["targets"]`` (B, T).

    Projects written for PRISM v1 read the same tensors as attributes: ``batch.tokens`` (the
    inputs), ``batch.targets`` and ``batch.metadata`` (a dict, ``{}`` unless stated). The
    inference path gets no targets: ``"targets" not in batch`` and ``batch.targets is None``.
    """

    __slots__ = ("_items", "_metadata")

    def __init__(self, input_ids: Any, targets: Any = None, metadata: dict[str, Any] | None = None) -> None:
        self._items: dict[str, Any] = {"input_ids": input_ids}
        if targets is not None:
            self._items["targets"] = targets
        self._metadata = dict(metadata or {})

    def __getitem__(self, key: str) -> Any:
        return self._items[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    @property
    def input_ids(self) -> Any:
        return self._items["input_ids"]

    @property
    def tokens(self) -> Any:
        return self._items["input_ids"]

    @property
    def targets(self) -> Any:
        return self._items.get("targets")

    @property
    def metadata(self) -> dict[str, Any]:
        return self._metadata

    def __repr__(self) -> str:
        return f"Batch(keys={list(self._items)})"


def coerce_recipe(value: TrainingRecipe | dict[str, Any]) -> TrainingRecipe:
    """Accept what ``get_recipe`` returned: a ``TrainingRecipe`` or a plain dict of its fields."""
    if isinstance(value, TrainingRecipe):
        return value
    if isinstance(value, dict):
        return TrainingRecipe(**value)
    raise TypeError(f"get_recipe must return TrainingRecipe or dict, got {type(value).__name__}")


__all__ = [
    "CHECKPOINT_API_VERSION",
    "CHECKPOINT_WORKSPACE_CAP_BYTES",
    "HOOK_NAMES",
    "HOOK_SIGNATURES",
    "REQUIRED_FUNCTIONS",
    "Batch",
    "PrismContext",
    "TrainingRecipe",
    "coerce_recipe",
]
