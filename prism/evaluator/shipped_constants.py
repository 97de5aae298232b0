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
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from prism.errors import MinerFault

#: Most digests one commitment may hold (a program with more distinct constants is not a model).
MAX_COMMITTED = 1024
CODE = "identity.program_unexplained_constants"


@dataclass(frozen=True)
class ShippedConstant:
    """One ``const`` node of a program: where it is, what it is, and its digest."""

    node: int
    dtype: str
    shape: tuple[int, ...]
    digest: str  # "" when the node's data is malformed (never matches a commitment)

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


def program_constants(program: Any) -> list[ShippedConstant]:
    """Every ``const`` node of a program (the JSON object ``record_program`` returns)."""
    nodes = program.get("nodes") if isinstance(program, dict) else None
    if not isinstance(nodes, list):
        return []
    return [
        _constant(index, node)
        for index, node in enumerate(nodes)
        if isinstance(node, dict) and node.get("kind") == "const"
    ]


def committed_digests(program: Any) -> list[str]:
    """What the runner commits for the program it recorded: its constants' digests, deduplicated."""
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
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def constants_fault(found: Sequence[ShippedConstant], committed: frozenset[str]) -> MinerFault | None:
    """The miner fault for a held-out program reading constants made after the model was built
    (``found``: the program's distinct constants, as the program check's process listed them)."""
    if len(found) > MAX_COMMITTED:
        return MinerFault(
            f"the recorded inference pass reads more than {MAX_COMMITTED:,} distinct shipped constants",
            code=CODE,
        )
    unexplained = [c for c in found if c.digest not in committed]
    if not unexplained:
        return None
    values = sum(c.values for c in unexplained)
    first = ", ".join(f"{c.dtype}{list(c.shape)}" for c in unexplained[:3])
    return MinerFault(
        f"the recorded inference pass reads {len(unexplained)} shipped constant(s) ({values:,} values; first: "
        f"{first}) that the model built from its code and seed did not have before training: tensors made "
        "from trained weights or training data at load time must be in the weights file (counted and "
        "checked as weights), or computed inside forward",
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
