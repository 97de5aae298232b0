"""A gated linear recurrence language model: no attention, no position embedding.

build_model(ctx) -> RecurrentLM: tokens (B, T) int64 -> logits (B, T, vocab_size), any T.

Parameters (LayerNorms with weight and bias, projections without bias, head tied to the
embedding): V*d + L*(2d + 3dh + hd) + 2d with h = 2d, i.e. V*d + L*(8d^2 + 2d) + 2d.
"""

from __future__ import annotations

import torch
from scan import RecurrentBlock
from torch import nn

from prism.evaluator.interface import PrismContext, TrainingRecipe

EXPANSION = 2


def parameter_count(vocab: int, depth: int, width: int) -> int:
    return vocab * width + depth * (8 * width * width + 2 * width) + 2 * width


def choose_shape(ctx: PrismContext) -> tuple[int, int]:
    """(depth, width): up to 4 blocks, the widest multiple of 8 that fits the budget."""
    depth = max(1, min(ctx.max_layers, 4))
    width = 8
    while parameter_count(ctx.vocab_size, depth, width + 8) <= ctx.max_parameters:
        width += 8
    return depth, width


class RecurrentLM(nn.Module):
    def __init__(self, vocab: int, depth: int, width: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.blocks = nn.ModuleList(RecurrentBlock(width, EXPANSION * width) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        nn.init.normal_(self.embed.weight, std=0.02)
        for block in self.blocks:
            nn.init.normal_(block.down.weight, std=0.02 / (2 * depth) ** 0.5)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)  # (B, T, d)
        for block in self.blocks:
            x = block(x)
        return self.norm(x) @ self.embed.weight.t()  # (B, T, V)


def build_model(ctx: PrismContext) -> RecurrentLM:
    depth, width = choose_shape(ctx)
    return RecurrentLM(ctx.vocab_size, depth, width)


def get_recipe(ctx: PrismContext) -> TrainingRecipe:
    return TrainingRecipe(learning_rate=2e-3, batch_size=16, weight_decay=0.05)
