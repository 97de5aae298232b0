"""Op tables for canonicalisation: canonical names, op classes, version arguments, constants.

Everything here is a pure function of an aten op (``OpOverload``), its recorded arguments or a
constant tensor. ``prism.evaluator.graph_canon`` uses it to turn a trace into a canonical graph.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

import torch

from prism.evaluator.graph_trace import Ref

# Spellings torch chooses (overloads, in-place, private kernels) mapped to one canonical name.
_RENAMES: dict[str, str] = {
    "_softmax": "softmax",
    "_log_softmax": "log_softmax",
    "native_layer_norm": "layer_norm",
    "bmm": "mm",
    "_to_copy": "cast",
    "native_dropout": "dropout",
    "true_divide": "div",
    "subtract": "sub",
    "multiply": "mul",
    "scaled_dot_product_attention": "sdpa",
    "_scaled_dot_product_flash_attention_for_cpu": "sdpa",
    "_scaled_dot_product_flash_attention": "sdpa",
    "_scaled_dot_product_efficient_attention": "sdpa",
    "_scaled_dot_product_cudnn_attention": "sdpa",
    "_scaled_dot_product_attention_math": "sdpa",
    "_scaled_dot_product_fused_attention_overrideable": "sdpa",
}

#: Ops whose output does not depend on the *values* of ``self`` (only its shape or dtype).
IGNORES_SELF_VALUES: frozenset[str] = frozenset(
    {
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
    }
)

#: Ops that return uninitialised memory: their values mean nothing and are recorded as zeros.
EMPTY_OPS: frozenset[str] = frozenset(
    {"empty", "empty_like", "empty_strided", "empty_permuted", "new_empty", "new_empty_strided"}
)

#: Ops that return their input unchanged (same values, shape and dtype).
IDENTITY_OPS: frozenset[str] = frozenset(
    {
        "clone",
        "contiguous",
        "alias",
        "detach",
        "lift_fresh",
        "lift_fresh_copy",
        "resolve_conj",
        "resolve_neg",
        "positive",
    }
)

#: Copying reshapes: every element once, in order, in a new shape.
RESHAPES: frozenset[str] = frozenset({"_unsafe_view", "view_copy", "reshape", "_reshape_copy"})

#: Multi-output selections that are not marked as views (copying variants of split/unbind).
MULTI_SELECTIONS: frozenset[str] = frozenset(
    {
        "split_copy",
        "split_with_sizes_copy",
        "unbind_copy",
        "unsafe_split",
        "unsafe_split_with_sizes",
        "unsafe_chunk",
    }
)

#: Ops that draw random numbers: sources of their own, never constant.
RANDOM_OPS: frozenset[str] = frozenset(
    {
        "rand",
        "randn",
        "randint",
        "randperm",
        "rand_like",
        "randn_like",
        "randint_like",
        "normal",
        "uniform",
        "bernoulli",
        "multinomial",
        "exponential",
        "geometric",
        "cauchy",
        "log_normal",
        "random",
        "poisson",
        "dropout",
        "_fused_dropout",
        "rrelu_with_noise",
        "_standard_gamma",
    }
)

UNARY_POINTWISE: frozenset[str] = frozenset(
    {
        "gelu", "relu", "silu", "sigmoid", "tanh", "exp", "log", "neg", "abs", "sqrt", "rsqrt",
        "sin", "cos", "square", "elu", "leaky_relu", "softplus", "mish", "hardswish",
        "hardsigmoid", "erf", "reciprocal", "sign", "clamp", "clamp_min", "clamp_max", "hardtanh",
        "relu6", "log1p", "expm1", "selu", "celu", "cast",
    }
)  # fmt: skip
BINARY_POINTWISE: frozenset[str] = frozenset(
    {
        "add", "sub", "mul", "div", "maximum", "minimum", "pow", "rsub", "atan2", "fmod",
        "remainder", "eq", "ne", "lt", "le", "gt", "ge", "logical_and", "logical_or", "where",
        "masked_fill", "bitwise_and", "bitwise_or", "bitwise_xor",
    }
)  # fmt: skip
POINTWISE = UNARY_POINTWISE | BINARY_POINTWISE
#: Operand order does not change the result (``add`` only with ``alpha == 1``).
COMMUTATIVE: frozenset[str] = frozenset(
    {
        "add",
        "mul",
        "maximum",
        "minimum",
        "eq",
        "ne",
        "logical_and",
        "logical_or",
        "bitwise_and",
        "bitwise_or",
        "bitwise_xor",
    }
)

# Arguments that say where or how a tensor is stored, never what is computed.
_STORAGE_ARGS = frozenset({"device", "layout", "pin_memory", "memory_format", "non_blocking", "out"})
_NUMBER_OPERANDS = frozenset({"self", "other", "exponent", "input"})


def packet(func: Any) -> str:
    """The op packet without the in-place underscore: ``aten.add_.Tensor`` -> ``add``."""
    name = func.overloadpacket.__name__
    return name[:-1] if name.endswith("_") and not name.endswith("__") else name


def canonical_name(func: Any) -> str:
    name = packet(func)
    name = _RENAMES.get(name, name)
    namespace = getattr(func, "namespace", "aten")
    return name if namespace == "aten" else f"{namespace}.{name}"


def is_random(func: Any, args: tuple, kwargs: dict) -> bool:
    name = packet(func)
    if name == "native_dropout":
        p, train = _argument(func, args, kwargs, "p"), _argument(func, args, kwargs, "train")
        return bool(train) and float(p or 0.0) > 0.0
    return name in RANDOM_OPS


def _argument(func: Any, args: tuple, kwargs: dict, name: str) -> Any:
    for position, argument in enumerate(func._schema.arguments):
        if argument.name == name:
            if position < len(args) and not argument.kwarg_only:
                return args[position]
            if name in kwargs:
                return kwargs[name]
            return argument.default_value if argument.has_default_value() else None
    return None


def argument(func: Any, args: tuple, kwargs: dict, name: str) -> Any:
    """The value of schema argument ``name`` as called (its default when omitted)."""
    return _argument(func, args, kwargs, name)


def number_operands(func: Any, args: tuple, kwargs: dict) -> list[float]:
    """Python numbers given as an operand of an arithmetic op (``x + 1``): constants too."""
    if canonical_name(func) not in BINARY_POINTWISE:
        return []
    numbers = []
    for name in ("self", "other", "exponent"):
        value = _argument(func, args, kwargs, name)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            numbers.append(float(value))
    return numbers


def version_arguments(func: Any, args: tuple, kwargs: dict, rank: int) -> dict[str, Any]:
    """Every non-tensor argument with its effective value (defaults filled in), JSON-ready.

    Filling in defaults makes ``gelu(x)`` and ``gelu(x, approximate="none")`` agree; ``dim``
    arguments are taken modulo the rank of the first tensor input, so ``-1`` and ``2`` agree.
    """
    values: dict[str, Any] = {}
    for argument_schema in func._schema.arguments:
        name = argument_schema.name
        if name in _STORAGE_ARGS:
            continue
        value = _argument(func, args, kwargs, name)
        if _holds_tensor(value) or (name in _NUMBER_OPERANDS and isinstance(value, (int, float))):
            continue
        if name in ("dim", "dims") and rank > 0:
            value = _normalize_dims(value, rank)
        values[name] = json_value(value)
    return values


def _holds_tensor(value: Any) -> bool:
    if isinstance(value, Ref):
        return True
    return isinstance(value, (list, tuple)) and any(isinstance(v, Ref) for v in value)


def _normalize_dims(value: Any, rank: int) -> Any:
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return value % rank
    if isinstance(value, (list, tuple)):
        return sorted(v % rank if isinstance(v, int) else v for v in value)
    return value


def json_value(value: Any) -> Any:
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return float_text(value)
    if isinstance(value, (list, tuple)):
        return [json_value(v) for v in value]
    if isinstance(value, torch.dtype):
        return str(value).removeprefix("torch.")
    return str(value)


def float_text(value: float, digits: int = 7) -> str:
    """A float as text at float32 precision (7 significant digits): the forward runs in float32,
    so ``1e-6`` and ``float32(1e-6)`` (``9.99999997e-07``) and ``x / 3`` vs ``x * (1 / 3)`` agree."""
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return format(float(value), f".{digits}g")


def normalized_dim(value: Any, rank: int) -> int | None:
    if isinstance(value, (list, tuple)):
        if len(value) != 1:
            return None
        value = value[0]
    if not isinstance(value, int) or rank <= 0:
        return None
    return value % rank


# ---------------------------------------------------------------------------------------------
# Constants


def _digest(tensor: torch.Tensor) -> str:
    data = tensor.detach().contiguous().cpu().numpy().tobytes()
    return hashlib.sha256(data).hexdigest()[:16]


def uniform_value(tensor: torch.Tensor) -> float | None:
    """The single value every element of a constant has, or None."""
    if tensor.numel() == 0 or tensor.is_complex():
        return None
    flat = tensor.reshape(-1)
    first = flat[0]
    same = torch.equal(flat, first.expand_as(flat)) or (
        tensor.is_floating_point() and bool(torch.isnan(flat).all())
    )
    return float(first) if same else None


def mask_pattern(tensor: torch.Tensor) -> torch.Tensor | None:
    """A constant that is a mask, as booleans: bool, or only 0/1 values (``True`` = 1)."""
    if tensor.dtype == torch.bool:
        return tensor
    if tensor.is_complex() or tensor.numel() == 0:
        return None
    ones = tensor == 1
    return ones if bool((ones | (tensor == 0)).all()) else None


def constant_fingerprint(tensor: torch.Tensor) -> str:
    """What a constant means, deterministically on every machine.

    Masks (bool, 0/1, 0/-inf) and integer tensors are recorded exactly. Other float constants
    are recorded by shape and the sign pattern of their elements (-inf, <0, ~0, >0, +inf, nan):
    their exact values can differ in the last bit between CPUs (vectorised ``sin``/``exp``), and
    the version must be the same on every validator.
    """
    shape = "x".join(str(s) for s in tensor.shape)
    if tensor.numel() == 1 and not tensor.is_complex():
        return f"s:{float_text(float(tensor.reshape(-1)[0]))}"
    pattern = mask_pattern(tensor)
    if pattern is not None:
        return f"b:{shape}:{_digest(pattern.to(torch.uint8))}"
    if not tensor.is_floating_point():
        return f"i:{shape}:{_digest(tensor.to(torch.int64))}"
    if bool(((tensor == 0) | (tensor == float("-inf"))).all()):
        return f"m:{shape}:{_digest((tensor == 0).to(torch.uint8))}"
    scale = float(tensor[torch.isfinite(tensor)].abs().max()) if bool(torch.isfinite(tensor).any()) else 0.0
    classes = torch.zeros(tensor.shape, dtype=torch.uint8)
    classes[tensor > 1e-6 * scale] = 1
    classes[tensor < -1e-6 * scale] = 2
    classes[tensor == float("inf")] = 3
    classes[tensor == float("-inf")] = 4
    classes[torch.isnan(tensor)] = 5
    return f"f:{shape}:{_digest(classes)}"


__all__ = [
    "BINARY_POINTWISE",
    "COMMUTATIVE",
    "EMPTY_OPS",
    "IDENTITY_OPS",
    "IGNORES_SELF_VALUES",
    "MULTI_SELECTIONS",
    "POINTWISE",
    "RANDOM_OPS",
    "RESHAPES",
    "UNARY_POINTWISE",
    "argument",
    "canonical_name",
    "constant_fingerprint",
    "float_text",
    "is_random",
    "json_value",
    "mask_pattern",
    "normalized_dim",
    "number_operands",
    "packet",
    "uniform_value",
    "version_arguments",
]
