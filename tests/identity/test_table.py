"""The identity table: no-op forks keep the leader's family, different designs do not.

The leader is examples/gpt. ``gpt_variants.Variant()`` computes the same thing with switches for
each change; every row records the changed model at the canonical context, as the held-out
process does, and compares ids.
"""

from __future__ import annotations

import pytest
from gpt_variants import build

from prism.identity import family_distance, nearest_family

# Every no-op change from the issue, plus a few more spellings of the same function.
NO_OPS: dict[str, dict] = {
    "x * 1.0 after the embeddings": {"noops": ("times_one",)},
    "x + 0 * x": {"noops": ("plus_zero_times",)},
    "x - 0": {"noops": ("minus_zero",)},
    "a computation whose result is discarded": {"noops": ("dead",)},
    "a residual scale fixed at 1": {"noops": ("residual_scale",)},
    "a residual scale fixed at 1, as a buffer": {"noops": ("residual_buffer",)},
    "clone() and contiguous()": {"noops": ("clone",)},
    "a round trip through float64": {"noops": ("double_float",)},
    "residual operands swapped": {"noops": ("swap_operands",)},
    "relu(x) - relu(-x)": {"noops": ("relu_difference",)},
    "x.abs() * x.sign()": {"noops": ("abs_times_sign",)},
    "torch.where(x > 0, x, x)": {"noops": ("where_either_way",)},
    "q/k/v as separate projections": {"qkv": "separate"},
    "q/k/v joined with torch.cat": {"qkv": "cat"},
    "q/k/v joined with torch.stack": {"qkv": "stack"},
    "sdpa(attn_mask=causal) instead of is_causal=True": {"attention": "sdpa_bool_mask"},
    "sdpa with a 0/-inf float causal mask": {"attention": "sdpa_float_mask"},
    "a hand-written LayerNorm": {"norm": "manual"},
    "a hand-written LayerNorm with var and rsqrt": {"norm": "manual_rsqrt"},
    "hand-written softmax attention": {"attention": "manual"},
    "the attention mask written as torch.where": {"attention": "manual_where"},
    "a hand-written softmax in attention": {"attention": "manual_softmax"},
    "all hand-written at once, 3 layers": {
        "attention": "manual_softmax",
        "norm": "manual",
        "qkv": "cat",
        "layers": 3,
    },
}
# Rows that also keep the version: the same parameters, the same function. (Separate q/k/v
# projections hold the same numbers in three matrices instead of one: a new version.)
NEW_PARAMETER_LAYOUT = {
    "q/k/v as separate projections",
    "q/k/v joined with torch.cat",
    "q/k/v joined with torch.stack",
}

DIFFERENT_DESIGNS: dict[str, dict] = {
    "RoPE instead of learned positions": {"positions": "rope"},
    "SwiGLU instead of a GELU MLP": {"mlp": "swiglu"},
    "post-norm instead of pre-norm": {"order": "post"},
    "linear instead of softmax attention": {"attention": "linear"},
}

NEW_VERSIONS: dict[str, dict] = {
    "sliding-window attention (8)": {"window": 8},
    "GELU with the tanh approximation": {"mlp": "gelu_tanh"},
    "LayerNorm eps 1e-6": {"eps": 1e-6},
}


@pytest.fixture(scope="module")
def baseline(record):
    return record(build())


def test_the_variant_model_is_the_leader(leader, baseline):
    assert baseline.family_id == leader.family_id
    assert baseline.parameter_count != leader.parameter_count  # other sizes: versions differ


@pytest.mark.parametrize("change", list(NO_OPS))
def test_no_op_change_keeps_the_leaders_family(change, record, leader, baseline):
    graph = record(build(**NO_OPS[change]))
    assert graph.family_id == leader.family_id, graph.family_ops
    if change not in NEW_PARAMETER_LAYOUT and "layers" not in NO_OPS[change]:
        assert graph.version_id == baseline.version_id


@pytest.mark.parametrize("design", list(DIFFERENT_DESIGNS))
def test_different_design_gets_a_different_family_and_is_no_near_duplicate(design, record, leader):
    graph = record(build(**DIFFERENT_DESIGNS[design]))
    assert graph.family_id != leader.family_id
    assert nearest_family(graph.family_ops, {leader.family_id: leader.family_ops}) is None


def test_different_designs_differ_from_each_other(record):
    graphs = {name: record(build(**changes)) for name, changes in DIFFERENT_DESIGNS.items()}
    families = {name: g.family_id for name, g in graphs.items()}
    assert len(set(families.values())) == len(families), families
    known = {g.family_id: g.family_ops for g in graphs.values()}
    for graph in graphs.values():
        others = {f: ops for f, ops in known.items() if f != graph.family_id}
        assert nearest_family(graph.family_ops, others) is None


def test_gpt_and_mixer_are_different_families(leader, mixer):
    assert mixer.family_id != leader.family_id
    assert nearest_family(mixer.family_ops, {leader.family_id: leader.family_ops}) is None
    assert family_distance(mixer.family_ops, leader.family_ops) > 2


@pytest.mark.parametrize("change", list(NEW_VERSIONS))
def test_function_changing_arguments_make_a_new_version_of_the_family(change, record, baseline):
    graph = record(build(**NEW_VERSIONS[change]))
    assert graph.family_id == baseline.family_id
    assert graph.version_id != baseline.version_id


def test_the_new_versions_are_all_distinct(record, baseline):
    versions = [record(build(**changes)).version_id for changes in NEW_VERSIONS.values()]
    assert len({*versions, baseline.version_id}) == len(versions) + 1


def test_the_mask_pattern_is_the_version_argument_however_it_is_written(record):
    fused = record(build(window=8))
    by_hand = record(build(window=8, attention="manual"))
    assert by_hand.family_id == fused.family_id and by_hand.version_id == fused.version_id


def test_a_single_changed_activation_is_a_near_duplicate(record, leader):
    relu = record(build(mlp="relu"))
    assert relu.family_id != leader.family_id  # a new family id ...
    assert nearest_family(relu.family_ops, {leader.family_id: leader.family_ops}) == leader.family_id


def test_a_mask_multiply_written_as_torch_where_keeps_the_mixer_family(patched_example, example_graph, mixer):
    root = patched_example(
        "mixer",
        "src/mixing.py",
        "weight = (self.weight * self.mask)[:time, :time]",
        "weight = torch.where(self.mask.bool(), self.weight, 0.0)[:time, :time]",
    )
    graph = example_graph(root)
    assert graph.family_id == mixer.family_id and graph.version_id == mixer.version_id


@pytest.mark.parametrize("sizes", [{"layers": 1}, {"layers": 4, "width": 96, "heads": 6}])
def test_hand_written_forms_keep_the_family_at_every_depth_and_width(sizes, record, leader):
    graph = record(build(attention="manual", norm="manual", qkv="cat", **sizes))
    assert graph.family_id == leader.family_id


def test_variant_recording_is_deterministic(record):
    first = record(build(attention="manual_softmax", norm="manual", qkv="stack"))
    second = record(build(attention="manual_softmax", norm="manual", qkv="stack"))
    assert first.model_dump() == second.model_dump()
