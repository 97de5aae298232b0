"""Architecture graph and identity: what changes a family, what only changes a version.

The no-op and equivalent-form table is in tests/identity/test_table.py (docs/identity.md).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from prism.errors import MinerFault
from prism.evaluator import graph as graph_module
from prism.evaluator.graph import collapse_repeats, record_architecture

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

# The GPT example rewritten: one file instead of four, every class, attribute, variable and
# parameter renamed, different formatting and sizing code. Same computation.
RENAMED_GPT = """
import torch, torch.nn as tnn
import torch.nn.functional as fn
from prism_challenge.evaluator.interface import TrainingRecipe

def _fit(v, t, layers, budget):
    def count(w): return v*w + t*w + layers*(12*w*w + 4*w) + 2*w
    def head(w): return 64 if w >= 768 else (32 if w >= 256 else 16)
    w = int(((v+t+4*layers+2)**2 + 48*layers*budget) ** 0.5 - (v+t+4*layers+2)) // (24*layers)
    while w > 0:
        w -= w % head(w)
        if w > 0 and count(w) <= budget: return w, head(w)
        w -= 1
    return 0, 16

class Mixer(tnn.Module):
    def __init__(me, width, heads):
        super().__init__(); me.h = heads
        me.to_qkv = tnn.Linear(width, 3*width, bias=False); me.proj = tnn.Linear(width, width, bias=False)
    def forward(me, h):
        b, n, w = h.shape
        a, bb, c = me.to_qkv(h).view(b, n, 3, me.h, w // me.h).permute(2, 0, 3, 1, 4)
        return me.proj(fn.scaled_dot_product_attention(a, bb, c, is_causal=True).transpose(1, 2).reshape(b, n, w))

class Layer(tnn.Module):
    def __init__(me, width, heads):
        super().__init__()
        me.n1 = tnn.LayerNorm(width); me.att = Mixer(width, heads)
        me.n2 = tnn.LayerNorm(width)
        me.fc_in = tnn.Linear(width, 4*width, bias=False); me.fc_out = tnn.Linear(4*width, width, bias=False)
    def forward(me, h):
        NORM_ORDER
        return h

class Net(tnn.Module):
    def __init__(me, vocab, ctxlen, depth, width, heads):
        super().__init__()
        me.tok = tnn.Embedding(vocab, width); me.pos = tnn.Embedding(ctxlen, width)
        me.stack = tnn.ModuleList([Layer(width, heads) for _ in range(depth)]); me.fin = tnn.LayerNorm(width)
    def forward(me, ids):
        h = me.tok(ids) + me.pos(torch.arange(ids.shape[1], device=ids.device))
        for layer in me.stack: h = layer(h)
        return me.fin(h) @ me.tok.weight.t()

def build_model(ctx):
    best = None
    for depth in range(1, min(ctx.max_layers, 48) + 1):
        w, hs = _fit(ctx.vocab_size, ctx.sequence_length, depth, ctx.max_parameters)
        if w == 0: break
        if best is None or w >= 32*depth: best = (depth, w, w // hs)
    return Net(ctx.vocab_size, ctx.sequence_length, best[0], best[1], best[2])

def get_recipe(ctx): return TrainingRecipe()
"""
PRE_NORM = "h = h + me.att(me.n1(h)); h = h + me.fc_out(fn.ACT(me.fc_in(me.n2(h))))"
POST_NORM = "h = me.n1(h + me.att(h)); h = me.n2(h + me.fc_out(fn.ACT(me.fc_in(h))))"


def gpt_variant(write_submission, *, act: str = "gelu", norm: str = PRE_NORM, name: str = "variant") -> Path:
    source = RENAMED_GPT.replace("NORM_ORDER", norm.replace("ACT", act))
    return write_submission({"net.py": source}, name=name)


def graph_of(load_project, contexts, root: Path, entry: str, **ctx_overrides):
    module = load_project(root, entry)
    ctx = contexts.canonical(**ctx_overrides)
    torch.manual_seed(0)
    return record_architecture(module.build_model(ctx), ctx)


# --------------------------------------------------------------------------------------------
# Depth normalization


def test_collapse_folds_every_depth_of_a_layer_stack_to_one_layer():
    embed, head = ["embedding", "add"], ["layer_norm", "mm"]
    block = ["layer_norm", "mm", "add", "sdpa", "mm", "add", "add", "layer_norm", "mm", "gelu", "mm", "add"]
    expected = collapse_repeats(embed + block + head)
    for depth in range(2, 7):
        assert collapse_repeats(embed + block * depth + head) == expected
    assert expected != collapse_repeats(embed + head)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from("abcd"), max_size=40))
def test_collapse_is_idempotent_and_leaves_no_adjacent_repeat(sequence):
    once = collapse_repeats(sequence)
    assert collapse_repeats(once) == once
    for period in range(1, len(once) // 2 + 1):
        for start in range(len(once) - 2 * period + 1):
            assert once[start : start + period] != once[start + period : start + 2 * period]


# --------------------------------------------------------------------------------------------
# Family: invariances


def test_family_ignores_renames_reformatting_and_file_layout(write_submission, load_project, contexts):
    original = graph_of(load_project, contexts, EXAMPLES / "gpt", "src/model.py")
    rewritten = graph_of(load_project, contexts, gpt_variant(write_submission), "net.py")
    assert [p.shape for p in rewritten.parameters] == [p.shape for p in original.parameters]
    assert rewritten.family_id == original.family_id
    # Version carries sizes but no identifiers, so an identical model under new names keeps it too.
    assert rewritten.version_id == original.version_id
    assert {m.cls for m in rewritten.modules} != {m.cls for m in original.modules}


@pytest.mark.parametrize("example", ["gpt", "mixer"])
def test_family_survives_width_and_depth_changes_but_version_does_not(example, load_project, contexts):
    root = EXAMPLES / example
    sizes = [
        {"max_parameters": 60_000, "max_layers": 1},
        {"max_parameters": 200_000, "max_layers": 4},
        {"max_parameters": 400_000, "max_layers": 6},
    ]
    graphs = [graph_of(load_project, contexts, root, "src/model.py", **size) for size in sizes]
    counts = [g.parameter_count for g in graphs]
    assert len(set(counts)) == 3, "the sizes must actually build different models"
    assert len({g.family_id for g in graphs}) == 1
    assert len({g.version_id for g in graphs}) == 3


# --------------------------------------------------------------------------------------------
# Family: differences


def test_different_topologies_get_different_families(write_submission, load_project, contexts):
    families = {
        "gpt": graph_of(load_project, contexts, EXAMPLES / "gpt", "src/model.py").family_id,
        "mixer": graph_of(load_project, contexts, EXAMPLES / "mixer", "src/model.py").family_id,
        "gpt-relu": graph_of(
            load_project, contexts, gpt_variant(write_submission, act="relu", name="relu"), "net.py"
        ).family_id,
        "gpt-post-norm": graph_of(
            load_project, contexts, gpt_variant(write_submission, norm=POST_NORM, name="post"), "net.py"
        ).family_id,
    }
    assert len(set(families.values())) == len(families), families
    assert all(f.startswith("fam-") and len(f) == 4 + 16 for f in families.values())


# --------------------------------------------------------------------------------------------
# The graph record itself


class _Bigram(torch.nn.Module):
    def __init__(self, vocab: int, width: int) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, width)
        self.head = torch.nn.Linear(width, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(tokens))


def test_graph_counts_flops_parameters_and_is_source_free_json(contexts):
    ctx = contexts.canonical()
    graph = record_architecture(_Bigram(ctx.vocab_size, 24), ctx)
    assert graph.parameter_count == 257 * 24 + 24 * 257 + 257
    assert graph.flops_per_token == 2 * 24 * 257  # one (T, 24) x (24, 257) matmul per token
    assert graph.forward_tokens == ctx.sequence_length
    assert graph.op_counts == {"embedding": 1, "mm": 1, "add": 1}
    assert graph.schema_version == "prism_architecture_graph.v2" and graph.canonical_ops == 3
    # addmm (a kernel choice) is spelled mm + add; each input is labelled by where it comes from.
    assert graph.family_ops == ["embedding(param,tok)", "mm(-1,param)", "add(-1,param)"]
    live = [op.op for op in graph.ops if op.computation]
    assert live == ["aten.embedding.default", "aten.addmm.default"]  # views are not computation
    assert [m.cls for m in graph.modules] == ["_Bigram", "Embedding", "Linear"]
    text = json.dumps(graph.model_dump(mode="json"))
    assert "def forward" not in text and "return self.head" not in text
    assert graph.canonical_context["sequence_length"] == 32


def test_graph_records_a_fresh_forward_deterministically(contexts):
    ctx = contexts.canonical()
    first = record_architecture(_Bigram(ctx.vocab_size, 24), ctx)
    second = record_architecture(_Bigram(ctx.vocab_size, 24), ctx)
    assert first.model_dump() == second.model_dump()


def test_forward_failure_is_a_typed_miner_fault(contexts):
    class Broken(torch.nn.Module):
        def forward(self, tokens):
            raise RuntimeError("no forward for you")

    with pytest.raises(MinerFault) as raised:
        record_architecture(Broken(), contexts.canonical())
    assert raised.value.code == "graph.forward_failed"


def test_runaway_forward_is_refused(contexts, monkeypatch):
    monkeypatch.setattr(graph_module, "MAX_RECORDED_OPS", 10)

    class Chatty(torch.nn.Module):
        def forward(self, tokens):
            x = tokens.float()
            for _ in range(20):
                x = x + 1
            return x

    with pytest.raises(MinerFault) as raised:
        record_architecture(Chatty(), contexts.canonical())
    assert raised.value.code == "graph.too_large"
