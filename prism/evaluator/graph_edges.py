"""The canonical graph's data: nodes, edges (constants or scaled selections) and helpers.

An ``Edge`` is a value flowing into a node: a constant (``const``), or a selection of the
elements of one node output (``map``: int64 indices into its flattened value, shaped like the
value the consumer reads; ``None`` = all of it, in order) times a scalar ``scale``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from prism.evaluator.graph_trace import Ref


@dataclass(eq=False)
class CNode:
    op: str
    edges: list[Edge]
    values: list[torch.Tensor]
    args: dict[str, Any] = field(default_factory=dict)
    origin: int | None = None  # trace node to replay, if the node is one recorded op
    fn: Callable[[list[torch.Tensor]], list[torch.Tensor]] | None = None  # replay otherwise
    param_index: int | None = None
    position: int = 0  # trace index where it was created (stable tie-breaks)
    covers: tuple[int, ...] = ()  # trace nodes it stands for
    ref_edges: dict[Ref, Edge] = field(default_factory=dict)  # the origin's inputs, rewired

    def out(self, k: int = 0) -> tuple[CNode, int]:
        return (self, k)


Out = tuple[CNode, int]


@dataclass(eq=False)
class Edge:
    """A value flowing into a node: a constant, or a selection of one node output, scaled."""

    src: Out | None = None
    map: torch.Tensor | None = None
    scale: float = 1.0
    const: torch.Tensor | None = None
    reshape: tuple[int, ...] | None = None  # with no map: all elements in order, this shape

    @property
    def is_const(self) -> bool:
        return self.src is None

    def source_value(self) -> torch.Tensor:
        assert self.src is not None
        return self.src[0].values[self.src[1]]

    @property
    def shape(self) -> tuple[int, ...]:
        if self.const is not None:
            return tuple(self.const.shape)
        if self.map is not None:
            return tuple(self.map.shape)
        return self.reshape if self.reshape is not None else tuple(self.source_value().shape)

    def copy(self) -> Edge:
        return Edge(src=self.src, map=self.map, scale=self.scale, const=self.const, reshape=self.reshape)


def materialize(edge: Edge, env: dict[Out, torch.Tensor] | None = None) -> torch.Tensor:
    """The tensor an edge carries, with node outputs taken from ``env`` where given."""
    if edge.const is not None:
        return edge.const
    assert edge.src is not None
    base = env.get(edge.src) if env else None
    if base is None:
        base = edge.source_value()
    if edge.map is not None:
        value = base.reshape(-1)[edge.map]
    else:
        value = base.reshape(edge.reshape) if edge.reshape is not None else base
    return value * edge.scale if edge.scale != 1.0 else value


def is_flat_identity(mapping: torch.Tensor, numel: int) -> bool:
    """The map takes every element once, in order (a reshape at most)."""
    flat = mapping.reshape(-1)
    return flat.numel() == numel and bool((flat == torch.arange(numel, dtype=flat.dtype)).all())


def derived(
    edge: Edge, local: torch.Tensor | None, scale: float = 1.0, shape: tuple[int, ...] | None = None
) -> Edge:
    """``edge`` followed by the selection ``local`` (indices into the edge's own value), or by
    a reshape to ``shape`` when ``local`` is None, times ``scale``."""
    if edge.const is not None:
        value = edge.const if local is None else edge.const.reshape(-1)[local]
        value = value.reshape(shape) if local is None and shape is not None else value
        return Edge(const=value * scale if scale != 1.0 else value)
    if local is None:
        if edge.map is not None:
            mapping = edge.map.reshape(shape) if shape is not None else edge.map
            return _compact(edge, mapping, None, scale)
        return _compact(edge, None, shape if shape is not None else edge.reshape, scale)
    mapping = local if edge.map is None else edge.map.reshape(-1)[local]
    return _compact(edge, mapping, None, scale)


def _compact(edge: Edge, mapping: torch.Tensor | None, shape: tuple[int, ...] | None, scale: float) -> Edge:
    """Maps that keep every element in order become a reshape; others are stored as int32."""
    source = edge.source_value()
    if mapping is not None and is_flat_identity(mapping, source.numel()):
        mapping, shape = None, tuple(mapping.shape)
    if mapping is not None and source.numel() < 2**31:
        mapping = mapping.to(torch.int32)
    if shape is not None and tuple(shape) == tuple(source.shape):
        shape = None
    return Edge(src=edge.src, map=mapping, reshape=shape, scale=edge.scale * scale)


@dataclass
class CanonGraph:
    nodes: list[CNode]
    outputs: list[Edge]
    generator: torch.Generator
    replay_origin: Callable[[CNode, dict[Out, torch.Tensor]], list[torch.Tensor]]

    def add(self, node: CNode) -> CNode:
        self.nodes.append(node)
        return node

    def replay(self, node: CNode, env: dict[Out, torch.Tensor]) -> list[torch.Tensor]:
        """``node``'s outputs with its inputs read from ``env`` (recorded values elsewhere)."""
        if node.fn is not None:
            return node.fn([materialize(e, env) for e in node.edges])
        if node.origin is None:
            raise NotImplementedError(f"{node.op} cannot be replayed")
        return self.replay_origin(node, env)

    def run(self, region: list[CNode], env: dict[Out, torch.Tensor]) -> dict[Out, torch.Tensor]:
        """Replay ``region`` (in order) on ``env``; returns ``env`` with the region's outputs."""
        for node in region:
            for k, value in enumerate(self.replay(node, env)):
                env[node.out(k)] = value
        return env

    def edges(self) -> list[Edge]:
        return [e for n in self.nodes for e in n.edges] + self.outputs

    def consumers(self) -> dict[Out, list[tuple[CNode | None, Edge]]]:
        uses: dict[Out, list[tuple[CNode | None, Edge]]] = {}
        for node in self.nodes:
            for edge in node.edges:
                if edge.src is not None:
                    uses.setdefault(edge.src, []).append((node, edge))
        for edge in self.outputs:
            if edge.src is not None:
                uses.setdefault(edge.src, []).append((None, edge))
        return uses

    def replace(self, old: Out, new: Out) -> None:
        """Every use of ``old`` reads ``new`` instead (same shape and meaning)."""
        for edge in self.edges():
            if edge.src is not None and edge.src[0] is old[0] and edge.src[1] == old[1]:
                edge.src = new


def random_like(value: torch.Tensor, generator: torch.Generator, std: float = 1.0) -> torch.Tensor:
    if value.is_floating_point():
        return torch.randn(value.shape, generator=generator, dtype=value.dtype) * std
    if value.dtype == torch.bool:
        return torch.randint(0, 2, value.shape, generator=generator).bool()
    high = max(int(value.max()) + 1, 2) if value.numel() else 2
    return torch.randint(0, high, value.shape, generator=generator, dtype=value.dtype)


def index_tensor(value: torch.Tensor) -> torch.Tensor:
    dtype = torch.float64 if value.is_floating_point() else torch.int64
    return torch.arange(value.numel(), dtype=dtype).reshape(value.shape)


__all__ = [
    "CNode",
    "CanonGraph",
    "Edge",
    "Out",
    "derived",
    "index_tensor",
    "is_flat_identity",
    "materialize",
    "random_like",
]
