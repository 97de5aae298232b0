"""Import a submission's code and measure what it built. Runs INSIDE the sandbox only.

Importing this module is harmless, but calling :func:`load_submission_modules` executes untrusted
code, so only the in-sandbox runner and the held-out evaluation process call it.

Definitions shared by the runner and the held-out evaluation:

* **Hook resolution**: each optional hook is looked up in the training entrypoint first, then in
  the architecture entrypoint (single-file submissions keep everything in one module).
* **Inference path**: ``inference_logits(model, batch, ctx)`` if present, else
  ``infer(model, batch, ctx)``, else ``model(input_ids)``; ``batch`` is a
  :class:`~prism.evaluator.interface.Batch` with ``batch["input_ids"]`` (``batch.tokens``), a
  LongTensor (B, T); targets are never shown to the inference path.
  It must return floating logits of shape ``(B, T, V)``.
* **Parameter count**: every parameter tensor counted once, even when tied or shared.
* **Layer count**: see :func:`count_layers`.
"""

from __future__ import annotations

import importlib
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from types import ModuleType
from typing import TYPE_CHECKING, Any

from prism.errors import MinerFault
from prism.evaluator.interface import HOOK_NAMES, Batch
from prism.evaluator.untrusted import as_submission_error, set_submission_root

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

INFERENCE_HOOKS: tuple[str, ...] = ("inference_logits", "infer")
TRAINING_HOOKS: tuple[str, ...] = tuple(h for h in HOOK_NAMES if h not in INFERENCE_HOOKS)


@dataclass
class LoadedSubmission:
    root: Path
    architecture: ModuleType
    training: ModuleType | None


def _module_stem(root: Path, entrypoint: str) -> tuple[Path, str]:
    rel = PurePosixPath(entrypoint)
    if rel.is_absolute() or ".." in rel.parts or rel.suffix != ".py":
        raise MinerFault(f"entrypoint {entrypoint!r} must be a relative .py path", code="eval.bad_entrypoint")
    return (root / rel).parent, rel.stem


def _import_entrypoint(root: Path, entrypoint: str) -> ModuleType:
    directory, stem = _module_stem(root, entrypoint)
    expected = (directory / f"{stem}.py").resolve()
    cached = sys.modules.get(stem)
    if cached is not None and Path(getattr(cached, "__file__", "") or "").resolve() != expected:
        # A same-named module from elsewhere (stdlib, a previous test) would shadow the entrypoint.
        raise MinerFault(
            f"entrypoint module name {stem!r} collides with an already imported module",
            code="eval.import_failed",
        )
    try:
        return importlib.import_module(stem)
    except MinerFault:
        raise
    except BaseException as exc:  # anything the submission raises at import (even SystemExit) is its fault
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise as_submission_error("eval.import_failed", f"importing {entrypoint}", exc) from exc


def load_submission_modules(
    root: Path, architecture_entrypoint: str, training_entrypoint: str | None
) -> LoadedSubmission:
    """Import the entrypoints by stem with their directories (and the project root) on ``sys.path``.

    Sibling imports by stem (``from train import recipe``, ``from layers import X``) therefore work
    exactly as they do when the miner runs the file from its own directory.
    """
    root = Path(root).resolve()
    set_submission_root(root)
    search = [str(_module_stem(root, architecture_entrypoint)[0])]
    if training_entrypoint:
        search.append(str(_module_stem(root, training_entrypoint)[0]))
    search.append(str(root))
    for directory in reversed(list(dict.fromkeys(search))):
        if directory not in sys.path:
            sys.path.insert(0, directory)
    architecture = _import_entrypoint(root, architecture_entrypoint)
    training = None
    if training_entrypoint and training_entrypoint != architecture_entrypoint:
        training = _import_entrypoint(root, training_entrypoint)
    elif training_entrypoint:
        training = architecture
    for name in ("build_model", "get_recipe"):
        if not callable(getattr(architecture, name, None)):
            raise MinerFault(
                f"{architecture_entrypoint} does not define {name}(ctx)", code="eval.missing_function"
            )
    return LoadedSubmission(root=root, architecture=architecture, training=training)


def resolve_hooks(loaded: LoadedSubmission) -> dict[str, Callable[..., Any]]:
    """Optional hooks present in the submission: training module first, then the architecture module."""
    hooks: dict[str, Callable[..., Any]] = {}
    for name in HOOK_NAMES:
        for module in (loaded.training, loaded.architecture):
            if module is None or not hasattr(module, name):
                continue
            value = getattr(module, name)
            if not callable(value):
                raise MinerFault(f"hook {name} is defined but is not callable", code="hook.not_callable")
            hooks[name] = value
            break
    return hooks


def hook_source_file(hook: Callable[..., Any], root: Path) -> str | None:
    """Submission-relative file that defines ``hook`` (None for callables without Python source)."""
    call = vars(type(hook)).get("__call__")  # a callable object's method holds the code
    code = getattr(hook, "__code__", None) or getattr(call, "__code__", None)
    if code is None:
        return None
    try:
        return Path(code.co_filename).resolve().relative_to(Path(root).resolve()).as_posix()
    except ValueError:
        return None


def count_parameters(model: torch.nn.Module) -> int:
    """Number of parameter elements, each underlying storage counted once (tied weights count once)."""
    seen: set[tuple[int, int, tuple[int, ...]]] = set()
    total = 0
    for param in model.parameters():
        key = (param.data_ptr(), param.numel(), tuple(param.shape))
        if key in seen:
            continue
        seen.add(key)
        total += param.numel()
    return total


def _has_parameters(module: torch.nn.Module) -> bool:
    return next(module.parameters(), None) is not None


def _container_depth(container: torch.nn.Module) -> int:
    import torch

    depth = 0
    for child in container.children():
        if isinstance(child, torch.nn.ModuleList | torch.nn.Sequential):
            depth += _container_depth(child)  # nested stacks add up: ModuleList of ModuleLists
        elif _has_parameters(child):
            depth += 1
    return depth


def count_layers(model: torch.nn.Module) -> int:
    """The model's depth in layers, as PRISM enforces ``max_layers``.

    A *layer* is a child module holding parameters inside an ``nn.ModuleList`` or
    ``nn.Sequential`` (a nested ``ModuleList``/``Sequential`` child contributes its own layers).
    The model's layer count is the largest such count over all containers in the module tree; a
    model without any container but with parameters has 1 layer. For a GPT with
    ``blocks = nn.ModuleList([Block() for _ in range(n)])`` that is ``n``.
    """
    import torch

    best = 0
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList | torch.nn.Sequential):
            best = max(best, _container_depth(module))
    if best == 0 and _has_parameters(model):
        return 1
    return best


def inference_path_name(hooks: dict[str, Callable[..., Any]]) -> str:
    for name in INFERENCE_HOOKS:
        if name in hooks:
            return name
    return "forward"


def check_logits(logits: Any, *, batch: int, seq_len: int, vocab_size: int, where: str) -> torch.Tensor:
    """Refuse anything that is not floating ``(B, T, V)`` logits, as a typed miner fault."""
    import torch

    if not isinstance(logits, torch.Tensor):
        raise MinerFault(
            f"{where} returned {type(logits).__name__}, expected a logits tensor", code="eval.bad_logits"
        )
    if not logits.is_floating_point() or tuple(logits.shape) != (batch, seq_len, vocab_size):
        raise MinerFault(
            f"{where} returned {logits.dtype} {tuple(logits.shape)}, expected float {(batch, seq_len, vocab_size)}",
            code="eval.bad_logits",
        )
    return logits


def inference_logits(
    model: torch.nn.Module,
    hooks: dict[str, Callable[..., Any]],
    input_ids: torch.Tensor,
    ctx: Any,
) -> torch.Tensor:
    """Logits (B, T, V) through the submission's inference path (see the module docstring)."""
    path = inference_path_name(hooks)
    batch_size, seq_len = input_ids.shape
    out = model(input_ids) if path == "forward" else hooks[path](model, Batch(input_ids), ctx)
    return check_logits(out, batch=batch_size, seq_len=seq_len, vocab_size=ctx.vocab_size, where=path)


def finite_cpu_logits(logits: torch.Tensor, isfinite: Callable[..., Any]) -> torch.Tensor:
    """The logits as the held-out process answers with them: float32 on the CPU, all finite. One
    function for every process that records the inference pass, so the op calls recorded after the
    submission's pass are the same in each (the constants commitment compares them)."""
    import torch

    logits = logits.detach().to("cpu", torch.float32).contiguous()
    if not bool(isfinite(logits).all()):
        raise MinerFault("the inference path returned non-finite logits", code="eval.bad_logits")
    return logits
