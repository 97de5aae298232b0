"""A gated causal token-mixing language model: no attention, no position embedding.

build_model(ctx) -> CausalMixer: tokens (B, T) int64 -> logits (B, T, vocab_size), T <= ctx.sequence_length.
"""

from __future__ import annotations

import torch
from mixing import GatedMixerBlock
from sizing import MixerShape, choose_shape
from torch import nn

from prism.evaluator.interface import PrismContext, TrainingRecipe


class CausalMixer(nn.Module):
    def __init__(self, shape: MixerShape) -> None:
        super().__init__()
        self.shape = shape
        self.embed = nn.Embedding(shape.vocab_size, shape.width)
        self.blocks = nn.ModuleList(
            GatedMixerBlock(shape.width, shape.hidden, shape.context) for _ in range(shape.depth)
        )
        self.norm = nn.LayerNorm(shape.width)
        nn.init.normal_(self.embed.weight, std=0.02)
        for block in self.blocks:
            nn.init.normal_(block.up.weight, std=0.02)
            nn.init.normal_(block.down.weight, std=0.02 / (2 * shape.depth) ** 0.5)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.shape[1] > self.shape.context:
            raise ValueError(f"{tokens.shape[1]} tokens exceed the context of {self.shape.context}")
        x = self.embed(tokens)  # (B, T, C)
        for block in self.blocks:
            x = block(x)
        return self.norm(x) @ self.embed.weight.t()  # tied head: (B, T, V)


def build_model(ctx: PrismContext) -> CausalMixer:
    return CausalMixer(choose_shape(ctx.vocab_size, ctx.sequence_length, ctx.max_layers, ctx.max_parameters))


def get_recipe(ctx: PrismContext) -> TrainingRecipe:
    # Token-mixing weights are small and shared across channels: a fairly high rate suits them.
    return TrainingRecipe(learning_rate=2e-3, batch_size=16, warmup_fraction=0.05, weight_decay=0.05)
