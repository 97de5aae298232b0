"""The measured function as data: record it where the submission runs, execute it where it never ran.

The held-out process answers every batch through the submission's inference path. Right after
``ready``, before the first held-out input, it records that path once more (``record_program``:
``B = 1``, the run's ``T``, the device and dtype the batches run with) as a *program*: the aten ops it executed, in order, with their
arguments, and where each source tensor came from:

* ``tokens``: the input batch;
* ``weight``: a tensor of the trained weights file, by its state-dict name (optionally a strided
  view of it);
* ``const``: a tensor the file does not hold (a plain attribute, a non-persistent buffer, a literal),
  shipped with its values. They are counted (``MAX_CONSTANT_VALUES``).

The program is evidence from the adversary. ``ProgramModule`` rebuilds it as an ``nn.Module`` in a
process that never imported the submission, from the weights file the host inspected, and
executes only ops of the ``aten`` namespace. Because that module *is* a plain model, the same
process can record its architecture graph (``prism.evaluator.graph.record_architecture``): its
family id was derived where no submission code ran. The host then checks that the program's
log-probabilities on windows it draws match what the main process committed
(``prism.evaluator.program_check``): a decoy graph, a recorder patched in place, weights that
changed after loading or hidden state all give a different function.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable
from typing import Any

import torch
from torch.utils._python_dispatch import _disable_current_modes
from torch.utils._pytree import tree_flatten

from prism.errors import MinerFault
from prism.evaluator.graph_trace import (
    MAX_RECORDED_BYTES,
    GraphRecordingError,
    Ref,
    TraceRecorder,
    _storage_key,
    _written_arguments,
)

logger = logging.getLogger(__name__)

PROGRAM_SCHEMA = "prism_program.v1"
#: Ops one recorded inference pass may execute (as ``graph.MAX_RECORDED_OPS``).
MAX_PROGRAM_OPS = 50_000
#: Values of shipped constants (tensors the weights file does not hold) one program may carry.
MAX_CONSTANT_VALUES = 1 << 24
#: Only this op namespace runs in the checking process: a custom op would be submission code.
ALLOWED_NAMESPACES = frozenset({"aten"})
#: aten ops that reach outside the process's tensors (files): never executed.
DENIED_OPS = frozenset({"aten.from_file.default"})
#: Op families whose kernels trust their inputs' invariants (sparse indices, nested offsets,
#: quantized or MKL-DNN layouts) or re-point storage (``set_``): a crafted program could write
#: out of bounds with them. No dense model needs them.
DENIED_PACKET_PARTS = ("sparse", "nested", "quantize", "mkldnn", "from_file")
DENIED_PACKETS = frozenset({"set_", "source_Storage"})
#: Reinterpreting a tensor's bits as another dtype (``x.view(torch.int8)``) reads four int8
#: values out of one float32 or int32 the budget counted once; no language model needs it.
BITCAST_PACKETS = frozenset({"view", "view_copy"})


class ProgramError(MinerFault):
    default_code = "identity.program_invalid"


# ---------------------------------------------------------------------------------------------
# recording (inside the held-out process)


class _ProgramRecorder(TraceRecorder):
    """A ``TraceRecorder`` that also says where every source tensor came from."""

    def __init__(self, model: torch.nn.Module, tokens: torch.Tensor, *, max_bytes: int) -> None:
        super().__init__(model, tokens, max_ops=MAX_PROGRAM_OPS, max_bytes=max_bytes)
        state = model.state_dict(keep_vars=True)
        self._state_ids = {id(t): name for name, t in reversed(list(state.items()))}
        self._state_storage = {
            _storage_key(t): (name, t) for name, t in reversed(list(state.items())) if t.is_contiguous()
        }
        self.sources: dict[int, dict[str, Any]] = {}
        self.constant_values = 0

    def _source(self, tensor: torch.Tensor) -> Ref:
        ref = super()._source(tensor)
        self.sources[ref.node] = self._describe(tensor, self.nodes[ref.node].kind)
        return ref

    def _describe(self, tensor: torch.Tensor, kind: str) -> dict[str, Any]:
        if kind == "tokens":
            return {"kind": "tokens"}
        role = "param" if kind == "param" else "const"
        name = self._state_ids.get(id(tensor))
        if name is not None:
            return {"kind": "weight", "role": role, "name": name}
        found = self._state_storage.get(_storage_key(tensor))
        if found is not None and _storage_key(tensor):
            name, base = found
            view = [
                list(tensor.shape),
                list(tensor.stride()),
                tensor.storage_offset() - base.storage_offset(),
            ]
            return {"kind": "weight", "role": role, "name": name, "view": view}
        return self._shipped(tensor, role)

    def _shipped(self, tensor: torch.Tensor, role: str) -> dict[str, Any]:
        self.constant_values += tensor.numel()
        if self.constant_values > MAX_CONSTANT_VALUES:
            raise GraphRecordingError(
                f"the inference pass reads more than {MAX_CONSTANT_VALUES:,} values that are not in the "
                "trained weights (plain tensor attributes, non-persistent buffers, literals)",
                code="graph.constants_too_large",
            )
        data = tensor.detach().to("cpu").contiguous()
        raw = data.reshape(-1).view(torch.uint8).numpy().tobytes() if data.numel() else b""
        return {
            "kind": "const",
            "role": role,
            "dtype": str(data.dtype).removeprefix("torch."),
            "shape": list(data.shape),
            "data": base64.b64encode(raw).decode("ascii"),
        }


def record_program(
    call: Callable[[torch.Tensor], torch.Tensor],
    model: torch.nn.Module,
    tokens: torch.Tensor,
    *,
    max_bytes: int = MAX_RECORDED_BYTES,
) -> dict[str, Any]:
    """Record ``call(tokens)`` (the inference path, logits out) as a program (JSON-serialisable)."""
    recorder = _ProgramRecorder(model, tokens, max_bytes=max_bytes)
    with torch.no_grad(), recorder:
        result = call(tokens)
    trace = recorder.trace(result)
    nodes: list[dict[str, Any]] = []
    for node in trace.nodes:
        if node.kind == "op":
            nodes.append(
                {
                    "kind": "op",
                    "op": str(node.func),
                    "args": _encode(node.args),
                    "kwargs": _encode(node.kwargs),
                }
            )
        elif node.kind == "update":
            nodes.append({"kind": "update", "of": [node.inputs[0].node, node.inputs[0].out]})
        else:
            nodes.append(recorder.sources[node.index])
    out = trace.outputs[0]
    return {
        "schema": PROGRAM_SCHEMA,
        "tokens_shape": list(tokens.shape),
        "nodes": nodes,
        "output": [out.node, out.out],
    }


def _encode(value: Any) -> Any:
    if isinstance(value, Ref):
        return {"ref": [value.node, value.out]}
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return {"float": value.hex()}
    if isinstance(value, (list, tuple)):
        return [_encode(v) for v in value]
    if isinstance(value, dict):
        return {"kwargs": {str(k): _encode(v) for k, v in value.items()}}
    for kind, tag in (
        (torch.dtype, "dtype"),
        (torch.layout, "layout"),
        (torch.memory_format, "memory_format"),
    ):
        if isinstance(value, kind):
            return {tag: str(value).removeprefix("torch.")}
    if isinstance(value, torch.device):
        return {"device": value.type}
    raise GraphRecordingError(
        f"an op of the inference pass takes a {type(value).__name__} argument, which a program cannot carry",
        code="graph.unserialisable",
    )


# ---------------------------------------------------------------------------------------------
# execution (in a process that never imported the submission)


def _decode(value: Any, env: Callable[[int, int], torch.Tensor], device: torch.device) -> Any:
    if isinstance(value, list):
        return [_decode(v, env, device) for v in value]
    if not isinstance(value, dict):
        if value is None or isinstance(value, (bool, int, str)):
            return value
        raise ProgramError(f"the program holds an argument of type {type(value).__name__}")
    if len(value) != 1:
        raise ProgramError(f"the program holds an untagged object {sorted(value)[:4]}")
    ((tag, inner),) = value.items()
    if tag == "ref":
        return env(*_pair(inner))
    if tag == "float":
        return float.fromhex(_text(inner))
    if tag == "kwargs" and isinstance(inner, dict):
        return {str(k): _decode(v, env, device) for k, v in inner.items()}
    if tag == "device":
        return device  # the checking process runs the program on its own device
    if tag in ("dtype", "layout", "memory_format"):
        found = getattr(torch, _text(inner), None)
        if isinstance(found, torch.layout) and found != torch.strided:
            raise ProgramError(f"the program asks for a {found} tensor", code="identity.program_unsupported")
        if isinstance(found, (torch.dtype, torch.layout, torch.memory_format)):
            return found
    raise ProgramError(f"the program holds an unknown {tag!r} argument {inner!r:.80}")


def _text(value: Any) -> str:
    if not isinstance(value, str) or len(value) > 64:
        raise ProgramError(f"the program holds a malformed name {value!r:.80}")
    return value


def _pair(value: Any) -> tuple[int, int]:
    if not (isinstance(value, list) and len(value) == 2 and all(type(v) is int and v >= 0 for v in value)):
        raise ProgramError(f"the program holds a malformed reference {value!r:.80}")
    return int(value[0]), int(value[1])


def resolve_op(name: Any) -> Any:
    """``aten.add.Tensor`` -> the OpOverload; anything outside ``ALLOWED_NAMESPACES`` is refused."""
    parts = _text(name).split(".")
    # ``aten.view.dtype``, ``aten.view_copy.dtype`` and their ``out`` forms: the program names its
    # ops, so every spelling of the reinterpretation is refused.
    if len(parts) == 3 and parts[1] in BITCAST_PACKETS and parts[2].startswith("dtype"):
        raise ProgramError(
            f"the program calls {name!r}: it reads a tensor's bits as another dtype, which would read more "
            "values out of the weights than the parameter budget counted",
            code="identity.program_bitcast",
        )
    denied = len(parts) == 3 and (
        parts[1] in DENIED_PACKETS or any(part in parts[1] for part in DENIED_PACKET_PARTS)
    )
    if len(parts) != 3 or parts[0] not in ALLOWED_NAMESPACES or name in DENIED_OPS or denied:
        raise ProgramError(
            f"the program calls {name!r}, which the checking process does not run",
            code="identity.program_unsupported",
        )
    try:
        return getattr(getattr(getattr(torch.ops, parts[0]), parts[1]), parts[2])
    except (AttributeError, RuntimeError) as exc:
        raise ProgramError(
            f"the program calls {name!r}, which this torch does not have", code="identity.program_unsupported"
        ) from exc


_DTYPES = {str(d).removeprefix("torch."): d for d in (torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool)}  # fmt: skip


def _shipped_tensor(node: dict[str, Any]) -> torch.Tensor:
    dtype = _DTYPES.get(str(node.get("dtype")))
    shape = node.get("shape")
    if dtype is None or not isinstance(shape, list) or not all(type(n) is int and n >= 0 for n in shape):
        raise ProgramError("the program ships a constant with a malformed dtype or shape")
    try:
        raw = base64.b64decode(_data(node), validate=True)
    except ValueError as exc:
        raise ProgramError(f"the program ships a constant that is not base64: {exc}") from exc
    numel = 1
    for n in shape:
        numel *= n
    if len(raw) != numel * torch.empty((), dtype=dtype).element_size():
        raise ProgramError(f"the program ships a constant of shape {shape} with {len(raw)} bytes")
    flat = torch.frombuffer(bytearray(raw), dtype=torch.uint8) if raw else torch.empty(0, dtype=torch.uint8)
    return flat.view(dtype).reshape(shape).clone()


def _data(node: dict[str, Any]) -> str:
    data = node.get("data")
    if not isinstance(data, str):
        raise ProgramError("the program ships a constant without data")
    return data


class ProgramModule(torch.nn.Module):
    """A recorded program as a plain model over the trusted weights (no submission code in it).

    Tensors of the weights file become parameters (``role`` param) or buffers; shipped constants
    become buffers. Every tensor is a private copy, so one module answers one input as the
    recorded pass did, and nothing it does reaches the weights the caller holds.
    """

    def __init__(self, program: Any, state: dict[str, torch.Tensor]) -> None:
        super().__init__()
        if not isinstance(program, dict) or program.get("schema") != PROGRAM_SCHEMA:
            raise ProgramError(f"the program is not a {PROGRAM_SCHEMA} object")
        nodes = program.get("nodes")
        if not isinstance(nodes, list) or not 0 < len(nodes) <= 2 * MAX_PROGRAM_OPS:
            raise ProgramError("the program has no node list, or too many nodes")
        self._nodes: list[tuple[str, Any]] = []
        self._slots: dict[str, str] = {}  # weights-file name -> registered attribute
        shipped = 0
        for index, node in enumerate(nodes):
            if not isinstance(node, dict):
                raise ProgramError(f"program node {index} is not an object")
            kind = node.get("kind")
            if kind == "op":
                self._nodes.append(
                    ("op", (resolve_op(node.get("op")), node.get("args", []), node.get("kwargs", {})))
                )
            elif kind == "update":
                self._nodes.append(("update", _pair(node.get("of"))))
            elif kind == "tokens":
                self._nodes.append(("tokens", None))
            elif kind == "weight":
                self._nodes.append(("source", (self._weight_slot(node, state), _view(node.get("view")))))
            elif kind == "const":
                tensor = _shipped_tensor(node)
                shipped += tensor.numel()
                if shipped > MAX_CONSTANT_VALUES:
                    raise ProgramError(f"the program ships more than {MAX_CONSTANT_VALUES:,} constant values")
                self.register_buffer(f"c{index}", tensor)
                self._nodes.append(("source", (f"c{index}", None)))
            else:
                raise ProgramError(f"program node {index} has an unknown kind {kind!r:.40}")
        self._output = _pair(program.get("output"))

    def _weight_slot(self, node: dict[str, Any], state: dict[str, torch.Tensor]) -> str:
        name = node.get("name")
        if not isinstance(name, str) or name not in state:
            raise ProgramError(
                f"the program reads {name!r:.120}, which is not a tensor of the trained weights",
                code="identity.weights_mismatch",
            )
        if name not in self._slots:
            slot = f"w{len(self._slots)}"
            tensor = state[name].detach().clone()
            if node.get("role") == "param" and tensor.is_floating_point():
                self.register_parameter(slot, torch.nn.Parameter(tensor))
            else:
                self.register_buffer(slot, tensor)
            self._slots[name] = slot
        return self._slots[name]

    def file_buffers(self) -> tuple[torch.Tensor, ...]:
        """The weights-file tensors held as buffers, not parameters: whatever the program calls
        them (a frozen parameter, a persistent buffer, an integer tensor), they are trained state."""
        buffers = dict(self.named_buffers())
        return tuple(buffers[slot] for slot in self._slots.values() if slot in buffers)

    def weights_file_name(self, attribute: str) -> str:
        """The weights-file name of a registered parameter or buffer (``attribute`` itself for a
        shipped constant)."""
        names = {slot: name for name, slot in self._slots.items()}
        return names.get(attribute, attribute)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        values: list[list[torch.Tensor]] = []

        def env(node: int, out: int) -> torch.Tensor:
            if node >= len(values) or out >= len(values[node]):
                raise ProgramError(f"the program reads output {out} of node {node} before it exists")
            return values[node][out]

        for index, (kind, data) in enumerate(self._nodes):
            if kind == "tokens":
                values.append([tokens])
            elif kind == "update":
                values.append([env(*data)])
            elif kind == "source":
                slot, view = data
                tensor = getattr(self, slot)
                values.append([tensor if view is None else _strided(tensor, view)])
            else:
                values.append(_run_op(index, *data, env, tokens.device))
        return env(*self._output)


def _view(value: Any) -> tuple[list[int], list[int], int] | None:
    if value is None:
        return None
    ok = (
        isinstance(value, list)
        and len(value) == 3
        and isinstance(value[0], list)
        and isinstance(value[1], list)
    )
    if not ok or not all(type(n) is int and n >= 0 for n in [*value[0], *value[1], value[2]]):
        raise ProgramError(f"the program holds a malformed weight view {value!r:.80}")
    return value[0], value[1], value[2]


def _strided(tensor: torch.Tensor, view: tuple[list[int], list[int], int]) -> torch.Tensor:
    """The recorded view of a weight, made as the model made it: outside the forward's ops (a
    recorder above sees a tensor sharing the weight's storage, not an ``as_strided`` op)."""
    size, stride, offset = view
    try:
        with _disable_current_modes():
            return tensor.as_strided(size, stride, tensor.storage_offset() + offset)
    except RuntimeError as exc:
        raise ProgramError(f"the program's weight view {view} does not fit its tensor: {exc}") from exc


def _refuse_unsafe(index: int, func: Any, args: list[Any], kwargs: dict[str, Any]) -> None:
    """Arguments named ``unsafe`` (``_index_put_impl_``) skip bounds checks: never set here."""
    for position, argument in enumerate(func._schema.arguments):
        if argument.name != "unsafe":
            continue
        value = args[position] if position < len(args) else kwargs.get("unsafe", False)
        if value:
            raise ProgramError(
                f"program op {index} ({func}) asks for unchecked indexing",
                code="identity.program_unsupported",
            )


def _run_op(
    index: int, func: Any, args: Any, kwargs: Any, env: Any, device: torch.device
) -> list[torch.Tensor]:
    decoded_args, decoded_kwargs = _decode(args, env, device), _decode(kwargs, env, device)
    if not isinstance(decoded_args, list) or not isinstance(decoded_kwargs, dict):
        raise ProgramError(f"program op {index} has malformed arguments")
    _refuse_unsafe(index, func, decoded_args, decoded_kwargs)
    try:
        out = func(*decoded_args, **decoded_kwargs)
    except ProgramError:
        raise
    except Exception as exc:  # the program came from the submission's process
        raise ProgramError(
            f"program op {index} ({func}) failed: {type(exc).__name__}: {exc}", code="identity.program_failed"
        ) from exc
    outputs = [v for v in tree_flatten(out)[0] if isinstance(v, torch.Tensor)]
    if any(v.layout != torch.strided for v in outputs):
        raise ProgramError(
            f"program op {index} ({func}) made a non-dense tensor", code="identity.program_unsupported"
        )
    seen = {id(v) for v in outputs}
    outputs.extend(
        t for t in _written_arguments(func, tuple(decoded_args), decoded_kwargs) if id(t) not in seen
    )
    return outputs


__all__ = [
    "MAX_CONSTANT_VALUES",
    "PROGRAM_SCHEMA",
    "ProgramError",
    "ProgramModule",
    "record_program",
    "resolve_op",
]
