"""A causal gated linear recurrence, computed in chunks.

For each channel: h_t = a_t * h_{t-1} + (1 - a_t) * u_t, with a decay a_t in (0, 1) that depends
on the input. Inside a chunk of C positions the recurrence is a lower-triangular (C, C) matrix of
decay products, exp(log A_t - log A_s) for s <= t (always <= 1, so it never overflows); across
chunks only the last state is carried, so the cost is O(T * C) per channel, not O(T^2).
"""

from __future__ import annotations

import torch
from torch import nn

CHUNK = 4  # measured: 4 is the fastest on CPU (fewer wasted products than 16, few enough Python steps)


def gated_scan(u: torch.Tensor, log_a: torch.Tensor) -> torch.Tensor:
    """u, log_a: (B, T, D) with log_a <= 0. Returns h: (B, T, D)."""
    batch, length, width = u.shape
    pad = (-length) % CHUNK
    if pad:
        u = nn.functional.pad(u, (0, 0, 0, pad))
        log_a = nn.functional.pad(log_a, (0, 0, 0, pad))
    chunks = u.shape[1] // CHUNK
    u = u.view(batch, chunks, CHUNK, width)  # (B, N, C, D)
    log_a = log_a.view(batch, chunks, CHUNK, width)
    cum = log_a.cumsum(dim=2)  # (B, N, C, D): log of the decay from the chunk start
    causal = torch.ones(CHUNK, CHUNK, dtype=torch.bool, device=u.device).tril()
    gap = (cum.unsqueeze(3) - cum.unsqueeze(2)).masked_fill(~causal[None, None, :, :, None], float("-inf"))
    inside = torch.einsum("bntsd,bnsd->bntd", gap.exp(), u * (1 - log_a.exp()))  # (B, N, C, D)
    state = torch.zeros(batch, width, dtype=u.dtype, device=u.device)
    out = []
    for n in range(chunks):  # carry the last state across chunk boundaries
        h = inside[:, n] + cum[:, n].exp() * state.unsqueeze(1)  # (B, C, D)
        out.append(h)
        state = h[:, -1]
    return torch.cat(out, dim=1)[:, :length]


class RecurrentBlock(nn.Module):
    """x + down(gelu(gate) * scan(u, decay)), all projections from LayerNorm(x)."""

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.up = nn.Linear(width, 3 * hidden, bias=False)  # u, gate, decay logits
        self.down = nn.Linear(hidden, width, bias=False)
        self.hidden = hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u, gate, decay = self.up(self.norm(x)).split(self.hidden, dim=-1)  # (B, T, H) each
        log_a = nn.functional.logsigmoid(decay + 2.0)  # decays start near 0.9
        return x + self.down(nn.functional.gelu(gate) * gated_scan(u, log_a))
