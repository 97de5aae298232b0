"""A GPT with switches: examples/gpt by default, and every variant the identity table needs.

``Variant()`` computes what examples/gpt computes (pre-LayerNorm blocks, fused q/k/v projection,
causal ``sdpa``, exact GELU, learned positions, tied head). Each field changes one thing:
either a no-op (the family must stay) or a genuinely different design (it must not).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

VOCAB, CONTEXT = 257, 32


@dataclass(frozen=True)
class Variant:
    width: int = 64
    heads: int = 4
    layers: int = 2
    qkv: str = "fused"  # fused | separate | cat | stack
    attention: str = (
        "sdpa"  # sdpa | sdpa_bool_mask | sdpa_float_mask | manual | manual_where | manual_softmax | linear
    )
    norm: str = "nn"  # nn | manual | manual_rsqrt
    eps: float = 1e-5
    mlp: str = "gelu"  # gelu | gelu_tanh | relu | swiglu
    order: str = "pre"  # pre | post
    positions: str = "learned"  # learned | rope
    window: int | None = None  # sliding-window attention span
    noops: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # A misspelt switch would silently build the baseline and make a table row vacuous.
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"unknown {name}: {getattr(self, name)!r}")
        unknown = set(self.noops) - NOOPS
        if unknown:
            raise ValueError(f"unknown no-ops: {sorted(unknown)}")


CHOICES = {
    "qkv": {"fused", "separate", "cat", "stack"},
    "attention": {
        "sdpa",
        "sdpa_bool_mask",
        "sdpa_float_mask",
        "manual",
        "manual_where",
        "manual_softmax",
        "linear",
    },
    "norm": {"nn", "manual", "manual_rsqrt"},
    "mlp": {"gelu", "gelu_tanh", "relu", "swiglu"},
    "order": {"pre", "post"},
    "positions": {"learned", "rope"},
}
NOOPS = {
    "times_one",
    "plus_zero_times",
    "minus_zero",
    "dead",
    "residual_scale",
    "residual_buffer",
    "clone",
    "double_float",
    "swap_operands",
    "relu_difference",
    "abs_times_sign",
    "where_either_way",
}


class Norm(nn.Module):
    def __init__(self, width: int, v: Variant) -> None:
        super().__init__()
        self.v = v
        if v.norm == "nn":
            self.ln = nn.LayerNorm(width, eps=v.eps)
        else:
            self.weight = nn.Parameter(torch.ones(width))
            self.bias = nn.Parameter(torch.zeros(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.v.norm == "nn":
            return self.ln(x)
        mean = x.mean(-1, keepdim=True)
        if self.v.norm == "manual":
            var = ((x - mean) ** 2).mean(-1, keepdim=True)
            return (x - mean) / torch.sqrt(var + self.v.eps) * self.weight + self.bias
        var = x.var(-1, keepdim=True, unbiased=False)
        return (x - mean) * torch.rsqrt(var + self.v.eps) * self.weight + self.bias


def allowed_mask(v: Variant, time: int) -> torch.Tensor:
    mask = torch.ones(time, time, dtype=torch.bool).tril()
    if v.window is not None:
        mask &= ~torch.ones(time, time, dtype=torch.bool).tril(-v.window)
    return mask


def rope(x: torch.Tensor) -> torch.Tensor:
    time, dim = x.shape[-2], x.shape[-1]
    inverse = 1.0 / (10000 ** (torch.arange(0, dim, 2).float() / dim))
    angles = torch.arange(time).float()[:, None] * inverse[None]
    cos, sin = angles.cos(), angles.sin()
    even, odd = x[..., 0::2], x[..., 1::2]
    return torch.cat([even * cos - odd * sin, even * sin + odd * cos], dim=-1)


class Attention(nn.Module):
    def __init__(self, v: Variant) -> None:
        super().__init__()
        self.v = v
        d = v.width
        if v.qkv == "fused":
            self.qkv = nn.Linear(d, 3 * d, bias=False)
        else:
            self.q, self.k, self.value = (nn.Linear(d, d, bias=False) for _ in range(3))
        self.out = nn.Linear(d, d, bias=False)
        self.register_buffer("mask", allowed_mask(v, CONTEXT).float().view(1, 1, CONTEXT, CONTEXT))

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        d = self.v.width
        if self.v.qkv == "fused":
            return self.qkv(x).split(d, dim=2)
        q, k, v = self.q(x), self.k(x), self.value(x)
        if self.v.qkv == "cat":
            return torch.cat([q, k, v], dim=-1).split(d, dim=2)
        if self.v.qkv == "stack":
            return torch.stack([q, k, v]).unbind(0)
        return q, k, v

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        h = self.v.heads
        q, k, v = (z.view(b, t, h, c // h).transpose(1, 2) for z in self.project(x))
        if self.v.positions == "rope":
            q, k = rope(q), rope(k)
        y = self.attend(q, k, v, t)
        return self.out(y.transpose(1, 2).contiguous().view(b, t, c))

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, t: int) -> torch.Tensor:
        kind = self.v.attention
        if kind == "sdpa" and self.v.window is None:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
        if kind in ("sdpa", "sdpa_bool_mask"):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed_mask(self.v, t))
        if kind == "sdpa_float_mask":
            bias = torch.zeros(t, t).masked_fill(~allowed_mask(self.v, t), float("-inf"))
            return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        if kind == "linear":
            return linear_attention(q, k, v)
        scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
        mask = self.mask[:, :, :t, :t]
        if kind == "manual_where":
            scores = torch.where(mask.bool(), scores, float("-inf"))
        else:
            scores = scores.masked_fill(mask == 0, float("-inf"))
        if kind == "manual_softmax":
            shifted = (scores - scores.amax(-1, keepdim=True)).exp()
            weights = shifted / shifted.sum(-1, keepdim=True)
        else:
            weights = F.softmax(scores, dim=-1)
        return weights @ v


def linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal linear attention with the elu + 1 feature map."""
    q, k = F.elu(q) + 1, F.elu(k) + 1
    states = torch.einsum("bhtd,bhte->bhtde", k, v).cumsum(2)
    numerator = torch.einsum("bhtd,bhtde->bhte", q, states)
    denominator = torch.einsum("bhtd,bhtd->bht", q, k.cumsum(2)).unsqueeze(-1)
    return numerator / (denominator + 1e-6)


class MLP(nn.Module):
    def __init__(self, v: Variant) -> None:
        super().__init__()
        self.v = v
        d = v.width
        self.up = nn.Linear(d, 4 * d, bias=False)
        if v.mlp == "swiglu":
            self.gate = nn.Linear(d, 4 * d, bias=False)
        self.down = nn.Linear(4 * d, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kind = self.v.mlp
        if kind == "swiglu":
            return self.down(F.silu(self.gate(x)) * self.up(x))
        if kind == "relu":
            return self.down(F.relu(self.up(x)))
        return self.down(F.gelu(self.up(x), approximate="tanh" if kind == "gelu_tanh" else "none"))


class Block(nn.Module):
    def __init__(self, v: Variant) -> None:
        super().__init__()
        self.v = v
        self.ln_attn, self.attn = Norm(v.width, v), Attention(v)
        self.ln_mlp, self.mlp = Norm(v.width, v), MLP(v)
        if "dead" in v.noops:
            self.unused = nn.Linear(v.width, v.width)
        if "residual_buffer" in v.noops:
            self.register_buffer("gain", torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        noops = self.v.noops
        if "dead" in noops:
            _ = torch.tanh(self.unused(x)).sum()  # computed, never used
        if "clone" in noops:
            x = x.clone().contiguous()
        if "double_float" in noops:
            x = x.double().float()
        if self.v.order == "post":
            x = self.ln_attn(x + self.attn(x))
            return self.ln_mlp(x + self.mlp(x))
        branch = self.attn(self.ln_attn(x))
        if "residual_scale" in noops:
            branch = 1.0 * branch
        if "residual_buffer" in noops:
            branch = branch * self.gain
        x = branch + x if "swap_operands" in noops else x + branch
        return x + self.mlp(self.ln_mlp(x))


class GPT(nn.Module):
    def __init__(self, v: Variant) -> None:
        super().__init__()
        self.v = v
        self.token_embedding = nn.Embedding(VOCAB, v.width)
        if v.positions == "learned":
            self.position_embedding = nn.Embedding(CONTEXT, v.width)
        self.blocks = nn.ModuleList(Block(v) for _ in range(v.layers))
        self.ln_final = Norm(v.width, v)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        noops = self.v.noops
        x = self.token_embedding(tokens)
        if self.v.positions == "learned":
            x = x + self.position_embedding(torch.arange(tokens.shape[1], device=tokens.device))
        if "times_one" in noops:
            x = x * 1.0
        if "plus_zero_times" in noops:
            x = x + 0 * x
        if "minus_zero" in noops:
            x = x - 0
        if "relu_difference" in noops:
            x = F.relu(x) - F.relu(-x)
        if "abs_times_sign" in noops:
            x = x.abs() * x.sign()
        if "where_either_way" in noops:
            x = torch.where(x > 0, x, x)
        for block in self.blocks:
            x = block(x)
        return self.ln_final(x) @ self.token_embedding.weight.t()


def build(variant: Variant | None = None, **changes: object) -> GPT:
    torch.manual_seed(0)
    base = variant or Variant()
    return GPT(Variant(**{**base.__dict__, **changes}))
