"""A small GPT whose width and depth follow the evaluation context (see config.py).

build_model(ctx) -> GPT: tokens (B, T) int64 -> logits (B, T, vocab_size), T <= ctx.sequence_length.
"""

from __future__ import annotations

import math

import torch
from config import GPTConfig, choose_config
from layers import Block
from torch import nn
from train import recipe_for

from prism.evaluator.interface import PrismContext, TrainingRecipe


class GPT(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.token_embedding = nn.Embedding(config.vocab_size, config.d_model)
        self.position_embedding = nn.Embedding(config.block_size, config.d_model)
        self.blocks = nn.ModuleList(Block(config.d_model, config.n_head) for _ in range(config.n_layer))
        self.ln_final = nn.LayerNorm(config.d_model)
        self.apply(self._init_weights)
        # GPT-2: scale residual output projections by 1/sqrt(2 * depth) so deep stacks start stable.
        for block in self.blocks:
            for projection in (block.attn.out, block.mlp.down):
                nn.init.normal_(projection.weight, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        _, time = tokens.shape
        if time > self.config.block_size:
            raise ValueError(f"sequence of {time} tokens is longer than the context {self.config.block_size}")
        positions = torch.arange(time, device=tokens.device)
        x = self.token_embedding(tokens) + self.position_embedding(positions)  # (B, T, C)
        for block in self.blocks:
            x = block(x)
        # Tied head: the output projection reuses the token embedding matrix.
        return self.ln_final(x) @ self.token_embedding.weight.t()  # (B, T, V)


def build_model(ctx: PrismContext) -> GPT:
    config = choose_config(ctx.vocab_size, ctx.sequence_length, ctx.max_layers, ctx.max_parameters)
    return GPT(config)


def get_recipe(ctx: PrismContext) -> TrainingRecipe:
    config = choose_config(ctx.vocab_size, ctx.sequence_length, ctx.max_layers, ctx.max_parameters)
    return recipe_for(config.d_model)
