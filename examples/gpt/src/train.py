"""Training side of the GPT example: the recipe and an optimizer hook.

The hook keeps weight decay off LayerNorm parameters and embeddings (the usual GPT practice);
the evaluator uses it only when it runs the submission's own training (kind full), never in the
architecture competition's reference recipe.
"""

from __future__ import annotations

import torch

from prism.evaluator.interface import TrainingRecipe


def recipe_for(d_model: int) -> TrainingRecipe:
    """Tiny models tolerate (and need) a larger learning rate than GPT-2-sized ones."""
    learning_rate = 1e-3 if d_model <= 256 else 6e-4
    return TrainingRecipe(
        learning_rate=learning_rate,
        batch_size=16,
        optimizer="adamw",
        scheduler="cosine",
        weight_decay=0.1,
        warmup_fraction=0.05,
        grad_clip=1.0,
        betas=(0.9, 0.95),
    )


def configure_optimizer(model, recipe, ctx):
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        # Linear weight matrices decay; LayerNorms and embeddings (incl. the tied head) do not.
        is_matrix = parameter.dim() >= 2 and "embedding" not in name
        (decay if is_matrix else no_decay).append(parameter)
    groups = [
        {"params": decay, "weight_decay": recipe.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=recipe.learning_rate, betas=recipe.betas)
