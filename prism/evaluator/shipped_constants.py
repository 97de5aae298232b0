"""Shipped constants: a program's tensors that are not in the weights file must predate training.

A recorded inference pass (``prism.evaluator.graph_program``) reads two kinds of tensors: those
of the trained weights file, counted against the parameter budget and treated as trained state
by the program check, and *shipped constants* (plain attributes, non-persistent buffers,
literals), which are neither. That is sound only for constants the code makes from the seed: a
causal mask, random features, a table. A constant made at load time from the trained weights
(a copy of a branch the public batches fold away) or from training data kept in the file (a
second model fitted on a tape of the batches) is trained state in disguise, uncounted and
invisible to the hidden-branch rule (docs/security.md, classes 8 and 9).

So the training runner records the same pass on the freshly built model, before the host has
sent it a batch, and commits the digests of the constants it reads (the feed's ``recipe``
frame). What it commits can only be made from the code and the seed: it has no data and no
trained weight yet. The program check's process, which parses the main process's program where
no submission code runs, lists its distinct constants; one whose digest was not committed is
refused (``identity.program_unexplained_constants``, miner). This module is pure (no torch): the
runner and that process digest a program's JSON the same way.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from prism.errors import MinerFault

#: Most digests one commitment may hold (a program with more distinct constants and op calls is
#: not a model: a transformer's pass has a few hundred distinct op calls).
MAX_COMMITTED = 2048
#: What stands for a tensor argument in an op call's digest: only the call's other arguments count.
_TENSOR = "<tensor>"
CODE = "identity.program_unexplained_constants"


@dataclass(frozen=True)
class ShippedConstant:
    """One ``const`` node of a program (``dtype``, ``shape``), or one op call with its non-tensor
    arguments (``dtype`` is ``"op <name>"``, no shape): where it is, what it is, its digest."""

    node: int
    dtype: str
    shape: tuple[int, ...]
    digest: str  # "" when the node's data is malformed (never matches a commitment)

    @property
    def is_op(self) -> bool:
        return self.dtype.startswith("op ")

    @property
    def values(self) -> int:
        count = 1
        for n in self.shape:
            count *= n
        return count


def constant_digest(dtype: str, shape: Iterable[int], raw: bytes) -> str:
    """sha256 of a tensor's dtype, shape and bytes (little-endian, C order)."""
    digest = hashlib.sha256(f"{dtype}|{','.join(str(int(n)) for n in shape)}|".encode("ascii"))
    digest.update(raw)
    return digest.hexdigest()


def _constant(index: int, node: dict[str, Any]) -> ShippedConstant:
    dtype, shape, data = node.get("dtype"), node.get("shape"), node.get("data")
    if not isinstance(shape, list) or not all(type(n) is int and n >= 0 for n in shape):
        return ShippedConstant(index, str(dtype), (), "")
    try:
        raw = base64.b64decode(data, validate=True) if isinstance(data, str) else None
    except (binascii.Error, ValueError):
        raw = None
    digest = constant_digest(str(dtype), shape, raw) if raw is not None and isinstance(dtype, str) else ""
    return ShippedConstant(index, str(dtype), tuple(shape), digest)


def _abstract(value: Any) -> Any:
    """An op argument with every tensor reference replaced by a placeholder."""
    if isinstance(value, dict):
        return _TENSOR if "ref" in value else {str(k): _abstract(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_abstract(v) for v in value]
    return value


def _op_call(index: int, node: dict[str, Any]) -> ShippedConstant:
    """An op call's digest over its name and non-tensor arguments (floats, ints, shapes, dtypes):
    values a program can carry outside its tensors, so they must predate training too."""
    call = [node.get("op"), _abstract(node.get("args")), _abstract(node.get("kwargs"))]
    text = json.dumps(call, sort_keys=True, separators=(",", ":"), default=str)
    return ShippedConstant(
        index, f"op {str(node.get('op'))[:80]}", (), hashlib.sha256(text.encode()).hexdigest()
    )


def program_constants(program: Any) -> list[ShippedConstant]:
    """Every ``const`` node of a program (the JSON object ``record_program`` returns) and every
    op call with its non-tensor arguments."""
    nodes = program.get("nodes") if isinstance(program, dict) else None
    if not isinstance(nodes, list):
        return []
    found = []
    for index, node in enumerate(nodes):
        kind = node.get("kind") if isinstance(node, dict) else None
        if kind == "const":
            found.append(_constant(index, node))
        elif kind == "op":
            found.append(_op_call(index, node))
    return found


def committed_digests(program: Any) -> list[str]:
    """What the runner commits for the program it recorded: its constants' and op calls' digests,
    deduplicated."""
    return sorted({c.digest for c in program_constants(program) if c.digest})[:MAX_COMMITTED]


def distinct_constants(program: Any) -> list[ShippedConstant]:
    """The program's constants, one per digest, in program order; at most ``MAX_COMMITTED + 1``
    (one more than any commitment holds: the program has too many)."""
    seen: dict[str, ShippedConstant] = {}
    for constant in program_constants(program):
        seen.setdefault(constant.digest, constant)
        if len(seen) > MAX_COMMITTED:
            break
    return list(seen.values())


def is_digest(value: Any) -> bool:
    """A lowercase hex sha256 digest (the form every commitment and params hash takes)."""
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def constants_fault(found: Sequence[ShippedConstant], committed: frozenset[str]) -> MinerFault | None:
    """The miner fault for a held-out program reading constants made after the model was built
    (``found``: the program's distinct constants, as the program check's process listed them)."""
    if len(found) > MAX_COMMITTED:
        return MinerFault(
            f"the recorded inference pass reads more than {MAX_COMMITTED:,} distinct shipped constants and op calls",
            code=CODE,
        )
    constants = [c for c in found if c.digest not in committed and not c.is_op]
    calls = [c for c in found if c.digest not in committed and c.is_op]
    if not constants and not calls:
        return None
    parts = []
    if constants:
        first = ", ".join(f"{c.dtype}{list(c.shape)}" for c in constants[:3])
        parts.append(
            f"reads {len(constants)} shipped constant(s) ({sum(c.values for c in constants):,} values; first: {first})"
        )
    if calls:
        first = ", ".join(c.dtype.removeprefix("op ") for c in calls[:3])
        parts.append(f"makes {len(calls)} op call(s) with non-tensor arguments (first: {first})")
    return MinerFault(
        f"the recorded inference pass {' and '.join(parts)} that the model built from its code and seed did "
        "not have before training: values made from trained weights or training data at load time must stay "
        "in the weights file (counted and checked as weights) and be read by the pass as tensors",
        code=CODE,
    )


__all__ = [
    "CODE",
    "MAX_COMMITTED",
    "ShippedConstant",
    "committed_digests",
    "constant_digest",
    "constants_fault",
    "distinct_constants",
    "is_digest",
    "program_constants",
]
