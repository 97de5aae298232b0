"""Recipe policy: what a declared recipe becomes, and the training plan the host enforces (no torch).

The host computes the plan from the recipe the submission declared (``get_recipe(ctx)``, sent by
the runner as evidence) with the rules below, then streams exactly ``plan.total_steps`` batches of
``plan.per_rank_batch`` sequences to each rank. The runner applies the same plan; the host never
trusts the runner's arithmetic, since the token budget is enforced by what it sends.

Recipe modes (docs/evaluator.md, "Recipe modes"):

* ``reference`` (architecture competition): every architecture trains with the harness defaults;
  only the learning rate is read, clamped into the profile's window.
* ``submitted`` (training competition): the declared recipe, with the batch size clamped to the
  regime's cap and the learning rate clamped to the window unless ``configure_optimizer`` owns it.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from prism.evaluator.interface import TrainingRecipe
from prism.profiles import Regime

RecipeMode = Literal["reference", "submitted"]

REFERENCE_BETAS = (0.9, 0.95)
REFERENCE_WEIGHT_DECAY = 0.1
REFERENCE_WARMUP_FRACTION = 0.05
REFERENCE_GRAD_CLIP = 1.0
MIN_LR_RATIO = 0.1  # cosine and linear schedules decay to 10% of the peak lr


class TrainPlan(BaseModel):
    """How many batches of what size each rank gets: decided by the host, applied by the runner."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    recipe: TrainingRecipe = Field(description="what the harness optimizer and schedule use")
    declared: TrainingRecipe
    clamped: list[str] = Field(default_factory=list, description="fields the policy changed")
    global_batch: int = Field(gt=0, description="sequences per update, all ranks together")
    per_rank_batch: int = Field(gt=0)
    world_size: int = Field(gt=0)
    sequence_length: int = Field(gt=0)
    total_steps: int = Field(gt=0)
    start_step: int = Field(default=0, ge=0, description="first step of this attempt (approved resume)")
    custom_optimizer: bool = False
    recipe_mode: RecipeMode

    @property
    def train_tokens(self) -> int:
        return self.total_steps * self.global_batch * self.sequence_length

    @property
    def steps_this_attempt(self) -> int:
        return self.total_steps - self.start_step


def effective_recipe(
    declared: TrainingRecipe,
    regime: Regime,
    *,
    lr_window: tuple[float, float],
    recipe_mode: RecipeMode,
    custom_optimizer: bool,
) -> TrainingRecipe:
    """Apply the recipe mode's rules to the declared recipe."""
    lo, hi = lr_window
    lr = min(max(declared.learning_rate, lo), hi)
    if recipe_mode == "reference":
        return TrainingRecipe(
            learning_rate=lr,
            batch_size=regime.batch_size,
            optimizer="adamw",
            scheduler="cosine",
            weight_decay=REFERENCE_WEIGHT_DECAY,
            warmup_fraction=REFERENCE_WARMUP_FRACTION,
            grad_clip=REFERENCE_GRAD_CLIP,
            betas=REFERENCE_BETAS,
        )
    batch = min(max(declared.batch_size, 1), regime.batch_size_cap)
    # configure_optimizer owns the lr completely; the fallback optimizer gets the safe window.
    return declared.model_copy(
        update={"batch_size": batch, "learning_rate": declared.learning_rate if custom_optimizer else lr}
    )


def plan_training(
    declared: TrainingRecipe,
    regime: Regime,
    *,
    lr_window: tuple[float, float],
    recipe_mode: RecipeMode,
    world_size: int,
    custom_optimizer: bool,
    start_step: int = 0,
) -> TrainPlan:
    """The plan for one run. Every rank takes the same share, so the global batch rounds up to a
    multiple of ``world_size``; the step count never exceeds the regime's token budget."""
    recipe = effective_recipe(
        declared, regime, lr_window=lr_window, recipe_mode=recipe_mode, custom_optimizer=custom_optimizer
    )
    per_rank = math.ceil(recipe.batch_size / world_size)
    if per_rank * world_size != recipe.batch_size:
        recipe = recipe.model_copy(update={"batch_size": per_rank * world_size})
    declared_d, effective_d = declared.model_dump(), recipe.model_dump()
    total_steps = max(1, regime.train_tokens // (recipe.batch_size * regime.sequence_length))
    return TrainPlan(
        recipe=recipe,
        declared=declared,
        clamped=[k for k in declared_d if declared_d[k] != effective_d[k]],
        global_batch=recipe.batch_size,
        per_rank_batch=per_rank,
        world_size=world_size,
        sequence_length=regime.sequence_length,
        total_steps=total_steps,
        start_step=min(start_step, total_steps),
        custom_optimizer=custom_optimizer,
        recipe_mode=recipe_mode,
    )


def reference_steps(regime: Regime) -> int:
    """Updates of the reference recipe at this regime (what calibration and progress bars assume)."""
    return max(1, regime.train_tokens // (regime.batch_size * regime.sequence_length))


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


__all__ = [
    "MIN_LR_RATIO",
    "RecipeMode",
    "TrainPlan",
    "effective_recipe",
    "lr_multiplier",
    "plan_training",
    "reference_steps",
]
