"""Region rewrites: hand-written forms of fused ops, checked by replay before they apply.

Each rewrite finds a candidate region of canonical nodes by its shape, then **replays the
region on random inputs** (fixed-seed generator) and compares it with the fused op it would
become. Only a region that computes the fused op's function (to float tolerance) is rewritten;
its old nodes stay in the graph and fall away when nothing reads them any more.

* ``exp(z - max(z)) / sum(exp(...))`` and ``exp(z) / sum(exp(z))``  ->  ``softmax``;
* a hand-written LayerNorm (mean, variance, ``rsqrt`` or ``sqrt``/``div``, optional affine) ->
  ``layer_norm``; ``x * rsqrt(mean(x^2) + eps) * w`` (also ``nn.RMSNorm``) -> ``rms_norm``. The
  ``eps`` is the constant the region adds, confirmed with inputs small enough for it to matter;
* ``softmax(mask(q @ k^T * s)) @ v`` -> ``sdpa`` with the same mask pattern and scale arguments
  as the fused kernel (``prism.evaluator.graph_nodes``);
* a projection whose output is only ever read in column blocks (a fused ``qkv`` split into
  q, k and v; a fused up-projection chunked in two) -> one projection per block, the form
  separate ``nn.Linear`` layers take. Splitting follows the blocks up through pointwise ops.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from prism.evaluator import graph_ops as ops
from prism.evaluator.graph_canon import REPLAY_ERRORS
from prism.evaluator.graph_cones import fold_identities
from prism.evaluator.graph_edges import (
    CanonGraph,
    CNode,
    Edge,
    Out,
    is_flat_identity,
    materialize,
    random_like,
)
from prism.evaluator.graph_nodes import attention_arguments
from prism.evaluator.graph_split import split_projections

logger = logging.getLogger(__name__)

RTOL, ATOL = 1e-3, 1e-4
NORM_OPS = frozenset(
    {"mean", "var", "var_mean", "sub", "pow", "mul", "div", "add", "sqrt", "rsqrt", "reciprocal", "square"}
)
#: Fill values at or below this act as -inf before a softmax.
MASK_FILL_MAX = -1e4
REGION_WINDOW = 24


def fuse(graph: CanonGraph) -> None:
    fold_identities(graph)
    fuse_softmax(graph)
    fuse_norms(graph)
    fuse_attention(graph)
    split_projections(graph)


def _close(actual: torch.Tensor, expected: torch.Tensor) -> bool:
    if actual.shape != expected.shape:
        return False
    return bool(torch.allclose(actual.double(), expected.double(), rtol=RTOL, atol=ATOL))


def _src(edge: Edge) -> CNode | None:
    return edge.src[0] if edge.src is not None else None


def _same_source(a: Edge, b: Edge) -> bool:
    return a.src is not None and b.src is not None and a.src[0] is b.src[0] and a.src[1] == b.src[1]


def _randoms(graph: CanonGraph, edges: list[Edge], std: float = 1.0) -> dict[Out, torch.Tensor]:
    env: dict[Out, torch.Tensor] = {}
    for edge in edges:
        if edge.src is not None and edge.src not in env:
            env[edge.src] = random_like(edge.source_value(), graph.generator, std)
    return env


Reference = Callable[[dict[Out, torch.Tensor]], torch.Tensor]


def _checked(
    graph: CanonGraph,
    region: list[CNode],
    inputs: list[Edge],
    output: Out,
    reference: Reference,
    stds: tuple[float, ...] = (1.0,),
) -> bool:
    """Replay ``region`` on random ``inputs`` and compare ``output`` with ``reference(env)``."""
    try:
        for std in stds:
            for _ in range(2):
                env = graph.run(region, _randoms(graph, inputs, std))
                if not _close(env[output], reference(env)):
                    return False
    except REPLAY_ERRORS:
        return False
    return True


def _replace(
    graph: CanonGraph,
    old: CNode,
    op: str,
    edges: list[Edge],
    args: dict[str, Any],
    fn: Callable[[list[torch.Tensor]], list[torch.Tensor]],
    covers: Iterable[int],
) -> CNode:
    node = CNode(op=op, edges=edges, values=list(old.values[:1]), args=args, fn=fn, position=old.position)
    node.covers = tuple(sorted(set(covers)))
    graph.add(node)
    graph.replace(old.out(), node.out())
    return node


# ---------------------------------------------------------------------------------------------
# Softmax


def fuse_softmax(graph: CanonGraph) -> None:
    for node in list(graph.nodes):
        if node.op == "div" and len(node.edges) == 2:
            _try_softmax(graph, node)


def _try_softmax(graph: CanonGraph, div: CNode) -> None:
    numerator, denominator = div.edges
    exp, total = _src(numerator), _src(denominator)
    if exp is None or total is None or exp.op != "exp" or total.op != "sum" or not total.edges:
        return
    dim = ops.normalized_dim(total.args.get("dim"), len(total.edges[0].shape))
    if dim is None or not total.args.get("keepdim") or not _same_source(total.edges[0], numerator):
        return
    region, x = [exp, total, div], exp.edges[0]
    shifted = _src(x)
    if shifted is not None and shifted.op == "sub" and len(shifted.edges) == 2:
        peak = _src(shifted.edges[1])
        if peak is not None and peak.op in ("amax", "max") and _same_source(peak.edges[0], shifted.edges[0]):
            region, x = [peak, shifted, *region], shifted.edges[0]
    if _src(x) is None or len(x.shape) != len(total.edges[0].shape):
        return
    if not _checked(
        graph, region, [x], div.out(), lambda env: torch.softmax(materialize(x, env).double(), dim)
    ):
        return
    covers = [i for n in region for i in n.covers]
    args = {"dim": dim, "half_to_float": False}
    _replace(graph, div, "softmax", [x.copy()], args, lambda xs: [torch.softmax(xs[0], dim)], covers)


# ---------------------------------------------------------------------------------------------
# LayerNorm and RMSNorm


def fuse_norms(graph: CanonGraph) -> None:
    done: set[int] = set()
    nodes = list(graph.nodes)
    where = {id(n): i for i, n in enumerate(nodes)}
    first_use: dict[tuple[int, int], int] = {}
    for i, node in enumerate(nodes):
        for edge in node.edges:
            if edge.src is not None:
                first_use.setdefault((id(edge.src[0]), edge.src[1]), i)
    for anchor in nodes:
        if anchor.op not in ("mean", "var", "var_mean") or id(anchor) in done or not anchor.edges:
            continue
        for x in _norm_inputs(anchor):
            start = first_use.get((id(x.src[0]), x.src[1]), where[id(anchor)])
            region = _grow(nodes[start : start + REGION_WINDOW], x)
            if _fuse_region(graph, x, region):
                done.update(id(n) for n in region)
                break


def _norm_inputs(anchor: CNode) -> list[Edge]:
    first = anchor.edges[0]
    candidates = [first]
    squared = _src(first)
    if squared is not None and squared.op in ("pow", "mul", "square") and squared.edges:
        candidates.append(squared.edges[0])
    return [c for c in candidates if c.src is not None and c.src[0].op != "param"]


def _grow(window: list[CNode], x: Edge) -> list[CNode]:
    """Nodes of ``window`` computed only from ``x``, parameters, constants and each other."""
    assert x.src is not None
    inside: set[tuple[int, int]] = {(id(x.src[0]), x.src[1])}
    region: list[CNode] = []
    for node in window:
        if node.op not in NORM_OPS:
            continue
        live = [e for e in node.edges if e.src is not None and e.src[0].op != "param"]
        if live and all((id(e.src[0]), e.src[1]) in inside for e in live):
            region.append(node)
            inside.add((id(node), 0))
    return region


def _cone(region: list[CNode], top: CNode) -> list[CNode]:
    members = {id(n) for n in region}
    wanted, stack = {id(top)}, [top]
    while stack:
        for edge in stack.pop().edges:
            node = _src(edge)
            if node is not None and id(node) in members and id(node) not in wanted:
                wanted.add(id(node))
                stack.append(node)
    return [n for n in region if id(n) in wanted]


def _fuse_region(graph: CanonGraph, x: Edge, region: list[CNode]) -> bool:
    width = x.shape[-1] if x.shape else 0
    for top in reversed(region):
        if tuple(top.values[0].shape) != x.shape or top.op not in ("mul", "add", "div"):
            continue
        cone = _cone(region, top)
        uses = [e for n in cone for e in n.edges if _same_source(e, x)]
        if not uses or any(not _same_selection(u, uses[0]) for u in uses):
            continue
        params = _unique([e for n in cone for e in n.edges if e.src is not None and e.src[0].op == "param"])
        if any(materialize(p).numel() != width for p in params) or len(params) > 2:
            continue
        for norm in _norm_candidates(cone, params, uses[0], width):
            stds = (1.0, math.sqrt(norm.eps)) if norm.eps > 0 else (1.0,)
            if _checked(graph, cone, [uses[0], *params], top.out(), norm.reference, stds):
                covers = [i for n in cone for i in n.covers]
                _replace(graph, top, norm.op, norm.edges(), norm.args(), norm.run, covers)
                return True
    return False


def _same_selection(a: Edge, b: Edge) -> bool:
    if a.scale != b.scale or (a.map is None) != (b.map is None) or a.shape != b.shape:
        return False
    return a.map is None or torch.equal(a.map, b.map)


def _unique(edges: list[Edge]) -> list[Edge]:
    seen: list[Edge] = []
    for edge in edges:
        if not any(_same_source(edge, s) and _same_selection(edge, s) for s in seen):
            seen.append(edge)
    return seen


@dataclass(frozen=True)
class _Norm:
    """A candidate fused norm: ``layer_norm`` or ``rms_norm`` over the last ``width`` elements."""

    op: str
    x: Edge
    weight: Edge | None
    bias: Edge | None
    eps: float
    width: int

    def compute(self, x: torch.Tensor, w: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor:
        w = w.reshape(self.width) if w is not None else None
        if self.op == "layer_norm":
            return F.layer_norm(
                x, (self.width,), w, b.reshape(self.width) if b is not None else None, self.eps
            )
        out = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return out * w if w is not None else out

    def reference(self, env: dict[Out, torch.Tensor]) -> torch.Tensor:
        w, b = (materialize(e, env).double() if e is not None else None for e in (self.weight, self.bias))
        return self.compute(materialize(self.x, env).double(), w, b)

    def edges(self) -> list[Edge]:
        return [self.x.copy()] + [e.copy() for e in (self.weight, self.bias) if e is not None]

    def run(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        w = xs[1] if self.weight is not None else None
        b = xs[-1] if self.bias is not None else None
        return [self.compute(xs[0], w, b)]

    def args(self) -> dict[str, Any]:
        """The version arguments ``native_layer_norm`` gets (absent affine parts are None)."""
        args: dict[str, Any] = {"normalized_shape": [self.width], "eps": ops.float_text(self.eps)}
        if self.weight is None:
            args["weight"] = None
        if self.op == "layer_norm" and self.bias is None:
            args["bias"] = None
        return args


def _norm_candidates(cone: list[CNode], params: list[Edge], x: Edge, width: int) -> Iterator[_Norm]:
    added = {
        float(e.const.reshape(-1)[0])
        for n in cone
        if n.op == "add"
        for e in n.edges
        if e.const is not None and e.const.numel() == 1
    }
    assignments: list[tuple[Edge | None, Edge | None]] = [(None, None)]
    if len(params) == 1:
        assignments = [(params[0], None), (None, params[0])]
    elif len(params) == 2:
        assignments = [(params[0], params[1]), (params[1], params[0])]
    for eps in sorted(added) or [0.0]:
        for weight, bias in assignments:
            yield _Norm("layer_norm", x, weight, bias, eps, width)
        for weight, bias in assignments:
            if bias is None:
                yield _Norm("rms_norm", x, weight, None, eps, width)


# ---------------------------------------------------------------------------------------------
# Attention


def fuse_attention(graph: CanonGraph) -> None:
    for node in list(graph.nodes):
        if node.op == "mm" and len(node.edges) == 2 and all(e.src is not None for e in node.edges):
            _try_attention(graph, node)


def _plain(edge: Edge) -> bool:
    """The edge carries its source's elements in order (a reshape at most), unscaled or not."""
    return edge.map is None or is_flat_identity(edge.map, edge.source_value().numel())


def _try_attention(graph: CanonGraph, out: CNode) -> None:
    weights, values = out.edges
    softmax = _src(weights)
    if softmax is None or softmax.op != "softmax" or not _plain(weights) or weights.scale != 1.0:
        return
    chain = [softmax]
    scores_edge = softmax.edges[0]
    fill = None
    masked = _src(scores_edge)
    if (
        masked is not None
        and masked.op == "masked_fill"
        and float(masked.args.get("value", "0")) <= MASK_FILL_MAX
    ):
        fill, chain = masked, [masked, softmax]
        scores_edge = masked.edges[0]
    scores = _src(scores_edge)
    if scores is None or scores.op != "mm" or len(scores.edges) != 2:
        return
    links = [scores_edge] + ([softmax.edges[0]] if fill is not None else [])
    rank = len(softmax.edges[0].shape)
    keys = scores.values[0].shape[-1]
    if (
        not all(_plain(e) for e in links)
        or softmax.args.get("dim") != rank - 1
        or softmax.edges[0].shape[-1] != keys
    ):
        return
    scale = math.prod(e.scale for e in links)
    allowed = _allowed(fill, scores) if fill is not None else None
    if fill is not None and allowed is None:
        return
    query, key_t = scores.edges
    region = [scores, *chain, out]

    def reference(env: dict[Out, torch.Tensor]) -> torch.Tensor:
        q, kt, v = (materialize(e, env).double() for e in (query, key_t, values))
        logits = (q @ kt) * scale
        if allowed is not None:
            logits = logits.masked_fill(~allowed, float("-inf"))
        return torch.softmax(logits, -1) @ v

    if not _checked(graph, region, [query, key_t, values], out.out(), reference):
        return
    _build_attention(graph, out, region, query, key_t, values, scale * query.scale * key_t.scale, allowed)


def _allowed(fill: CNode, scores: CNode) -> torch.Tensor | None:
    """The fill pattern pulled back onto the scores' shape, as 'may attend' booleans."""
    x, pattern = fill.edges[0], fill.edges[1].const
    if pattern is None:
        return None
    try:
        filled = torch.broadcast_to(pattern.bool(), x.shape).reshape(scores.values[0].shape)
    except RuntimeError:
        return None
    return ~filled


def _build_attention(
    graph: CanonGraph,
    out: CNode,
    region: list[CNode],
    query: Edge,
    key_t: Edge,
    values: Edge,
    scale: float,
    allowed: torch.Tensor | None,
) -> None:
    head_dim = query.shape[-1]
    key_map = key_t.map
    if key_map is None:
        key_map = torch.arange(key_t.source_value().numel()).reshape(key_t.shape)
    key = Edge(src=key_t.src, map=key_map.transpose(-1, -2).contiguous(), scale=1.0)
    q = query.copy()
    q.scale = 1.0
    pattern = None
    if allowed is not None:
        flat = allowed.reshape(-1, *allowed.shape[-2:])
        pattern = flat[0] if bool((flat == flat[0]).all()) else allowed
    args = attention_arguments(head_dim, scale, pattern, 0.0, False)

    def run(xs: list[torch.Tensor]) -> list[torch.Tensor]:
        logits = (xs[0] @ xs[1].transpose(-1, -2)) * scale
        if allowed is not None:
            logits = logits.masked_fill(~allowed, float("-inf"))
        return [torch.softmax(logits, -1) @ xs[2]]

    covers = [i for n in region for i in n.covers]
    _replace(graph, out, "sdpa", [q, key, values.copy()], args, run, covers)


__all__ = ["fuse", "fuse_attention", "fuse_norms", "fuse_softmax"]
