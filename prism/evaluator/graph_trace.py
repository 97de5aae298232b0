"""Record one forward as a dataflow trace of aten ops: the input to canonicalisation.

``TraceRecorder`` is a ``TorchDispatchMode``. Every aten op the forward executes becomes a
``TraceNode`` whose tensor arguments are replaced by ``Ref``\\ s to the node that produced them,
so the trace is a graph, not just a sequence. Tensors the forward did not produce become source
nodes: the input tokens, parameters (by registration index), and constants (buffers, frozen
parameters, tensors the module keeps as plain attributes).

Mutation is tracked so dataflow stays sound. An in-place op gets its own node, which becomes the
producer of the mutated tensor; the values other nodes recorded in the same storage are copied
first (copy on write), so every node keeps the value it produced. A tensor that aliases a
mutated storage (a view written through its base, a buffer filled through slices) is re-read
through an ``update`` node that depends on its old value and on every write since: no write can
hide a dependency.

Each node keeps its output tensors, so canonicalisation can replay single ops on other inputs
(``replay``) to check that a rewrite computes the same function.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

from prism.errors import MinerFault

logger = logging.getLogger(__name__)

#: Bytes of recorded op outputs (plus copy-on-write snapshots) a forward may hold. The canonical
#: context is small (T = 32, about 200k parameters); a real model stays far below this.
MAX_RECORDED_BYTES = 1 << 30

NodeKind = Literal["op", "tokens", "param", "const", "update"]


class GraphRecordingError(MinerFault):
    default_code = "graph.forward_failed"


@dataclass(frozen=True)
class Ref:
    """Output ``out`` of trace node ``node``."""

    node: int
    out: int = 0


@dataclass(eq=False)
class TraceNode:
    index: int
    kind: NodeKind
    func: Any = None  # torch._ops.OpOverload for kind "op"
    args: Any = ()  # the op's positional arguments, tensors replaced by Ref
    kwargs: dict[str, Any] = field(default_factory=dict)
    outputs: list[torch.Tensor] = field(default_factory=list)
    written: frozenset[Ref] = frozenset()  # arguments the op mutates
    param_index: int | None = None
    inputs: list[Ref] = field(default_factory=list)  # every Ref in args/kwargs, in order
    external: bool = False  # a constant that is neither a buffer nor a frozen parameter

    @property
    def name(self) -> str:
        return str(self.func) if self.func is not None else self.kind


@dataclass
class Trace:
    nodes: list[TraceNode]
    outputs: list[Ref]
    parameter_count: int


def _storage_key(tensor: torch.Tensor) -> int:
    try:
        return int(tensor.untyped_storage().data_ptr())
    except (RuntimeError, NotImplementedError):  # tensors without storage never alias
        return 0


def _written_arguments(func: Any, args: tuple, kwargs: dict) -> list[torch.Tensor]:
    written: list[torch.Tensor] = []
    for position, argument in enumerate(func._schema.arguments):
        if argument.alias_info is None or not argument.alias_info.is_write:
            continue
        value = args[position] if position < len(args) else kwargs.get(argument.name)
        written.extend(v for v in tree_flatten(value)[0] if isinstance(v, torch.Tensor))
    return written


class TraceRecorder(TorchDispatchMode):
    """Builds a ``Trace`` of the forward it observes."""

    def __init__(
        self,
        model: torch.nn.Module,
        tokens: torch.Tensor,
        *,
        max_ops: int,
        max_bytes: int = MAX_RECORDED_BYTES,
    ) -> None:
        super().__init__()
        self.nodes: list[TraceNode] = []
        self._max_ops = max_ops
        self._max_bytes = max_bytes
        self._bytes = 0
        self._seq = 0
        self._by_id: dict[int, tuple[Ref, int]] = {}
        self._keep: list[torch.Tensor] = []  # ids stay unique while their tensors live
        self._users: dict[int, list[Ref]] = {}  # storage -> recorded values living in it
        self._writes: dict[int, list[tuple[int, int]]] = {}  # storage -> [(seq, node)]
        self._tokens_id = id(tokens)
        self._params = {id(p): i for i, p in enumerate(model.parameters())}
        self._param_storage = {_storage_key(p): i for i, p in enumerate(model.parameters())}
        self._frozen = {id(p) for p in model.parameters() if not p.requires_grad}
        self._buffers = {id(b) for b in model.buffers()}
        self.parameter_count = len(self._params)

    # -- public -------------------------------------------------------------------------------

    def trace(self, result: Any) -> Trace:
        tensors = [v for v in tree_flatten(result)[0] if isinstance(v, torch.Tensor)]
        if not tensors:
            raise GraphRecordingError("model(tokens) returned no tensor", code="graph.no_output")
        outputs = [self._ref_of(t) for t in tensors]
        return Trace(nodes=self.nodes, outputs=outputs, parameter_count=self.parameter_count)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        if len(self.nodes) >= self._max_ops:
            raise GraphRecordingError(
                f"the forward at the canonical context executes more than {self._max_ops} ops",
                code="graph.too_large",
            )
        written = _written_arguments(func, args, kwargs)
        ref_args = tree_map(self._as_ref, args)
        ref_kwargs = tree_map(self._as_ref, kwargs)
        written_refs = frozenset(self._ref_of(t) for t in written)
        for tensor in written:
            self._copy_on_write(_storage_key(tensor))
        out = func(*args, **kwargs)
        outputs = [v for v in tree_flatten(out)[0] if isinstance(v, torch.Tensor)]
        seen = {id(v) for v in outputs}
        outputs.extend(t for t in written if id(t) not in seen)
        node = self._add_node("op", func=func, args=ref_args, kwargs=ref_kwargs, written=written_refs)
        self._seq += 1
        written_ids = {id(t) for t in written}
        for k, tensor in enumerate(outputs):
            self._register(tensor, Ref(node.index, k))
            if not getattr(func, "is_view", False) and id(tensor) not in written_ids:
                self._count_bytes(tensor)
        for tensor in written:
            self._writes.setdefault(_storage_key(tensor), []).append((self._seq, node.index))
        node.outputs = outputs
        return out

    # -- internals ----------------------------------------------------------------------------

    def _as_ref(self, value: Any) -> Any:
        return self._ref_of(value) if isinstance(value, torch.Tensor) else value

    def _ref_of(self, tensor: torch.Tensor) -> Ref:
        entry = self._by_id.get(id(tensor))
        if entry is None:
            return self._source(tensor)
        ref, seq = entry
        key = _storage_key(tensor)
        later = [n for s, n in self._writes.get(key, []) if s > seq and n != ref.node]
        if not later:
            return ref
        update = self._add_node("update", inputs=[ref, *(Ref(n, 0) for n in later)])
        update.args = tuple(update.inputs)
        update.outputs = [tensor]
        self._register(tensor, Ref(update.index, 0))
        return Ref(update.index, 0)

    def _source(self, tensor: torch.Tensor) -> Ref:
        index = self._params.get(id(tensor))
        if index is None and id(tensor) != self._tokens_id:
            index = self._param_storage.get(_storage_key(tensor))  # e.g. ``weight.data``
        if id(tensor) == self._tokens_id:
            node = self._add_node("tokens")
        elif index is not None and id(tensor) not in self._frozen:
            node = self._add_node("param", param_index=index)
        else:  # buffers, frozen parameters, tensors kept as plain attributes
            external = id(tensor) not in self._buffers and index is None
            node = self._add_node("const", external=external)
        node.outputs = [tensor]
        ref = Ref(node.index, 0)
        self._register(tensor, ref)
        return ref

    def _add_node(self, kind: NodeKind, **fields: Any) -> TraceNode:
        node = TraceNode(index=len(self.nodes), kind=kind, **fields)
        if kind == "op":
            node.inputs = [v for v in tree_flatten((node.args, node.kwargs))[0] if isinstance(v, Ref)]
        self.nodes.append(node)
        return node

    def _register(self, tensor: torch.Tensor, ref: Ref) -> None:
        self._by_id[id(tensor)] = (ref, self._seq)
        self._keep.append(tensor)
        key = _storage_key(tensor)
        if key:
            self._users.setdefault(key, []).append(ref)

    def _copy_on_write(self, key: int) -> None:
        """Give every recorded value living in storage ``key`` a private copy before a write."""
        if not key:
            return
        for ref in self._users.pop(key, []):
            node = self.nodes[ref.node]
            value = node.outputs[ref.out] if ref.out < len(node.outputs) else None
            if value is not None and _storage_key(value) == key:
                node.outputs[ref.out] = value.clone()
                self._count_bytes(node.outputs[ref.out])

    def _count_bytes(self, tensor: torch.Tensor) -> None:
        self._bytes += tensor.numel() * tensor.element_size()
        if self._bytes > self._max_bytes:
            raise GraphRecordingError(
                f"the recorded forward holds more than {self._max_bytes} bytes of intermediate values",
                code="graph.too_large",
            )


def _digest(tensor: torch.Tensor) -> str:
    head = f"{tensor.dtype}:{tuple(tensor.shape)}"
    try:
        data = tensor.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy().tobytes()
    except (RuntimeError, TypeError, ValueError):  # sparse, quantized, ...: compare by layout only
        return head
    return f"{head}:{hashlib.sha256(data).hexdigest()}"


def _floats(trace: Trace) -> set[str]:
    found = set()
    for node in trace.nodes:
        for value in tree_flatten((node.args, node.kwargs))[0]:
            if isinstance(value, float):
                found.add(repr(value))
    return found


def untracked_inputs(first: Trace, second: Trace) -> str | None:
    """Why two traces of the same model on different tokens show a value that bypassed the
    recorder, or None.

    A value computed from the tokens that leaves torch (``.numpy()``, ``.tolist()``,
    ``.item()``) and comes back would look like a constant and hide the computation that made
    it. So every constant that entered from outside torch (``torch.from_numpy``, a literal) in
    either trace must be a value the other trace also has, and every Python float the second
    trace passes to an op must appear in the first (one way: a cache built on the first call
    passes floats the second call does not)."""
    seen = [{_digest(v) for n in trace.nodes for v in n.outputs} for trace in (first, second)]
    for i, trace in enumerate((first, second)):
        for node in trace.nodes:
            if node.external and _digest(node.outputs[0]) not in seen[1 - i]:
                return f"a tensor of shape {list(node.outputs[0].shape)} entered the forward from outside torch and depends on the input tokens"
    # One way only: a cache built on the first call passes floats the second call does not.
    new = _floats(second) - _floats(first)
    if new:
        changed = sorted(new)[:3]
        return (
            f"op arguments {', '.join(changed)} depend on the input tokens (a value left torch and came back)"
        )
    return None


def replay(node: TraceNode, lookup: Callable[[Ref], torch.Tensor]) -> list[torch.Tensor]:
    """Run ``node``'s op again with every input taken from ``lookup`` (mutated ones copied)."""

    copies: list[torch.Tensor] = []

    def resolve(value: Any) -> Any:
        if not isinstance(value, Ref):
            return value
        tensor = lookup(value)
        if value in node.written:
            tensor = tensor.clone()
            copies.append(tensor)
        return tensor

    out = node.func(*tree_map(resolve, node.args), **tree_map(resolve, node.kwargs))
    outputs = [v for v in tree_flatten(out)[0] if isinstance(v, torch.Tensor)]
    seen = {id(v) for v in outputs}
    return outputs + [t for t in copies if id(t) not in seen]


__all__ = [
    "MAX_RECORDED_BYTES",
    "GraphRecordingError",
    "Ref",
    "Trace",
    "TraceNode",
    "TraceRecorder",
    "replay",
    "untracked_inputs",
]
