"""PRISM's own reference GPT: what compute calibration trains (inside the sandbox, no submission code).

A plain pre-norm GPT (learned positions, GELU MLP, tied embedding) sized to fill about 90% of a
regime's parameter budget, so the calibration measures what an honest architecture of that
budget costs on this validator's hardware with the harness loop. It is never scored.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from prism.evaluator.interface import PrismContext, TrainingRecipe

BUDGET_FILL = 0.9
HEAD_DIM = 32
MAX_LAYERS = 6


def reference_parameters(ctx: PrismContext, layers: int, d: int) -> int:
    """Exact parameter count: blocks (12 d^2 + 13 d each), tied embedding, positions, final norm."""
    return layers * (12 * d * d + 13 * d) + (ctx.vocab_size + ctx.sequence_length + 2) * d


def reference_shape(ctx: PrismContext) -> tuple[int, int]:
    """(layers, width): as deep as allowed (up to MAX_LAYERS), then the widest multiple of
    HEAD_DIM // 2 within BUDGET_FILL of the budget; fewer layers only when the width would drop
    below HEAD_DIM."""
    budget, step = BUDGET_FILL * ctx.max_parameters, HEAD_DIM // 2
    width = step
    for layers in range(max(1, min(ctx.max_layers, MAX_LAYERS)), 0, -1):
        a, b = 12 * layers, 13 * layers + ctx.vocab_size + ctx.sequence_length + 2
        width = int((-b + math.sqrt(b * b + 4 * a * budget)) / (2 * a)) // step * step
        while width > step and reference_parameters(ctx, layers, width) > budget:
            width -= step
        if width >= HEAD_DIM:
            return layers, width
    return 1, max(step, width)


class _Block(torch.nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.ln1 = torch.nn.LayerNorm(d)
        self.qkv = torch.nn.Linear(d, 3 * d)
        self.proj = torch.nn.Linear(d, d)
        self.ln2 = torch.nn.LayerNorm(d)
        self.up = torch.nn.Linear(d, 4 * d)
        self.down = torch.nn.Linear(4 * d, d)
        self.heads = d // HEAD_DIM if d % HEAD_DIM == 0 else 1
        self.head_dim = d // self.heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=-1)  # (B, T, d) each
        q, k, v = (z.view(b, t, self.heads, self.head_dim).transpose(1, 2) for z in (q, k, v))  # (B, H, T, hd)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, d)
        x = x + self.proj(y)
        return x + self.down(F.gelu(self.up(self.ln2(x))))


class ReferenceGPT(torch.nn.Module):
    def __init__(self, ctx: PrismContext) -> None:
        super().__init__()
        layers, d = reference_shape(ctx)
        self.tok = torch.nn.Embedding(ctx.vocab_size, d)
        self.pos = torch.nn.Embedding(ctx.sequence_length, d)
        self.blocks = torch.nn.ModuleList(_Block(d) for _ in range(layers))
        self.ln = torch.nn.LayerNorm(d)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.tok(tokens) + self.pos(positions)  # (B, T, d)
        for block in self.blocks:
            x = block(x)
        return self.ln(x) @ self.tok.weight.T  # (B, T, V)


def build_model(ctx: PrismContext) -> torch.nn.Module:
    return ReferenceGPT(ctx)


def get_recipe(ctx: PrismContext) -> TrainingRecipe:
    return TrainingRecipe(learning_rate=1e-3)


__all__ = ["ReferenceGPT", "build_model", "get_recipe", "reference_parameters", "reference_shape"]
