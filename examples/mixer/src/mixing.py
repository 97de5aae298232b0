"""Gated causal token mixing (in the spirit of gMLP's spatial gating unit, made causal).

A block: x + down( u * mix(norm(v)) ), where [u, v] = gelu(up(norm(x))) split in two halves.
``mix`` is a learned T x T matrix over positions, masked to its lower triangle, so position t
only ever sees positions <= t: no future leakage, by construction.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class CausalTokenMixing(nn.Module):
    def __init__(self, context: int) -> None:
        super().__init__()
        # Near-zero weights and a bias of one: the gate starts as "u * 1", i.e. a plain MLP,
        # and learns to mix positions (the initialization the gMLP paper recommends).
        self.weight = nn.Parameter(torch.empty(context, context).uniform_(-1e-3, 1e-3))
        self.bias = nn.Parameter(torch.ones(context))
        self.register_buffer("mask", torch.tril(torch.ones(context, context)), persistent=False)

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        time = v.shape[1]
        weight = (self.weight * self.mask)[:time, :time]  # (T, T), lower triangular
        return torch.einsum("ts,bsc->btc", weight, v) + self.bias[:time, None]


class GatedMixerBlock(nn.Module):
    def __init__(self, width: int, hidden: int, context: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.up = nn.Linear(width, 2 * hidden, bias=False)
        self.gate_norm = nn.LayerNorm(hidden)
        self.mixing = CausalTokenMixing(context)
        self.down = nn.Linear(hidden, width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u, v = F.gelu(self.up(self.norm(x))).chunk(2, dim=-1)
        return x + self.down(u * self.mixing(self.gate_norm(v)))
