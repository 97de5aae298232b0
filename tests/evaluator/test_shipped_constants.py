"""Shipped constants: digests from a real recorded program, the commitment's checks, the verdict."""

from __future__ import annotations

import pytest
import torch

from prism.evaluator.feed import _committed_constants
from prism.evaluator.framing import ProtocolError
from prism.evaluator.graph_program import record_program
from prism.evaluator.shipped_constants import (
    CODE,
    MAX_COMMITTED,
    ShippedConstant,
    committed_digests,
    constant_digest,
    constants_fault,
    distinct_constants,
)


class Masked(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(16, 8)
        self.register_buffer("mask", torch.tril(torch.ones(6, 6)), persistent=False)
        self.features = torch.randn(8, 8)  # a plain attribute: shipped with the program

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.emb(tokens)
        mixed = (self.mask / self.mask.sum(-1, keepdim=True)) @ h
        return (mixed @ self.features) @ self.emb.weight.T


def _program(model: torch.nn.Module) -> dict:  # type: ignore[type-arg]
    return record_program(model, model, torch.arange(6).unsqueeze(0) % 16)


def test_a_recorded_programs_constants_are_digested_and_the_same_model_explains_them() -> None:
    torch.manual_seed(0)
    model = Masked()
    program = _program(model)
    found = distinct_constants(program)
    assert {c.shape for c in found} >= {(6, 6), (8, 8)}
    assert all(len(c.digest) == 64 for c in found)
    committed = frozenset(committed_digests(program))
    assert constants_fault(found, committed) is None
    # The digest is of dtype, shape and bytes: the same values under another shape differ.
    raw = model.features.numpy().tobytes()
    assert constant_digest("float32", [8, 8], raw) in committed
    assert constant_digest("float32", [64], raw) not in committed


def test_a_constant_made_after_the_commitment_is_refused() -> None:
    torch.manual_seed(0)
    model = Masked()
    committed = frozenset(committed_digests(_program(model)))
    with torch.no_grad():
        model.features = model.features + 1e-3  # e.g. copied from trained weights at load
    fault = constants_fault(distinct_constants(_program(model)), committed)
    assert fault is not None and fault.code == CODE and fault.fault == "miner"
    assert "float32[8, 8]" in fault.message and "64 values" in fault.message


def test_too_many_distinct_constants_are_refused_and_none_committed_explains_nothing() -> None:
    many = [
        ShippedConstant(node=i, dtype="float32", shape=(1,), digest=f"{i:064x}")
        for i in range(MAX_COMMITTED + 1)
    ]
    fault = constants_fault(many, frozenset(c.digest for c in many))
    assert fault is not None and "more than" in fault.message
    one = many[:1]
    assert constants_fault(one, frozenset()) is not None
    assert constants_fault([], frozenset()) is None


@pytest.mark.parametrize(
    "value",
    ["ab" * 32, ["zz" * 32], ["ab" * 31], ["ab" * 32] * (MAX_COMMITTED + 1), [1]],
    ids=["not-a-list", "not-hex", "short", "too-many", "not-a-string"],
)
def test_a_malformed_commitment_is_a_protocol_violation(value: object) -> None:
    with pytest.raises(ProtocolError):
        _committed_constants({"type": "recipe", "constants": value})


def test_a_commitment_is_optional_and_parsed() -> None:
    assert _committed_constants({"type": "recipe"}) is None
    assert _committed_constants({"type": "recipe", "constants": ["ab" * 32]}) == frozenset({"ab" * 32})


class Scaled(torch.nn.Module):
    """A pass that rebuilds a vector from Python floats (op arguments, not tensors)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(16, 4)
        self.values = [0.5, -1.0, 2.0, 0.25]

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        scale = torch.cat([torch.full((1,), v) for v in self.values])
        return (self.emb(tokens) * scale) @ self.emb.weight.T


def test_op_calls_are_committed_with_their_arguments_and_new_ones_are_refused() -> None:
    torch.manual_seed(0)
    model = Scaled()
    committed = frozenset(committed_digests(_program(model)))
    calls = [c for c in distinct_constants(_program(model)) if c.is_op]
    assert any("full" in c.dtype for c in calls)
    assert constants_fault(distinct_constants(_program(model)), committed) is None
    model.values = [0.5, -1.0, 2.0, 0.3]  # one value changed after the commitment (e.g. at load)
    fault = constants_fault(distinct_constants(_program(model)), committed)
    assert fault is not None and "op call" in fault.message and "aten.full" in fault.message
    # The same call on another tensor (new weights, same arguments) is the same commitment.
    with torch.no_grad():
        model.emb.weight.add_(1.0)
    model.values = [0.5, -1.0, 2.0, 0.25]
    assert constants_fault(distinct_constants(_program(model)), committed) is None
