"""Architecture identity: record what a model computes, canonicalise it and fingerprint it.

Runs inside the sandbox (it executes submission code). ``record_architecture(model, ctx)`` runs
one forward pass of ``model(tokens)`` with ``B = 1`` and ``T = ctx.sequence_length`` on CPU in
float32 under ``torch.no_grad()`` and eval mode, and records:

* every aten op the forward executes as a dataflow graph (``prism.evaluator.graph_trace``): which
  op produced each tensor, with the input tokens, parameters and constants as sources. It sees
  the computation *below* Python, so identifiers, formatting and file layout never reach it;
* FLOPs per token (``torch.utils.flop_counter.FlopCounterMode``; it counts matmuls,
  convolutions and attention, the ops that dominate cost);
* the module tree, parameter shapes and the parameter count (metadata only).

The graph is then **canonicalised** (``graph_canon``, ``graph_nodes``, ``graph_fuse``): what
cannot reach the logits is dropped, and so are identities, views and copies, constants and
equivalent spellings of the same function (docs/identity.md lists every rule). From the
canonical graph (``graph_emit``) it derives two ids:

* **family** (``fam-`` + 16 hex): topology only. One token per canonical op, ``op(labels of its
  inputs' producers)``, in dataflow order, with repeated blocks folded
  (``prism.identity.collapse_repeats``): widths never appear and depth collapses.
* **version** (``ver-`` + 16 hex): the canonical graph with exact input references, sizes, the op
  arguments that change the function (mask pattern, activation approximation, eps, scales, ...)
  and every parameter's shape and dtype (no names, so renames do not change it either).

``prism.identity.nearest_family`` (torch-free) decides whether a new family is a near
duplicate (a version) of a known one. Both ids depend on the torch version that records them;
the graph records ``torch_version`` so a mismatch can be diagnosed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
from dataclasses import dataclass
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch.utils.flop_counter import FlopCounterMode

from prism.errors import MinerFault
from prism.evaluator.graph_edges import CNode
from prism.evaluator.graph_emit import Emitted, emit
from prism.evaluator.graph_fuse import fuse
from prism.evaluator.graph_nodes import build_canonical
from prism.evaluator.graph_trace import (
    MAX_RECORDED_BYTES,
    GraphRecordingError,
    Trace,
    TraceRecorder,
    _storage_key,
    untracked_inputs,
)
from prism.evaluator.interface import PrismContext
from prism.identity import MAX_FAMILY_OPS, collapse_repeats

logger = logging.getLogger(__name__)

GRAPH_SCHEMA = "prism_architecture_graph.v2"
FAMILY_PREFIX = "fam-"
VERSION_PREFIX = "ver-"
ID_HEX_CHARS = 16
#: A forward at the canonical small context that executes more ops than this is refused: it
#: would make the graph artifact huge and is not a plausible model at 200k parameters.
MAX_RECORDED_OPS = 50_000
#: Values one recording at a *run* context may hold (logits alone are B*T*V floats there).
RUN_GRAPH_MAX_BYTES = 8 << 30


class OpRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    op: str = Field(description="aten overload, e.g. aten.addmm.default")
    inputs: list[list[int]] = Field(description="shapes of tensor inputs, in argument order")
    outputs: list[list[int]] = Field(description="shapes of tensor outputs")
    dtypes: list[str] = Field(default_factory=list, description="dtypes of tensor outputs")
    computation: bool = Field(description="part of a canonical op the output depends on")


class ModuleRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str = Field(description="dotted attribute path ('' for the root); metadata only")
    cls: str = Field(description="class name; metadata only, never part of the family")
    depth: int
    own_parameters: int


class ParameterRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    shape: list[int]
    dtype: str


class ArchitectureGraph(BaseModel):
    """``architecture_graph.json``: source-free, JSON-serializable."""

    model_config = ConfigDict(extra="forbid")

    schema_version: str = GRAPH_SCHEMA
    family_id: str
    family_sha256: str
    version_id: str
    version_sha256: str
    canonical_context: dict[str, int]
    torch_version: str
    forward_tokens: int = Field(description="tokens in the recorded forward (B*T)")
    flops_per_token: float = Field(description="forward FLOPs per token at the canonical context")
    parameter_count: int = Field(description="unique parameters (tied weights counted once)")
    buffer_count: int
    family_ops: list[str] = Field(description="the collapsed canonical tokens the family id hashes")
    canonical_ops: int = Field(description="canonical ops the output depends on, uncollapsed")
    op_counts: dict[str, int] = Field(description="canonical ops by name, uncollapsed")
    ops: list[OpRecord]
    modules: list[ModuleRecord]
    parameters: list[ParameterRecord]

    def summary(self) -> dict[str, Any]:
        """The few fields worth printing or putting in a manifest."""
        return {
            "family_id": self.family_id,
            "version_id": self.version_id,
            "parameter_count": self.parameter_count,
            "flops_per_token": self.flops_per_token,
            "computation_ops": self.canonical_ops,
            "family_ops": len(self.family_ops),
        }


# ---------------------------------------------------------------------------------------------
# Recording


def canonical_tokens(ctx: PrismContext) -> torch.Tensor:
    """A fixed (1, T) token batch: identity must not depend on any random state."""
    positions = torch.arange(ctx.sequence_length, dtype=torch.int64)
    return ((positions * 7919 + 13) % ctx.vocab_size).unsqueeze(0)


def probe_tokens(ctx: PrismContext) -> torch.Tensor:
    """A second fixed batch, different from ``canonical_tokens`` at almost every position."""
    positions = torch.arange(ctx.sequence_length, dtype=torch.int64)
    return ((positions * 104729 + 71) % ctx.vocab_size).unsqueeze(0)


def public_batches(canonical: PrismContext, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The canonical and probe batches repeated to ``length`` positions: the same token ids and
    (but for the wrap) the same neighbours as at the canonical context, so a fold that depends on
    which ids occur (a document mask on a batch without an end-of-text id) mostly folds the same
    way. Not always: the replays' random values are drawn per position, so a test against one id
    that is absent can still fold at one length and not at another (docs/identity.md)."""
    reps = -(-length // canonical.sequence_length)
    first, second = canonical_tokens(canonical), probe_tokens(canonical)
    return first.repeat(1, reps)[:, :length], second.repeat(1, reps)[:, :length]


@dataclass(frozen=True)
class Recording:
    """A recorded graph and the parameters its output depends on (names, first use first).

    Folds that depend on the values seen can change a family from one input to another (a
    document mask is a constant on a batch with no end-of-text id); the names say whether a
    trained weight is read only on some inputs (program check evidence), and ``weight_ops``
    whether ops compute from weights only on some (``computed_only_in``: a verdict)."""

    graph: ArchitectureGraph
    live_parameters: tuple[str, ...]
    #: Trace positions of the live ops whose value depends on a trained parameter.
    weight_ops: frozenset[int]
    #: The recorded ops, in order (``kind:name``): two recordings of one program line up.
    trace_ops: tuple[str, ...]


def computed_only_in(first: Recording, second: Recording) -> list[str]:
    """The ops that compute from trained weights in ``first`` but not in ``second``, two
    recordings of one straight-line program (``graph_program``) on different tokens.

    A branch that the second input folds away (a gate that is the constant 0 there) and that
    answers on the first shows up here however it is spelled: a weight it reads by an inert term
    is still read, but the ops that compute from it are dead on the second input. A document mask
    that folds on the first input goes the other way (live on the second only), and a mask never
    reads a weight."""
    if first.trace_ops != second.trace_ops:
        raise GraphRecordingError(
            "the recorded inference pass executed different ops on two inputs of the same length",
            code="graph.unaligned",
        )
    return [f"#{i} {first.trace_ops[i]}" for i in sorted(first.weight_ops - second.weight_ops)]


def record_architecture(
    model: torch.nn.Module,
    ctx: PrismContext,
    *,
    max_recorded_bytes: int = MAX_RECORDED_BYTES,
    inputs: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> ArchitectureGraph:
    """Run one canonical forward of ``model`` and return its graph with family and version ids.

    The model is moved to CPU float32 and put in eval mode: the recording must be the same on
    every validator, whatever device the run trained on. A second forward on other tokens
    checks that no value bypassed the recorder (``graph_trace.untracked_inputs``).
    ``max_recorded_bytes`` bounds the values one forward may hold (1 GiB suits the canonical
    context; recording at a large run context needs more, see docs/identity.md).

    ``inputs`` (two ``(1, T)`` batches) replaces the fixed batches and keeps the model's device
    and dtypes: the program check records a rebuilt inference pass on windows drawn in secret,
    as it was scored, so no branch keyed on the public batches or a cast can fold away.
    """
    return record_forward(model, ctx, max_recorded_bytes=max_recorded_bytes, inputs=inputs).graph


def record_forward(
    model: torch.nn.Module,
    ctx: PrismContext,
    *,
    max_recorded_bytes: int = MAX_RECORDED_BYTES,
    inputs: tuple[torch.Tensor, torch.Tensor] | None = None,
    rebuilt: bool = False,
    file_buffers: tuple[torch.Tensor, ...] = (),
) -> Recording:
    """``record_architecture``, with the names of the parameters the output depends on.

    ``rebuilt``: the model is a ``graph_program.ProgramModule``, which runs aten ops only and
    passes nothing but tensors between them, so no value can leave torch and come back; the
    second forward that looks for one is skipped (``inputs[1]`` is not used). ``file_buffers``:
    tensors of the weights file the model holds as buffers (frozen parameters, persistent
    buffers); ops computing from their values count as weight ops too."""
    if inputs is None:
        model = model.to(device="cpu", dtype=torch.float32)
        inputs = (canonical_tokens(ctx), probe_tokens(ctx))
    tokens, other = inputs
    model = model.eval()
    flop_counter = FlopCounterMode(display=False)
    trace = _trace(model, tokens, ctx, flop_counter, max_recorded_bytes)
    problem = (
        None if rebuilt else untracked_inputs(trace, _trace(model, other, ctx, None, max_recorded_bytes))
    )
    if problem is not None:
        raise GraphRecordingError(f"identity cannot be recorded: {problem}", code="graph.untracked_value")
    storages = frozenset(_storage_key(b) for b in file_buffers if not _triangular_table(b)) - {0}
    return _build_graph(model, ctx, trace, float(flop_counter.get_total_flops()), tokens.numel(), storages)


def _trace(
    model: torch.nn.Module,
    tokens: torch.Tensor,
    ctx: PrismContext,
    flop_counter: FlopCounterMode | None,
    max_bytes: int,
) -> Trace:
    recorder = TraceRecorder(model, tokens, max_ops=MAX_RECORDED_OPS, max_bytes=max_bytes)
    try:
        with torch.no_grad(), flop_counter or contextlib.nullcontext(), recorder:
            result = model(tokens)
        return recorder.trace(result)
    except MinerFault:
        raise
    except Exception as exc:  # any failure in submission code is the submission's fault
        raise GraphRecordingError(
            f"model(tokens) failed at the canonical context (B=1, T={ctx.sequence_length}): "
            f"{type(exc).__name__}: {exc}"
        ) from exc


def canonicalize(trace: Trace, parameters: list[tuple[list[int], str]]) -> Emitted:
    """Trace -> canonical graph -> order, family tokens and version payload."""
    graph = build_canonical(trace)
    fuse(graph)
    return emit(graph, parameters)


def _build_graph(
    model: torch.nn.Module,
    ctx: PrismContext,
    trace: Trace,
    flops: float,
    n_tokens: int,
    file_storages: frozenset[int] = frozenset(),
) -> Recording:
    parameters = [
        ParameterRecord(name=name, shape=list(p.shape), dtype=str(p.dtype).removeprefix("torch."))
        for name, p in model.named_parameters()
    ]
    try:
        with torch.no_grad():
            emitted = canonicalize(trace, [(p.shape, p.dtype) for p in parameters])
    except MinerFault:
        raise
    except Exception as exc:  # the graph came from submission code: refuse it, typed
        logger.exception("canonicalisation failed")
        raise GraphRecordingError(
            f"the recorded graph could not be canonicalised: {type(exc).__name__}: {exc}",
            code="graph.unsupported",
        ) from exc
    if len(emitted.tokens) > MAX_FAMILY_OPS:
        raise GraphRecordingError(
            f"the forward executes {len(emitted.tokens)} canonical ops at the canonical context "
            f"(limit {MAX_FAMILY_OPS})",
            code="graph.too_large",
        )
    family_ops = collapse_repeats(emitted.tokens)
    family_sha = _sha256_json({"schema": GRAPH_SCHEMA, "family_ops": family_ops})
    version_sha = _sha256_json({"schema": GRAPH_SCHEMA, **emitted.version})
    graph = ArchitectureGraph(
        family_id=FAMILY_PREFIX + family_sha[:ID_HEX_CHARS],
        family_sha256=family_sha,
        version_id=VERSION_PREFIX + version_sha[:ID_HEX_CHARS],
        version_sha256=version_sha,
        canonical_context=_context_dict(ctx),
        torch_version=torch.__version__,
        forward_tokens=n_tokens,
        flops_per_token=flops / max(n_tokens, 1),
        parameter_count=sum(p.numel() for p in model.parameters()),
        buffer_count=sum(b.numel() for b in model.buffers()),
        family_ops=family_ops,
        canonical_ops=len(emitted.tokens),
        op_counts=emitted.op_counts,
        ops=_op_records(trace, emitted),
        modules=_module_records(model),
        parameters=parameters,
    )
    return Recording(
        graph,
        tuple(parameters[i].name for i in emitted.parameters_used),
        weight_ops=_weight_dependent_ops(emitted.order) | _file_buffer_ops(trace, emitted, file_storages),
        trace_ops=tuple(f"{node.kind}:{node.name}" for node in trace.nodes),
    )


def _weight_dependent_ops(order: list[CNode]) -> frozenset[int]:
    """Trace positions covered by the live nodes that read a parameter, directly or not."""
    dependent: set[int] = set()
    covers: set[int] = set()
    for node in order:  # post-order: a node's inputs come before it
        sources = [edge.src[0] for edge in node.edges if edge.src is not None]
        if any(src.op == "param" or id(src) in dependent for src in sources):
            dependent.add(id(node))
            covers.update(node.covers)
    return frozenset(covers)


def _file_buffer_ops(trace: Trace, emitted: Emitted, storages: frozenset[int]) -> frozenset[int]:
    """Trace positions of live ops that compute from the values of a weights-file tensor held
    as a buffer (a frozen parameter's or a persistent buffer's storage in ``storages``), through
    any op (a comparison too: bits rebuild values). They are constants to the canonicaliser,
    which folds what they feed alone, so this follows the trace itself."""
    if not storages:
        return frozenset()
    live = {index for node in emitted.order for index in node.covers}
    dependent: set[int] = set()
    for node in trace.nodes:
        if node.kind == "const":
            if node.outputs and _storage_key(node.outputs[0]) in storages:
                dependent.add(node.index)
        elif any(ref.node in dependent for ref in node.inputs):
            dependent.add(node.index)
    return frozenset(i for i in dependent if i in live and trace.nodes[i].kind != "const")


def _triangular_table(tensor: torch.Tensor) -> bool:
    """A causal table (nanoGPT's ``bias``, an additive 0 / -inf mask): one value on a triangle,
    another off it. It holds one bit, so a document mask folded over it reads nothing trained."""
    if tensor.dim() < 2 or tensor.numel() == 0 or math.prod(tensor.shape[:-2]) != 1:
        return False
    table = tensor.detach().reshape(tensor.shape[-2], tensor.shape[-1])
    full = torch.ones(table.shape, dtype=torch.bool, device=table.device)
    for inside in (full.tril(), full.triu(), full.tril(-1), full.triu(1)):
        on, off = table[inside], table[~inside]
        if on.numel() and off.numel() and bool((on == on[0]).all()) and bool((off == off[0]).all()):
            return True
    return False


def _op_records(trace: Trace, emitted: Emitted) -> list[OpRecord]:
    live = {index for node in emitted.order for index in node.covers}
    records = []
    for node in trace.nodes:
        if node.kind != "op":
            continue
        records.append(
            OpRecord(
                op=node.name,
                inputs=[list(trace.nodes[r.node].outputs[r.out].shape) for r in node.inputs],
                outputs=[list(v.shape) for v in node.outputs],
                dtypes=[str(v.dtype).removeprefix("torch.") for v in node.outputs],
                computation=node.index in live,
            )
        )
    return records


def _module_records(model: torch.nn.Module) -> list[ModuleRecord]:
    return [
        ModuleRecord(
            path=path,
            cls=type(module).__name__,
            depth=0 if not path else path.count(".") + 1,
            own_parameters=sum(p.numel() for p in module.parameters(recurse=False)),
        )
        for path, module in model.named_modules()
    ]


def _context_dict(ctx: PrismContext) -> dict[str, int]:
    return {
        "vocab_size": ctx.vocab_size,
        "sequence_length": ctx.sequence_length,
        "max_parameters": ctx.max_parameters,
        "max_layers": ctx.max_layers,
        "seed": ctx.seed,
    }


def _sha256_json(value: Any) -> str:
    blob = json.dumps(value, sort_keys=True, separators=(",", ":")).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()


__all__ = [
    "FAMILY_PREFIX",
    "GRAPH_SCHEMA",
    "MAX_FAMILY_OPS",
    "MAX_RECORDED_BYTES",
    "MAX_RECORDED_OPS",
    "VERSION_PREFIX",
    "ArchitectureGraph",
    "GraphRecordingError",
    "ModuleRecord",
    "OpRecord",
    "ParameterRecord",
    "Recording",
    "canonical_tokens",
    "collapse_repeats",
    "computed_only_in",
    "probe_tokens",
    "public_batches",
    "record_architecture",
    "record_forward",
]
