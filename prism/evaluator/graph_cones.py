"""Identities and constants that take several ops: found by replaying a small region whole.

``graph_canon`` tests single ops. Some no-ops take several: ``relu(x) - relu(-x)``,
``x.abs() * x.sign()``, ``torch.where(x > 0, x, x)``. Each node with two or more inputs is
walked back, always expanding its latest input, until every input of the region comes from one
value ``X`` (the region's single source) or the region passes ``CONE_LIMIT`` nodes. A
parameter, the tokens or a node that cannot be replayed stops the walk, so only parameter-free
regions qualify. The region is then replayed exactly like a single op: two random ``X`` that
reproduce the recorded output make it a constant; indices ``I`` from ``X = 0, 1, 2, ...`` that
two random ``X`` confirm as ``X[I]`` make it a selection of ``X``. Every reader of the node then
reads the constant or the selection instead, and the region falls away as dead code.
"""

from __future__ import annotations

import torch

from prism.evaluator.graph_canon import RANDOM_TRIALS, REPLAY_ERRORS
from prism.evaluator.graph_edges import CanonGraph, CNode, Edge, Out, derived, index_tensor, random_like

#: Largest region (in canonical nodes) replayed as one.
CONE_LIMIT = 8


def fold_identities(graph: CanonGraph) -> None:
    for node in list(graph.nodes):
        sources = {(id(e.src[0]), e.src[1]) for e in node.edges if e.src is not None}
        if len(sources) < 2 or len(node.values) != 1:
            continue
        found = _single_source_region(node)
        if found is None:
            continue
        region, source = found
        try:
            result = _constant_or_selection(graph, region, source, node)
        except REPLAY_ERRORS:
            continue
        if result is not None:
            _reroute(graph, node, result)


def _replayable(node: CNode) -> bool:
    return (
        node.op not in ("param", "tokens")
        and bool(node.values)
        and (node.fn is not None or node.origin is not None)
    )


def _single_source_region(top: CNode) -> tuple[list[CNode], Out] | None:
    region, members = [top], {id(top)}
    while True:
        outside = {}
        for node in region:
            for edge in node.edges:
                if edge.src is not None and id(edge.src[0]) not in members:
                    outside[(id(edge.src[0]), edge.src[1])] = edge.src
        if len(outside) == 1:
            return sorted(region, key=lambda n: n.position), next(iter(outside.values()))
        candidates = [src[0] for src in outside.values()]
        if len(region) >= CONE_LIMIT or not all(_replayable(n) for n in candidates):
            return None
        latest = max(candidates, key=lambda n: n.position)
        region.append(latest)
        members.add(id(latest))


def _constant_or_selection(graph: CanonGraph, region: list[CNode], source: Out, top: CNode) -> Edge | None:
    value, out = source[0].values[source[1]], top.values[0]

    def run(x: torch.Tensor) -> torch.Tensor:
        return graph.run(region, {source: x})[top.out()]

    trials = [random_like(value, graph.generator) for _ in range(RANDOM_TRIALS)]
    if all(torch.equal(run(x), out) for x in trials):
        return Edge(const=out)
    if out.dtype != value.dtype or value.dtype == torch.bool:
        return None
    probe = run(index_tensor(value))
    if probe.shape != out.shape or probe.dtype not in (torch.float64, torch.int64) or probe.numel() == 0:
        return None
    if not bool((probe == probe.round()).all()) or probe.min() < 0 or probe.max() >= value.numel():
        return None
    mapping = probe.to(torch.int64)
    for x in trials:
        if not torch.equal(run(x), x.reshape(-1)[mapping]):
            return None
    return derived(Edge(src=source), mapping)


def _reroute(graph: CanonGraph, node: CNode, value: Edge) -> None:
    for edge in graph.edges():
        if edge.src is None or edge.src[0] is not node:
            continue
        replacement = derived(value, edge.map, edge.scale, shape=edge.reshape)
        edge.src, edge.map, edge.scale = replacement.src, replacement.map, replacement.scale
        edge.const, edge.reshape = replacement.const, replacement.reshape


__all__ = ["CONE_LIMIT", "fold_identities"]
