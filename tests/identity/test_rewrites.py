"""Canonicalisation must not merge different functions: near misses of every rewrite stay apart."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from gpt_variants import Attention, build
from torch import nn

from prism.errors import MinerFault

VOCAB, WIDTH = 257, 16


class TinyLM(nn.Module):
    """Embedding -> ``body`` -> tied head; ``body`` is the part each test varies."""

    def __init__(self, body) -> None:  # type: ignore[no-untyped-def]
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(VOCAB, WIDTH)
        self.norm = nn.LayerNorm(WIDTH)
        self.a, self.b = nn.Linear(WIDTH, WIDTH // 2), nn.Linear(WIDTH, WIDTH // 2)
        self.rms = nn.RMSNorm(WIDTH, eps=1e-6)
        self.body = body

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.body(self, self.embed(tokens)) @ self.embed.weight.t()


def layer_norm(m, x):  # type: ignore[no-untyped-def]
    return m.norm(x)


def layer_norm_by_hand(unbiased: bool):  # type: ignore[no-untyped-def]
    def body(m, x):  # type: ignore[no-untyped-def]
        mean, var = x.mean(-1, keepdim=True), x.var(-1, keepdim=True, unbiased=unbiased)
        return (x - mean) / torch.sqrt(var + 1e-5) * m.norm.weight + m.norm.bias

    return body


def test_a_norm_with_unbiased_variance_is_not_layer_norm(record):
    fused = record(TinyLM(layer_norm))
    assert record(TinyLM(layer_norm_by_hand(unbiased=False))).family_id == fused.family_id
    assert record(TinyLM(layer_norm_by_hand(unbiased=True))).family_id != fused.family_id


@pytest.mark.parametrize(
    "body",
    [
        lambda m, x: F.rms_norm(x, (WIDTH,), m.rms.weight, 1e-6),
        lambda m, x: x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * m.rms.weight,
    ],
    ids=["F.rms_norm", "by hand"],
)
def test_rms_norm_spellings_agree_and_differ_from_layer_norm(body, record):
    module = record(TinyLM(lambda m, x: m.rms(x)))
    other = record(TinyLM(body))
    assert (other.family_id, other.version_id) == (module.family_id, module.version_id)
    assert module.family_id != record(TinyLM(layer_norm)).family_id
    assert "rms_norm" in module.op_counts


def test_softmax_over_the_query_axis_is_not_attention(record, leader):
    def attend(self, q, k, v, t):  # type: ignore[no-untyped-def]
        return F.softmax((q @ k.transpose(-2, -1)) / math.sqrt(k.size(-1)), dim=-2) @ v

    graph = _with_attention(record, attend)
    assert graph.family_id != leader.family_id and "sdpa" not in graph.op_counts


def test_attention_without_a_mask_is_a_version_and_both_spellings_agree(record, leader):
    def by_hand(self, q, k, v, t):  # type: ignore[no-untyped-def]
        return F.softmax((q @ k.transpose(-2, -1)) / math.sqrt(k.size(-1)), dim=-1) @ v

    def fused(self, q, k, v, t):  # type: ignore[no-untyped-def]
        return F.scaled_dot_product_attention(q, k, v)

    manual, kernel, causal = _with_attention(record, by_hand), _with_attention(record, fused), record(build())
    assert (manual.family_id, manual.version_id) == (kernel.family_id, kernel.version_id)
    assert manual.family_id == leader.family_id and manual.version_id != causal.version_id


def test_an_attention_bias_is_an_input_not_a_mask(record, leader):
    def alibi(self, q, k, v, t):  # type: ignore[no-untyped-def]
        i = torch.arange(t)
        bias = -(i[:, None] - i[None, :]).abs().float()
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=bias.masked_fill(i[None] > i[:, None], -math.inf)
        )

    assert _with_attention(record, alibi).family_id != leader.family_id


def test_another_attention_scale_is_a_new_version(record):
    def unscaled(self, q, k, v, t):  # type: ignore[no-untyped-def]
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=1.0)

    graph, causal = _with_attention(record, unscaled), record(build())
    assert graph.family_id == causal.family_id and graph.version_id != causal.version_id


def _with_attention(record, attend):  # type: ignore[no-untyped-def]
    original = Attention.attend
    Attention.attend = attend
    try:
        return record(build())
    finally:
        Attention.attend = original


@pytest.mark.parametrize(
    ("body", "same_family", "same_version"),
    [
        (lambda m, x: m.norm(x) * 1.0001, True, False),  # a scale is a version argument
        (lambda m, x: m.norm(F.relu(x)), False, False),  # relu is not an identity on embeddings
        (lambda m, x: m.norm(x.half().float()), False, False),  # a lossy cast is kept
        (lambda m, x: m.norm(x.flip(-1).flip(-1)), True, True),  # two flips select every element
        (lambda m, x: m.norm(torch.cat([x[..., :5], x[..., 5:]], -1)), True, True),
        (lambda m, x: m.norm(F.relu(x) - F.relu(-x)), True, True),  # several ops, one identity
        (lambda m, x: m.norm(F.relu(x) - 0.5 * F.relu(-x)), False, False),  # a leaky relu
    ],
    ids=["scale", "relu", "half-cast", "double-flip", "cat-of-slices", "relu-difference", "leaky"],
)
def test_only_true_identities_disappear(body, same_family, same_version, record):
    base = record(TinyLM(layer_norm))
    graph = record(TinyLM(body))
    assert (graph.family_id == base.family_id) is same_family
    assert (graph.version_id == base.version_id) is same_version


def _fill(both: bool):  # type: ignore[no-untyped-def]
    def body(m, x):  # type: ignore[no-untyped-def]
        out = torch.zeros(x.shape[0], x.shape[1], WIDTH)
        out[:, :, : WIDTH // 2] = m.a(x)
        if both:
            out[:, :, WIDTH // 2 :] = torch.tanh(m.b(x))
        return out

    return body


def test_writes_through_slices_keep_their_dependencies(record):
    both, one = record(TinyLM(_fill(True))), record(TinyLM(_fill(False)))
    assert both.family_id != one.family_id
    assert "tanh" in both.op_counts and "tanh" not in one.op_counts
    assert both.op_counts["update"] == 2 and both.op_counts["mm"] == 3


def test_dead_parameters_and_their_ops_are_not_recorded(record):
    graph = record(TinyLM(lambda m, x: (torch.tanh(m.a(x)).sum(), m.norm(x))[1]))
    base = record(TinyLM(layer_norm))
    assert (graph.family_id, graph.version_id) == (base.family_id, base.version_id)
    assert "tanh" not in graph.op_counts
    live = [op for op in graph.ops if op.computation]
    assert live and not any("tanh" in op.op for op in live)


class Smuggler(nn.Module):
    """Computes through numpy or a Python float, or uses honest constants built outside torch."""

    def __init__(self, route: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed, self.mix, self.route = nn.Embedding(VOCAB, WIDTH), nn.Linear(WIDTH, WIDTH), route
        self.cache: torch.Tensor | None = None

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)
        if self.route == "numpy":  # the tanh layer would vanish from the graph
            x = torch.from_numpy(np.tanh(self.mix(x).numpy()))
        elif self.route == "float":  # a token-dependent scale disguised as a constant
            x = x * float(self.mix(x).mean())
        elif self.route == "numpy constant":
            x = x * torch.from_numpy(np.linspace(0.5, 1.5, WIDTH, dtype=np.float32))
        elif self.route == "cached constant":  # built by ops on the first call, reused after
            if self.cache is None:
                self.cache = torch.linspace(0.5, 1.5, WIDTH)
            x = x * self.cache
        return x @ self.embed.weight.t()


@pytest.mark.parametrize("route", ["numpy", "float"])
def test_values_that_leave_torch_and_come_back_are_refused(route, record):
    with pytest.raises(MinerFault) as raised:
        record(Smuggler(route))
    assert raised.value.code == "graph.untracked_value"


@pytest.mark.parametrize("route", ["numpy constant", "cached constant"])
def test_constants_built_outside_torch_are_fine(route, record):
    graph = record(Smuggler(route))
    assert graph.op_counts == {"embedding": 1, "mm": 1, "mul": 1}
