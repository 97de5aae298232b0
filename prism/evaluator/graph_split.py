"""Split projections that are only read in column blocks into one projection per block.

``qkv = x @ W`` read as ``q, k, v = qkv.split(C, -1)`` computes the same function as three
projections ``x @ Wq``, ``x @ Wk``, ``x @ Wv`` (column blocks of a matrix product are the
products with the column blocks of ``W``), and ``torch.cat([x @ Wq, x @ Wk, x @ Wv])`` read the
same way is already three projections once the selections look through the ``cat``
(``graph_canon.Builder.through_cat``). This pass rewrites the fused form into the separate one.

A node qualifies when every reader takes a full column block (all rows, a contiguous range of
the last axis), the blocks are disjoint, and there are at least two of them. ``mm`` splits its
right operand's columns; pointwise ops split every operand along the last axis (broadcast
operands of width 1 are shared), so a split travels up through ``gelu(up(x)).chunk(2)`` to the
projection. Nodes are visited from the output backwards, so readers split before producers.
"""

from __future__ import annotations

from itertools import pairwise

import torch

from prism.evaluator import graph_ops as ops
from prism.evaluator.graph_canon import CanonGraph, CNode, Edge, Out

SPLITTABLE = frozenset({"mm", "add", "sub", "mul", "div"}) | ops.UNARY_POINTWISE
Uses = dict[Out, list[tuple[CNode | None, Edge]]]


def split_projections(graph: CanonGraph) -> None:
    uses = graph.consumers()
    for node in reversed(list(graph.nodes)):
        if node.op not in SPLITTABLE or len(node.values) != 1 or node.values[0].dim() < 2:
            continue
        readers = uses.get(node.out(), [])
        blocks = _blocks(node, readers)
        if blocks is not None:
            _split(graph, node, readers, blocks, uses)


def _blocks(node: CNode, readers: list[tuple[CNode | None, Edge]]) -> list[tuple[int, int]] | None:
    value = node.values[0]
    width = value.shape[-1]
    rows = value.numel() // max(width, 1)
    found: set[tuple[int, int]] = set()
    for reader, edge in readers:
        if reader is None or edge.map is None or edge.map.numel() == 0:
            return None
        flat = edge.map.reshape(-1)
        columns = flat % width
        start, stop = int(columns.min()), int(columns.max()) + 1
        if stop - start == width or torch.unique(flat).numel() != rows * (stop - start):
            return None
        found.add((start, stop - start))
    blocks = sorted(found)
    if len(blocks) < 2:
        return None
    for (a, w), (b, _) in pairwise(blocks):
        if a + w > b:
            return None
    return blocks


def _restrict(edge: Edge, width: int, start: int, size: int, *, required: bool) -> Edge | None:
    """The edge limited to last-axis elements ``start:start+size`` (shared when broadcast)."""
    shape = edge.shape
    if not shape or shape[-1] == 1:
        return None if required else edge.copy()
    if shape[-1] != width:
        return None
    if edge.const is not None:
        return Edge(const=edge.const[..., start : start + size].contiguous())
    mapping = edge.map if edge.map is not None else torch.arange(edge.source_value().numel()).reshape(shape)
    return Edge(src=edge.src, map=mapping[..., start : start + size].contiguous(), scale=edge.scale)


def _piece_edges(node: CNode, start: int, size: int) -> list[Edge] | None:
    width = node.values[0].shape[-1]
    if node.op == "mm":
        if len(node.edges) != 2:
            return None
        right = _restrict(node.edges[1], width, start, size, required=True)
        return None if right is None else [node.edges[0].copy(), right]
    edges = []
    for edge in node.edges:
        piece = _restrict(edge, width, start, size, required=False)
        if piece is None:
            return None
        edges.append(piece)
    return edges


def _split(
    graph: CanonGraph,
    node: CNode,
    readers: list[tuple[CNode | None, Edge]],
    blocks: list[tuple[int, int]],
    uses: Uses,
) -> None:
    width = node.values[0].shape[-1]
    pieces: dict[tuple[int, int], CNode] = {}
    for start, size in blocks:
        edges = _piece_edges(node, start, size)
        if edges is None:
            return
        value = node.values[0][..., start : start + size].contiguous()
        pieces[(start, size)] = CNode(
            op=node.op,
            edges=edges,
            values=[value],
            args=dict(node.args),
            position=node.position,
            covers=node.covers,
        )
    for edge in node.edges:
        if edge.src is not None:
            uses[edge.src] = [(n, e) for n, e in uses.get(edge.src, []) if n is not node]
    for piece in pieces.values():
        graph.add(piece)
        for edge in piece.edges:
            if edge.src is not None:
                uses.setdefault(edge.src, []).append((piece, edge))
    for reader, edge in readers:
        flat = edge.map.reshape(-1)
        columns = flat % width
        start = int(columns.min())
        size = int(columns.max()) + 1 - start
        piece = pieces[(start, size)]
        edge.map = ((flat // width) * size + (columns - start)).reshape(edge.map.shape)
        edge.src = piece.out()
        uses.setdefault(piece.out(), []).append((reader, edge))
    uses.pop(node.out(), None)


__all__ = ["split_projections"]
