"""Serialise a canonical graph: a canonical order, the family tokens and the version payload.

**Order.** Nodes are listed in depth-first post-order from the model's output: a node comes
right after the inputs it needs, visited in argument order. Only what the output depends on is
ever reached (dead code drops out), and the order follows the dataflow, not the order in which
the source code happens to compute independent values. Operands of commutative ops (``add``,
``mul``, ``maximum``, ...) are sorted by their labels first, so ``x + f(x)`` and ``f(x) + x``
agree.

**Family tokens.** One token per node, ``op(label, ...)``, where each input's label is the op of
the node producing it (``#k`` for its k-th output), ``tok`` for the input tokens, ``param`` for
a parameter or ``const`` for a constant. No sizes, no argument values, no parameter identities.

**Version payload.** The same nodes with everything the function depends on: exact input
references, each input's element selection (a digest of its index map) and scale, the version
arguments, output shapes and dtypes, constants' fingerprints, and every parameter's shape and
dtype in registration order.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass
from typing import Any

import torch

from prism.evaluator import graph_ops as ops
from prism.evaluator.graph_edges import CanonGraph, CNode, Edge, is_flat_identity

SOURCE_OPS = frozenset({"tokens", "param"})
#: Ops taking a list of tensors: their labels must not depend on how many there are.
VARIADIC_OPS = frozenset({"cat", "stack", "concat", "concatenate"})


@dataclass
class Emitted:
    order: list[CNode]
    tokens: list[str]
    version: dict[str, Any]
    op_counts: dict[str, int]
    #: Indices (registration order) of the parameters the output depends on, first use first.
    parameters_used: list[int]


def _key(edge: Edge) -> tuple[int, int]:
    assert edge.src is not None
    return (id(edge.src[0]), edge.src[1])


def reachable(graph: CanonGraph) -> list[CNode]:
    seen: dict[int, CNode] = {}
    stack = [e.src[0] for e in graph.outputs if e.src is not None]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen[id(node)] = node
        stack.extend(e.src[0] for e in node.edges if e.src is not None)
    return list(seen.values())


def consumer_counts(graph: CanonGraph) -> dict[tuple[int, int], int]:
    """How many distinct live nodes (or model outputs) read each node output."""
    readers: dict[tuple[int, int], set[int]] = {}
    for node in reachable(graph):
        for edge in node.edges:
            if edge.src is not None:
                readers.setdefault(_key(edge), set()).add(id(node))
    for i, edge in enumerate(graph.outputs):
        if edge.src is not None:
            readers.setdefault(_key(edge), set()).add(-1 - i)
    return {key: len(value) for key, value in readers.items()}


class _Orderer:
    def __init__(self, graph: CanonGraph) -> None:
        self.graph = graph
        self.counts = consumer_counts(graph)

    def shared(self, edge: Edge) -> bool:
        return edge.src is not None and self.counts.get(_key(edge), 0) > 1

    def sort_key(self, edge: Edge) -> tuple[Any, ...]:
        """Position-free: shared values (a residual stream) first, then by producer op."""
        if edge.src is None:
            return (2, "const", ())
        node = edge.src[0]
        if node.op in SOURCE_OPS:
            return (2, node.op, ())
        below = tuple(sorted(e.src[0].op if e.src is not None else "const" for e in node.edges))
        return (0 if self.shared(edge) else 1, node.op, edge.src[1], below)

    def edges(self, node: CNode) -> list[Edge]:
        commutative = node.op in ops.COMMUTATIVE and node.args.get("alpha", 1) in (1, "1")
        return sorted(node.edges, key=self.sort_key) if commutative else list(node.edges)

    def post_order(self) -> list[CNode]:
        done: set[int] = set()
        order: list[CNode] = []
        for root in self.graph.outputs:
            if root.src is None or id(root.src[0]) in done:
                continue
            stack: list[tuple[CNode, list[Edge], int]] = [(root.src[0], self.edges(root.src[0]), 0)]
            while stack:
                node, edges, i = stack[-1]
                if i < len(edges):
                    stack[-1] = (node, edges, i + 1)
                    src = edges[i].src
                    if src is not None and id(src[0]) not in done:
                        stack.append((src[0], self.edges(src[0]), 0))
                    continue
                stack.pop()
                if id(node) not in done:
                    done.add(id(node))
                    order.append(node)
        return order

    def tokens(self, order: list[CNode]) -> list[str]:
        position = {id(node): i for i, node in enumerate(order)}
        return [self._token(node, position) for node in order]

    def _token(self, node: CNode, position: dict[int, int]) -> str:
        if node.op in VARIADIC_OPS:
            names = [self._name(e) for e in node.edges]
            labels = [n for i, n in enumerate(names) if i == 0 or names[i - 1] != n]
        else:
            labels = [self._label(e, position[id(node)], position) for e in self.edges(node)]
        return f"{node.op}({','.join(labels)})"

    def _name(self, edge: Edge) -> str:
        if edge.src is None:
            return "const"
        return {"tokens": "tok", "param": "param"}.get(edge.src[0].op, edge.src[0].op)

    def _label(self, edge: Edge, here: int, position: dict[int, int]) -> str:
        """``tok``/``param``/``const``; ``*`` for a shared value; else how far back it was made."""
        if edge.src is None or edge.src[0].op in SOURCE_OPS:
            return self._name(edge)
        suffix = f"#{edge.src[1]}" if edge.src[1] else ""
        if self.shared(edge):
            return "*" + suffix
        return f"-{here - position[id(edge.src[0])]}{suffix}"


def _digest(values: torch.Tensor) -> str:
    return hashlib.sha256(values.contiguous().numpy().tobytes()).hexdigest()[:16]


def _shape(shape: tuple[int, ...] | torch.Size) -> list[int]:
    """Shapes with leading size-1 axes dropped (batch 1 at the canonical context)."""
    dims = [int(s) for s in shape]
    while len(dims) > 1 and dims[0] == 1:
        dims.pop(0)
    return dims


def _constant(node: CNode, edge: Edge) -> str:
    assert edge.const is not None
    value = edge.const
    if node.op in ops.POINTWISE and node.values:
        try:
            value = torch.broadcast_to(value, node.values[0].shape)
        except RuntimeError:
            pass
    return ops.constant_fingerprint(value)


def _edge_entry(node: CNode | None, edge: Edge, index: dict[int, int], params: dict[int, int]) -> list[Any]:
    if edge.src is None:
        return ["c", _constant(node, edge) if node is not None else ops.constant_fingerprint(edge.const)]
    src, k = edge.src
    if src.op == "tokens":
        ref: list[Any] = ["tok"]
    elif src.op == "param":
        assert src.param_index is not None
        ref = ["p", params.setdefault(src.param_index, len(params))]
    else:
        ref = ["n", index[id(src)], k]
    flat = None if edge.map is None else edge.map.reshape(-1).to(torch.int64)
    same = flat is None or is_flat_identity(flat, src.values[k].numel())
    selection = "all" if same else f"{flat.numel()}:{_digest(flat)}"
    return [*ref, selection, ops.float_text(edge.scale)]


def emit(graph: CanonGraph, parameters: list[tuple[list[int], str]]) -> Emitted:
    """``parameters``: (shape, dtype) of every parameter in registration order.

    The version lists only the parameters the output depends on, numbered by first use in the
    canonical order: unused parameters and the order ``__init__`` creates them in do not count.
    """
    orderer = _Orderer(graph)
    order = [n for n in orderer.post_order() if n.op not in SOURCE_OPS]
    index = {id(node): i for i, node in enumerate(order)}
    used: dict[int, int] = {}
    nodes = []
    for node in order:
        # Outputs nobody reads (the mean and rstd of native_layer_norm, sdpa's logsumexp) are
        # left out, so fused kernels and their hand-written forms agree.
        read = [k for k in range(len(node.values)) if k == 0 or orderer.counts.get((id(node), k))]
        nodes.append(
            [
                node.op,
                node.args,
                [_edge_entry(node, e, index, used) for e in orderer.edges(node)],
                [_shape(node.values[k].shape) for k in read],
                [str(node.values[k].dtype).removeprefix("torch.") for k in read],
            ]
        )
    outputs = [_edge_entry(None, e, index, used) for e in graph.outputs]
    by_use = sorted(used, key=used.__getitem__)
    version = {
        "nodes": nodes,
        "outputs": outputs,
        "parameters": [[list(parameters[i][0]), str(parameters[i][1])] for i in by_use],
    }
    counts = dict(sorted(Counter(n.op for n in order).items()))
    return Emitted(
        order=order, tokens=orderer.tokens(order), version=version, op_counts=counts, parameters_used=by_use
    )


__all__ = ["Emitted", "consumer_counts", "emit", "reachable"]
