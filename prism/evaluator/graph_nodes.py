"""Canonical nodes for ops that compute, with one spelling per equivalent form.

* ``addmm``/``baddbmm`` (a kernel choice torch makes for ``x @ W + b``) become ``mm`` + ``add``;
* every scaled-dot-product-attention kernel becomes ``sdpa`` with its mask as a *pattern* (which
  keys each query may see) in the version arguments: ``is_causal=True``, a boolean causal mask
  and a 0/-inf float mask are the same node; a float mask with other values is a bias input;
* masks: ``where(c, x, 0)``, ``masked_fill(x, ~c, 0)`` and ``x * c`` are ``mul(x, c)``;
  ``where(c, x, v)``, ``masked_fill(x, ~c, v)`` and ``x + (0 | -inf)`` are ``masked_fill``.

Everything else keeps its canonical aten name, its tensor inputs as edges and its non-tensor
arguments as version arguments.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from prism.evaluator import graph_ops as ops
from prism.evaluator.graph_canon import Builder, CanonGraph, Edge, materialize, resolve_trace
from prism.evaluator.graph_trace import Ref, Trace, TraceNode

NEG_INF = float("-inf")


def build_node(b: Builder, t: TraceNode) -> list[Edge]:
    handler = _HANDLERS.get(ops.canonical_name(t.func)) or _HANDLERS.get(ops.packet(t.func))
    result = handler(b, t) if handler is not None else None
    return result if result is not None else default_node(b, t)


def default_node(b: Builder, t: TraceNode, op: str | None = None) -> list[Edge]:
    edges = [b.edge(r) for r in t.inputs]
    numbers = ops.number_operands(t.func, t.args, t.kwargs)
    edges += [Edge(const=torch.tensor(v, dtype=torch.float64)) for v in numbers]
    node = b.node(
        op or ops.canonical_name(t.func),
        edges,
        list(t.outputs),
        args=ops.version_arguments(t.func, t.args, t.kwargs, _first_rank(b, t)),
        origin=t.index,
        covers=(t.index,),
    )
    return [Edge(src=node.out(k)) for k in range(len(t.outputs))]


def _first_rank(b: Builder, t: TraceNode) -> int:
    return len(b.values[t.inputs[0]].shape) if t.inputs else 0


def _operand(b: Builder, value: Any) -> Edge | float | None:
    if isinstance(value, Ref):
        return b.edge(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None


def _uniform(value: Edge | float | None) -> float | None:
    if isinstance(value, float):
        return value
    if isinstance(value, Edge) and value.const is not None:
        return ops.uniform_value(value.const)
    return None


def _live(value: Edge | float | None) -> Edge | None:
    return value if isinstance(value, Edge) and not value.is_const else None


# ---------------------------------------------------------------------------------------------
# Matrix products


def _addmm(b: Builder, t: TraceNode) -> list[Edge] | None:
    bias, left, right = (_operand(b, a) for a in t.args[:3])
    if not (isinstance(bias, Edge) and isinstance(left, Edge) and isinstance(right, Edge)):
        return None
    beta = float(ops.argument(t.func, t.args, t.kwargs, "beta"))
    alpha = float(ops.argument(t.func, t.args, t.kwargs, "alpha"))
    product = torch.matmul(materialize(left), materialize(right))
    mm = b.node("mm", [left, right], [product], fn=lambda xs: [torch.matmul(xs[0], xs[1])])
    mm.covers = (t.index,)
    args: dict[str, Any] = {"alpha": 1}
    if beta != 1.0 or alpha != 1.0:
        args.update(beta=ops.float_text(beta), product_alpha=ops.float_text(alpha))

    def add(xs: list[torch.Tensor]) -> list[torch.Tensor]:
        return [xs[0] * alpha + xs[1] * beta]

    total = b.node("add", [Edge(src=mm.out()), bias], list(t.outputs), args=args, fn=add)
    total.covers = (t.index,)
    return [Edge(src=total.out())]


# ---------------------------------------------------------------------------------------------
# Attention


def attention_pattern(
    mask: torch.Tensor, lead: tuple[int, ...], queries: int, keys: int
) -> torch.Tensor | None:
    """Which keys each query may see, as a bool matrix; None if ``mask`` is not a pure mask."""
    if mask.dtype == torch.bool:
        allowed = mask
    elif mask.is_floating_point() and bool(((mask == 0) | (mask == NEG_INF)).all()):
        allowed = mask == 0
    else:
        return None
    try:
        allowed = torch.broadcast_to(allowed, (*lead, queries, keys))
    except RuntimeError:
        return None
    flat = allowed.reshape(-1, queries, keys)
    return flat[0] if bool((flat == flat[0]).all()) else allowed


def attention_arguments(
    head_dim: int, scale: float | None, pattern: torch.Tensor | None, dropout: float, gqa: bool
) -> dict[str, Any]:
    relative = 1.0 if scale is None else scale * math.sqrt(head_dim)
    return {
        "scale": ops.float_text(relative, 9),
        "mask": "none" if pattern is None else ops.constant_fingerprint(pattern),
        "dropout_p": ops.float_text(dropout),
        "enable_gqa": bool(gqa),
    }


def _sdpa(b: Builder, t: TraceNode) -> list[Edge] | None:
    def arg(name: str) -> Any:
        return ops.argument(t.func, t.args, t.kwargs, name)

    q, k, v = (_operand(b, arg(name)) for name in ("query", "key", "value"))
    if not (isinstance(q, Edge) and isinstance(k, Edge) and isinstance(v, Edge)):
        return None
    lead, queries, keys = q.shape[:-2], q.shape[-2], k.shape[-2]
    pattern = torch.ones(queries, keys, dtype=torch.bool).tril() if arg("is_causal") else None
    edges = [q, k, v]
    mask = _operand(b, arg("attn_mask") if arg("attn_mask") is not None else arg("attn_bias"))
    if isinstance(mask, Edge):
        allowed = attention_pattern(mask.const, lead, queries, keys) if mask.const is not None else None
        if allowed is None:
            edges.append(mask)
        else:
            pattern = allowed if pattern is None else pattern & allowed
    scale = arg("scale")
    args = attention_arguments(
        q.shape[-1],
        None if scale is None else float(scale),
        pattern,
        float(arg("dropout_p") or 0.0),
        bool(arg("enable_gqa")),
    )
    node = b.node("sdpa", edges, list(t.outputs), args=args, origin=t.index, covers=(t.index,))
    return [Edge(src=node.out(i)) for i in range(len(t.outputs))]


# ---------------------------------------------------------------------------------------------
# Masks


def _mask_node(b: Builder, t: TraceNode, x: Edge, filled: torch.Tensor, value: float) -> list[Edge]:
    """``x`` with the positions in ``filled`` set to ``value``, in its canonical form."""
    if value == 0.0:
        op, edges, args = "mul", [x, Edge(const=~filled)], {}
    else:
        op, edges, args = "masked_fill", [x, Edge(const=filled)], {"value": ops.float_text(value)}
    node = b.node(op, edges, list(t.outputs), args=args, origin=t.index, covers=(t.index,))
    return [Edge(src=node.out())]


def _where(b: Builder, t: TraceNode) -> list[Edge] | None:
    cond, first, second = (_operand(b, a) for a in t.args[:3])
    if not (isinstance(cond, Edge) and cond.const is not None and cond.const.dtype == torch.bool):
        return None
    if _live(first) is not None and _uniform(second) is not None:
        return _mask_node(b, t, _live(first), ~cond.const, _uniform(second))
    if _live(second) is not None and _uniform(first) is not None:
        return _mask_node(b, t, _live(second), cond.const, _uniform(first))
    return None


def _masked_fill(b: Builder, t: TraceNode) -> list[Edge] | None:
    x, mask, value = (_operand(b, a) for a in t.args[:3])
    if _live(x) is None or not (isinstance(mask, Edge) and mask.const is not None) or _uniform(value) is None:
        return None
    return _mask_node(b, t, _live(x), mask.const.bool(), _uniform(value))


def _add(b: Builder, t: TraceNode) -> list[Edge] | None:
    if float(ops.argument(t.func, t.args, t.kwargs, "alpha") or 1) != 1.0:
        return None
    pair = [_operand(b, a) for a in t.args[:2]]
    for x, mask in (pair, pair[::-1]):
        if _live(x) is None or not (isinstance(mask, Edge) and mask.const is not None):
            continue
        const = mask.const
        if tuple(t.outputs[0].shape) != x.shape or not const.is_floating_point():
            continue
        if bool((const == NEG_INF).any()) and bool(((const == 0) | (const == NEG_INF)).all()):
            return _mask_node(b, t, _live(x), torch.broadcast_to(const == NEG_INF, x.shape), NEG_INF)
    return None


_HANDLERS = {
    "addmm": _addmm,
    "baddbmm": _addmm,
    "sdpa": _sdpa,
    "where": _where,
    "masked_fill": _masked_fill,
    "add": _add,
}


def build_canonical(trace: Trace) -> CanonGraph:
    """Resolve the trace into canonical nodes (no region rewrites yet)."""
    return resolve_trace(trace, build_node)


__all__ = ["attention_arguments", "attention_pattern", "build_canonical", "build_node", "default_node"]
