"""Architecture identity: record what a model computes and fingerprint it.

Runs inside the sandbox (it executes submission code). ``record_architecture(model, ctx)`` runs
one forward pass of ``model(tokens)`` with ``B = 1`` and ``T = ctx.sequence_length`` on CPU in
float32 under ``torch.no_grad()`` and eval mode, and records:

* every aten op the forward executes (overload name, input and output shapes), via a
  ``TorchDispatchMode``; this sees the computation *below* Python, so identifiers, formatting
  and file layout never reach it;
* FLOPs per token (``torch.utils.flop_counter.FlopCounterMode``; it counts matmuls,
  convolutions and attention, the ops that dominate cost);
* the module tree, parameter shapes and the parameter count (metadata only).

From the op trace it derives two ids:

* **family** (``fam-`` + 16 hex): topology only. The trace is reduced to *computation* ops
  (shape plumbing dropped, see ``_is_plumbing``), names are reduced to the op packet
  (``aten.add``, no overload, in-place folded into out-of-place), ``addmm``/``bmm`` are split or
  mapped onto ``mm`` + ``add``, and then every run of consecutive repeats of a block of ops is
  collapsed to one copy (``collapse_repeats``). Widths never appear, and depth collapses: a
  2-layer and a 6-layer GPT have the same family.
* **version** (``ver-`` + 16 hex): topology plus sizes: the uncollapsed computation trace with
  overload names, shapes and dtypes, plus every parameter's shape and dtype in registration
  order (no names, so renames do not change it either).

Both ids depend on the torch version that records them (torch may emit different aten ops
across releases); the graph records ``torch_version`` so a mismatch can be diagnosed.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from dataclasses import asdict, is_dataclass
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from prism.errors import MinerFault
from prism.evaluator.interface import PrismContext

logger = logging.getLogger(__name__)

GRAPH_SCHEMA = "prism_architecture_graph.v1"
FAMILY_PREFIX = "fam-"
VERSION_PREFIX = "ver-"
ID_HEX_CHARS = 16
#: A forward at the canonical small context that executes more ops than this is refused: it
#: would make the graph artifact huge and is not a plausible model at 200k parameters.
MAX_RECORDED_OPS = 50_000
#: Longest computation-op sequence the depth normalization accepts (it is quadratic per fold).
MAX_FAMILY_OPS = 8_192

# Ops that move or re-describe data without computing on it. Their presence often depends on
# sizes or memory layout (a transpose of a size-1 dim is already contiguous, so no clone), so
# keeping them would let widths change the family. Every view op (schema returns an alias) is
# dropped as well, see `_is_plumbing`.
_PLUMBING_OPS: frozenset[str] = frozenset(
    {
        "_unsafe_view",
        "_reshape_alias",
        "clone",
        "contiguous",
        "copy",
        "_to_copy",
        "to",
        "lift_fresh",
        "lift_fresh_copy",
        "detach",
        "alias",
        "resize",
        "empty_like",
        "zeros_like",
        "ones_like",
        "full_like",
        "new_empty",
        "new_zeros",
        "new_ones",
        "new_full",
        "new_empty_strided",
        "fill",
        "zero",
        "_local_scalar_dense",
        "item",
        "split_with_sizes_copy",
        "unsafe_split",
        "unsafe_chunk",
    }
)

# Kernel choices torch makes by layout, not by the model: one canonical spelling each.
_CANONICAL_EXPANSIONS: dict[str, tuple[str, ...]] = {
    "aten.addmm": ("aten.mm", "aten.add"),
    "aten.baddbmm": ("aten.mm", "aten.add"),
    "aten.bmm": ("aten.mm",),
    "aten.addbmm": ("aten.mm", "aten.add"),
}


class OpRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    op: str = Field(description="aten overload, e.g. aten.addmm.default")
    inputs: list[list[int]] = Field(description="shapes of tensor inputs, in argument order")
    outputs: list[list[int]] = Field(description="shapes of tensor outputs")
    dtypes: list[str] = Field(default_factory=list, description="dtypes of tensor outputs")
    computation: bool = Field(description="kept for identity (not shape plumbing)")


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
    family_ops: list[str] = Field(description="the collapsed topology the family id hashes")
    op_counts: dict[str, int] = Field(description="computation ops by packet, uncollapsed")
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
            "computation_ops": sum(self.op_counts.values()),
            "family_ops": len(self.family_ops),
        }


class GraphRecordingError(MinerFault):
    default_code = "graph.forward_failed"


# ---------------------------------------------------------------------------------------------
# Recording


def _tensor_shapes(values: Any) -> list[list[int]]:
    shapes: list[list[int]] = []
    for value in _flatten(values):
        if isinstance(value, torch.Tensor):
            shapes.append([int(s) for s in value.shape])
    return shapes


def _tensor_dtypes(values: Any) -> list[str]:
    return [str(v.dtype).removeprefix("torch.") for v in _flatten(values) if isinstance(v, torch.Tensor)]


def _flatten(values: Any) -> list[Any]:
    if isinstance(values, (list, tuple)):
        out: list[Any] = []
        for value in values:
            out.extend(_flatten(value))
        return out
    if isinstance(values, dict):
        return _flatten(list(values.values()))
    return [values]


def _is_plumbing(func: Any, packet: str, has_tensor_input: bool) -> bool:
    """True for ops that do not compute: views, copies, factories, layout changes."""
    if getattr(func, "is_view", False):
        return True
    if not has_tensor_input:  # factories (arange, zeros, tensor literals) build constants
        return True
    return packet.rstrip("_") in _PLUMBING_OPS


class _OpRecorder(TorchDispatchMode):
    """Appends one ``OpRecord`` per executed aten op."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[OpRecord] = []
        self.family_names: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if len(self.records) >= MAX_RECORDED_OPS:
            raise GraphRecordingError(
                f"the forward at the canonical context executes more than {MAX_RECORDED_OPS} ops",
                code="graph.too_large",
            )
        inputs = _tensor_shapes([args, kwargs])
        packet = func.overloadpacket.__name__
        namespace = getattr(func, "namespace", "aten")
        computation = not _is_plumbing(func, packet, bool(inputs))
        self.records.append(
            OpRecord(
                op=str(func),
                inputs=inputs,
                outputs=_tensor_shapes(out),
                dtypes=_tensor_dtypes(out),
                computation=computation,
            )
        )
        if computation:
            # In-place and out-of-place spell the same computation (x += y vs x = x + y).
            base = f"{namespace}.{packet.rstrip('_')}"
            self.family_names.extend(_CANONICAL_EXPANSIONS.get(base, (base,)))
        return out


def canonical_tokens(ctx: PrismContext) -> torch.Tensor:
    """A fixed (1, T) token batch: identity must not depend on any random state."""
    positions = torch.arange(ctx.sequence_length, dtype=torch.int64)
    return ((positions * 7919 + 13) % ctx.vocab_size).unsqueeze(0)


def record_architecture(model: torch.nn.Module, ctx: PrismContext) -> ArchitectureGraph:
    """Run one canonical forward of ``model`` and return its graph with family and version ids.

    The model is moved to CPU float32 and put in eval mode: the recording must be the same on
    every validator, whatever device the run trained on.
    """
    model = model.to(device="cpu", dtype=torch.float32).eval()
    tokens = canonical_tokens(ctx)
    recorder = _OpRecorder()
    flop_counter = FlopCounterMode(display=False)
    try:
        with torch.no_grad(), flop_counter, recorder:
            model(tokens)
    except MinerFault:
        raise
    except Exception as exc:  # any failure in submission code is the submission's fault
        raise GraphRecordingError(
            f"model(tokens) failed at the canonical context (B=1, T={ctx.sequence_length}): "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    return _build_graph(model, ctx, recorder, float(flop_counter.get_total_flops()), tokens.numel())


def _build_graph(
    model: torch.nn.Module, ctx: PrismContext, recorder: _OpRecorder, flops: float, n_tokens: int
) -> ArchitectureGraph:
    family_ops = collapse_repeats(recorder.family_names)
    family_sha = _sha256_json({"schema": GRAPH_SCHEMA, "family_ops": family_ops})
    parameters = [
        ParameterRecord(name=name, shape=list(p.shape), dtype=str(p.dtype).removeprefix("torch."))
        for name, p in model.named_parameters()
    ]
    computation = [r for r in recorder.records if r.computation]
    version_sha = _sha256_json(
        {
            "schema": GRAPH_SCHEMA,
            "ops": [[r.op, r.inputs, r.outputs, r.dtypes] for r in computation],
            "parameters": [[p.shape, p.dtype] for p in parameters],
        }
    )
    op_counts = Counter(name.removeprefix("aten.") for name in recorder.family_names)
    return ArchitectureGraph(
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
        op_counts=dict(sorted(op_counts.items())),
        ops=recorder.records,
        modules=_module_records(model),
        parameters=parameters,
    )


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
    if is_dataclass(value) and not isinstance(value, type):
        value = asdict(value)
    blob = json.dumps(value, sort_keys=True, separators=(",", ":")).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()


# ---------------------------------------------------------------------------------------------
# Depth normalization


def collapse_repeats(sequence: list[str]) -> list[str]:
    """Fold consecutive copies of a block of ops into one copy, repeatedly, until none is left.

    Each round lists every tandem repeat (a run of ``k >= 2`` adjacent copies of a length-``p``
    block) and folds them *largest first*: by ops covered (``k * p``; ties: shorter period, then
    leftmost), skipping any run that overlaps one already chosen in this round. Folding the
    biggest run first means that in ``E B^n H`` (an embedding, ``n`` identical layers, a head)
    the layer stack is folded to one layer before anything that straddles a layer boundary, so
    every depth ``n >= 1`` reaches the same result. The result contains no two adjacent equal
    blocks. Folding squares is not confluent in general, so this is a heuristic: random-sequence
    checks find ``E B^n H`` pairs that disagree about once in 10^4, all with ``E`` or ``H`` made
    of fragments of ``B``; real layer stacks are not like that.
    """
    if len(sequence) > MAX_FAMILY_OPS:
        raise GraphRecordingError(
            f"the forward executes {len(sequence)} computation ops at the canonical context "
            f"(limit {MAX_FAMILY_OPS})",
            code="graph.too_large",
        )
    codes: dict[str, int] = {}
    array = np.array([codes.setdefault(op, len(codes)) for op in sequence], dtype=np.int64)
    names = {code: op for op, code in codes.items()}
    while True:
        runs = _disjoint_largest_runs(array)
        if not runs:
            break
        # Right to left, so the starts of the runs still to fold stay valid.
        for start, period, copies in sorted(runs, reverse=True):
            array = np.concatenate((array[: start + period], array[start + copies * period :]))
    return [names[int(code)] for code in array]


def _tandem_runs(array: np.ndarray) -> list[tuple[int, int, int]]:
    """Every maximal run of repeats as (start, period, copies)."""
    runs: list[tuple[int, int, int]] = []
    for period in range(1, len(array) // 2 + 1):
        equal = array[:-period] == array[period:]
        if not equal.any():
            continue
        # A stretch of m consecutive equalities at distance p is ``m + p`` ops with period p.
        edges = np.diff(np.concatenate(([0], equal.astype(np.int8), [0])))
        starts = np.flatnonzero(edges == 1)
        lengths = np.flatnonzero(edges == -1) - starts
        for start, length in zip(starts.tolist(), lengths.tolist(), strict=True):
            if length >= period:
                runs.append((start, period, (length + period) // period))
    return runs


def _disjoint_largest_runs(array: np.ndarray) -> list[tuple[int, int, int]]:
    """The runs to fold this round: largest coverage first, none overlapping another."""
    ranked = sorted(_tandem_runs(array), key=lambda run: (-run[1] * run[2], run[1], run[0]))
    taken = np.zeros(len(array), dtype=bool)
    chosen: list[tuple[int, int, int]] = []
    for start, period, copies in ranked:
        end = start + period * copies
        if taken[start:end].any():
            continue
        taken[start:end] = True
        chosen.append((start, period, copies))
    return chosen


__all__ = [
    "FAMILY_PREFIX",
    "GRAPH_SCHEMA",
    "MAX_FAMILY_OPS",
    "MAX_RECORDED_OPS",
    "VERSION_PREFIX",
    "ArchitectureGraph",
    "GraphRecordingError",
    "ModuleRecord",
    "OpRecord",
    "ParameterRecord",
    "canonical_tokens",
    "collapse_repeats",
    "record_architecture",
]
