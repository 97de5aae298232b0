"""Canonical graph: the trace with everything that does not compute taken out.

``build_canonical(trace)`` walks the trace in execution order and gives every recorded value
one of two forms:

* a **constant** (``Edge(const=...)``): it depends on neither the input tokens nor a trained
  parameter (masks, ``arange``, buffers, frozen parameters, ``x * 0``, ``x - x``);
* a **derived value** (``Edge(src, map, scale)``): a selection of the elements of one canonical
  node's output (``map``, int64 indices into its flattened value; ``None`` = all of it, in
  order), times a scalar ``scale``. Views, copies, no-op casts and scalar multiplications are
  derived values, so they never become nodes.

Everything else is a canonical node (``CNode``). Two checks turn ops into derived values or
constants without a table of special cases, by **replaying the op on other inputs**: an op whose
only non-constant input is ``X`` is a constant when two random ``X`` give the recorded output,
and a selection of ``X`` when replaying it on ``X = 0, 1, 2, ...`` gives integer indices ``I``
and two random ``X`` give exactly ``X[I]`` (``x * 1``, ``x + 0``, ``x - 0``, ``cat`` of the
slices of one tensor, an embedding looked up at constant positions). Random values come from a
fixed-seed generator, so the result is the same on every machine.

Equivalent spellings of a mask (``where``, ``masked_fill``, a multiply by 0/1, an additive
0/-inf mask) and of attention (``is_causal`` vs a causal mask) get one canonical form here; the
rewrites that need a region of several nodes live in ``prism.evaluator.graph_fuse``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import torch

from prism.evaluator import graph_ops as ops
from prism.evaluator.graph_edges import (
    CanonGraph,
    CNode,
    Edge,
    Out,
    derived,
    index_tensor,
    materialize,
    random_like,
)
from prism.evaluator.graph_trace import Ref, Trace, TraceNode, replay

logger = logging.getLogger(__name__)

REPLAY_ERRORS = (RuntimeError, TypeError, ValueError, IndexError, NotImplementedError)
RANDOM_TRIALS = 2
SEED = 20240917


class Builder:
    """One pass over the trace in execution order."""

    def __init__(self, trace: Trace, compute: Callable[[Builder, TraceNode], list[Edge]]) -> None:
        self.trace = trace
        self.compute = compute
        self.nodes: list[CNode] = []
        self.values: dict[Ref, Edge] = {}
        self.generator = torch.Generator().manual_seed(SEED)
        self._refs: dict[Ref, Edge] | None = None

    def build(self, tnode: TraceNode) -> list[Edge]:
        """Build the node(s) of a computing op; edges made by ``edge`` are kept per ref."""
        self._refs = {}
        try:
            return self.compute(self, tnode)
        finally:
            self._refs = None

    def edge(self, ref: Ref) -> Edge:
        """A fresh edge for trace value ``ref``, shared by the node and its replay."""
        if self._refs is None:
            return self.values[ref].copy()
        if ref not in self._refs:
            self._refs[ref] = self.values[ref].copy()
        return self._refs[ref]

    # -- helpers ------------------------------------------------------------------------------

    def node(self, op: str, edges: list[Edge], values: list[torch.Tensor], **fields: Any) -> CNode:
        fields.setdefault("position", len(self.nodes))
        if fields.get("origin") is not None and self._refs is not None:
            fields.setdefault("ref_edges", dict(self._refs))
        created = CNode(op=op, edges=edges, values=values, **fields)
        self.nodes.append(created)
        return created

    def recorded(self, ref: Ref) -> torch.Tensor:
        return self.trace.nodes[ref.node].outputs[ref.out]

    def run(
        self, trace_node: TraceNode, substitute: Callable[[Ref], torch.Tensor | None]
    ) -> list[torch.Tensor]:
        def lookup(ref: Ref) -> torch.Tensor:
            value = substitute(ref)
            return value if value is not None else materialize(self.values[ref])

        return replay(trace_node, lookup)

    def run_with(self, trace_node: TraceNode, env: dict[Out, torch.Tensor]) -> list[torch.Tensor]:
        return self.run(trace_node, lambda ref: materialize(self.values[ref], env))

    # -- the pass -----------------------------------------------------------------------------

    def visit(self, tnode: TraceNode) -> None:
        if tnode.kind in ("tokens", "param"):
            op = "tokens" if tnode.kind == "tokens" else "param"
            created = self.node(op, [], tnode.outputs, param_index=tnode.param_index, covers=(tnode.index,))
            self.values[Ref(tnode.index, 0)] = Edge(src=created.out())
            return
        if tnode.kind == "const":
            self.values[Ref(tnode.index, 0)] = Edge(const=tnode.outputs[0])
            return
        inputs = [self.values[ref] for ref in tnode.inputs]
        if tnode.kind == "update":
            if all(e.is_const for e in inputs):
                self._set_const(tnode)
            else:
                created = self.node("update", inputs, tnode.outputs, covers=(tnode.index,))
                self.values[Ref(tnode.index, 0)] = Edge(src=created.out())
            return
        results = self._resolve(tnode)
        if results is None:
            results = self.build(tnode)
        for k, edge in enumerate(results):
            self.values[Ref(tnode.index, k)] = edge

    def _set_const(self, tnode: TraceNode) -> None:
        for k, value in enumerate(tnode.outputs):
            self.values[Ref(tnode.index, k)] = Edge(const=value)

    def _resolve(self, tnode: TraceNode) -> list[Edge] | None:
        """The outputs as constants or derived values, or None when the op computes."""
        func, name = tnode.func, ops.packet(tnode.func)
        if ops.is_random(func, tnode.args, tnode.kwargs):
            return None
        if name in ops.EMPTY_OPS:  # uninitialised memory: no value to record
            return [Edge(const=torch.zeros_like(v)) for v in tnode.outputs]
        relevant = tnode.inputs
        if name in ops.IGNORES_SELF_VALUES and tnode.args and isinstance(tnode.args[0], Ref):
            relevant = [r for r in tnode.inputs if r != tnode.args[0]]
        if all(self.values[r].is_const for r in relevant):
            return [Edge(const=v) for v in tnode.outputs]
        if getattr(func, "is_view", False) or name in ops.MULTI_SELECTIONS:
            return self._view(tnode)
        return self._pass_through(tnode, name) or self._scaled(tnode, name) or self._numeric(tnode)

    def _self_edge(self, tnode: TraceNode) -> Edge | None:
        first = tnode.args[0] if tnode.args else None
        return self.values[first] if isinstance(first, Ref) else None

    def _view(self, tnode: TraceNode) -> list[Edge] | None:
        """A view selects elements of its input: record which, by replaying it on indices."""
        base = self._self_edge(tnode)
        if base is None or len(tnode.inputs) != 1 or ops.packet(tnode.func) == "as_strided":
            return None
        shaped = materialize(base)
        indices = torch.arange(shaped.numel()).reshape(shaped.shape)
        try:
            locals_ = replay(tnode, lambda ref: indices)
        except REPLAY_ERRORS:
            return None
        if any(t.dtype != torch.int64 for t in locals_) or len(locals_) != len(tnode.outputs):
            return None
        return [self.through_cat(derived(base, local)) for local in locals_]

    def _pass_through(self, tnode: TraceNode, name: str) -> list[Edge] | None:
        base = self._self_edge(tnode)
        if base is None or len(tnode.outputs) != 1:
            return None
        out, before = tnode.outputs[0], materialize(base)
        if name in ops.RESHAPES and out.dtype == before.dtype and out.numel() == before.numel():
            return [derived(base, None, shape=tuple(out.shape))]
        if tuple(out.shape) != tuple(before.shape):
            return None
        if name in ops.IDENTITY_OPS and out.dtype == before.dtype:
            return [base]
        if ops.canonical_name(tnode.func) != "cast":
            return None
        if out.dtype == before.dtype:
            return [base]
        inner = base.src[0] if base.src is not None and base.map is None and base.scale == 1.0 else None
        if inner is not None and inner.op == "cast" and inner.edges:
            original = inner.edges[0]
            if materialize(original).dtype == out.dtype and _widens(out.dtype, before.dtype):
                return [original]  # x.double().float(): a round trip through a wider type
        return None

    def _scaled(self, tnode: TraceNode, name: str) -> list[Edge] | None:
        """``x * s``, ``x / s``, ``-x`` for a constant scalar ``s``: a scale on the edge."""
        if name not in ("mul", "div", "neg") or len(tnode.outputs) != 1:
            return None
        operands = [self._operand(a) for a in tnode.args[:2]]
        live = [(i, e) for i, e in enumerate(operands) if isinstance(e, Edge) and not e.is_const]
        if len(live) != 1:
            return None
        position, edge = live[0]
        if name == "neg":
            factor = -1.0
        else:
            other = operands[1 - position] if len(operands) == 2 else None
            factor = _scalar(other)
            if factor is None or (name == "div" and (position != 0 or tnode.kwargs.get("rounding_mode"))):
                return None
            factor = 1.0 / factor if name == "div" and factor != 0 else factor
        out, before = tnode.outputs[0], materialize(edge)
        if not out.is_floating_point() or out.dtype != before.dtype or out.shape != before.shape:
            return None
        if factor == 0.0:
            return [Edge(const=out)]
        if not math.isfinite(factor):
            return None
        return [derived(edge, None, factor)]

    def _operand(self, value: Any) -> Edge | float | None:
        if isinstance(value, Ref):
            return self.values[value]
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        return None

    def _numeric(self, tnode: TraceNode) -> list[Edge] | None:
        """Constant or selection of its single non-constant input, by replay (module doc)."""
        live = [self.values[r] for r in tnode.inputs if not self.values[r].is_const]
        sources = {(id(e.src[0]), e.src[1]) for e in live if e.src is not None}
        if len(sources) != 1 or len(tnode.outputs) != 1:
            return None
        source = live[0].src
        assert source is not None
        source_value, out = live[0].source_value(), tnode.outputs[0]
        try:
            if self._is_constant(tnode, source, source_value, out):
                return [Edge(const=out)]
            mapping = self._selection(tnode, source, source_value, out, live)
        except REPLAY_ERRORS:
            return None
        if mapping is None:
            return None
        return [self.through_cat(derived(Edge(src=source), mapping))]

    def _is_constant(self, tnode: TraceNode, source: Out, value: torch.Tensor, out: torch.Tensor) -> bool:
        for _ in range(RANDOM_TRIALS):
            trial = self.run_with(tnode, {source: random_like(value, self.generator)})
            if len(trial) != 1 or trial[0].shape != out.shape or not torch.equal(trial[0], out):
                return False
        return True

    def _selection(
        self, tnode: TraceNode, source: Out, value: torch.Tensor, out: torch.Tensor, live: list[Edge]
    ) -> torch.Tensor | None:
        if out.dtype != value.dtype or value.dtype == torch.bool or any(e.scale != 1.0 for e in live):
            return None
        probe = self.run_with(tnode, {source: index_tensor(value)})[0]
        exact = probe.dtype in (torch.float64, torch.int64) or (
            probe.dtype == torch.float32 and value.numel() < 2**24
        )
        if probe.shape != out.shape or not exact:
            return None
        if probe.numel() and (
            not bool((probe == probe.round()).all()) or probe.min() < 0 or probe.max() >= value.numel()
        ):
            return None
        mapping = probe.to(torch.int64)
        for _ in range(RANDOM_TRIALS):
            sample = random_like(value, self.generator)
            trial = self.run_with(tnode, {source: sample})[0]
            if not torch.equal(trial, sample.reshape(-1)[mapping]):
                return None
        return mapping

    def through_cat(self, edge: Edge) -> Edge:
        """A selection that reads only one input of a ``cat``/``stack`` reads that input."""
        while edge.src is not None and edge.map is not None and edge.src[0].op in ("cat", "stack"):
            node = edge.src[0]
            if node.origin is None:
                return edge
            tnode = self.trace.nodes[node.origin]
            offsets: dict[Ref, int] = {}
            total = 0
            for ref in dict.fromkeys(tnode.inputs):
                offsets[ref] = total
                total += materialize(self.values[ref]).numel()

            def indexed(ref: Ref, offsets: dict[Ref, int] = offsets) -> torch.Tensor:
                shaped = materialize(self.values[ref])
                return torch.arange(shaped.numel()).reshape(shaped.shape) + offsets[ref]

            try:
                combined = replay(tnode, indexed)[0]
            except REPLAY_ERRORS:
                return edge
            picked = combined.reshape(-1)[edge.map]
            owner = _owner(picked, offsets, self.values)
            if owner is None:
                return edge
            inner = derived(self.values[owner], picked - offsets[owner], edge.scale)
            if inner.const is not None:
                return inner
            edge = inner
        return edge


def _owner(picked: torch.Tensor, offsets: dict[Ref, int], values: dict[Ref, Edge]) -> Ref | None:
    if picked.numel() == 0:
        return None
    low, high = int(picked.min()), int(picked.max())
    for ref, start in offsets.items():
        end = start + materialize(values[ref]).numel()
        if start <= low and high < end:
            return ref
    return None


def _scalar(value: Edge | float | None) -> float | None:
    if isinstance(value, float):
        return value
    if isinstance(value, Edge) and value.const is not None and value.const.numel() == 1:
        if value.const.is_complex():
            return None
        return float(value.const.reshape(-1)[0])
    return None


_WIDTH = {torch.float16: 1, torch.bfloat16: 1, torch.float32: 2, torch.float64: 3}


def _widens(narrow: torch.dtype, wide: torch.dtype) -> bool:
    return narrow in _WIDTH and wide in _WIDTH and _WIDTH[wide] > _WIDTH[narrow]


def resolve_trace(trace: Trace, compute: Callable[[Builder, TraceNode], list[Edge]]) -> CanonGraph:
    """Resolve every recorded value; ``compute`` builds the node(s) of an op that computes."""
    builder = Builder(trace, compute)
    for tnode in trace.nodes:
        builder.visit(tnode)
    outputs = [builder.values[ref].copy() for ref in trace.outputs]

    def replay_origin(node: CNode, env: dict[Out, torch.Tensor]) -> list[torch.Tensor]:
        assert node.origin is not None

        def lookup(ref: Ref) -> torch.Tensor:
            edge = node.ref_edges.get(ref)
            return materialize(edge if edge is not None else builder.values[ref], env)

        return replay(trace.nodes[node.origin], lookup)

    return CanonGraph(
        nodes=builder.nodes, outputs=outputs, generator=builder.generator, replay_origin=replay_origin
    )


__all__ = [
    "REPLAY_ERRORS",
    "Builder",
    "CNode",
    "CanonGraph",
    "Edge",
    "Out",
    "derived",
    "index_tensor",
    "materialize",
    "random_like",
    "resolve_trace",
]
