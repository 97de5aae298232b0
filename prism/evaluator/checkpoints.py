"""Checkpoint rules: what ``save_checkpoint`` may return and what the harness accepts.

The checkpoint directory belongs to the evaluator (it lives inside the run's writable output
directory). ``save_checkpoint(model, checkpoint_dir, ctx)`` may return:

* ``None``: nothing to record;
* a checkpoint-dir-relative ``str`` naming the main checkpoint file or directory;
* exactly ``{"path": str, "metadata": dict}`` with JSON-compatible metadata.

Absolute paths, ``..`` components, symlinks (in the named path or anywhere in the workspace),
paths that do not exist or resolve outside the checkpoint directory, extra or missing dict keys,
non-JSON metadata, and a workspace above 10,000,000,000 bytes are typed miner faults
(``checkpoint.*``). This module is torch-free; the runner and the host both use it.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from prism.errors import MinerFault
from prism.evaluator.interface import CHECKPOINT_WORKSPACE_CAP_BYTES

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AcceptedCheckpoint:
    path: str  # checkpoint-dir-relative POSIX path
    metadata: dict[str, Any] = field(default_factory=dict)
    workspace_bytes: int = 0


def _fault(code: str, message: str) -> MinerFault:
    return MinerFault(message, code=f"checkpoint.{code}")


def _json_compatible(value: Any) -> bool:
    """True for JSON values only (dict keys must be str; floats finite)."""
    if value is None or isinstance(value, bool | int | str):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list | tuple):
        return all(_json_compatible(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _json_compatible(v) for k, v in value.items())
    return False


def workspace_bytes(checkpoint_dir: Path, *, reject_symlinks: bool = True) -> int:
    """Bytes used under ``checkpoint_dir`` (files by apparent size, directories not counted)."""
    total = 0
    for dirpath, dirnames, filenames in os.walk(checkpoint_dir, followlinks=False):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            info = os.lstat(full)
            if os.path.islink(full):
                if reject_symlinks:
                    rel = os.path.relpath(full, checkpoint_dir)
                    raise _fault("symlink", f"checkpoint workspace contains a symlink: {rel}")
                continue
            if name in filenames:
                total += info.st_size
    return total


def _check_relative_path(raw: Any, checkpoint_dir: Path) -> str:
    if not isinstance(raw, str) or not raw or "\x00" in raw:
        raise _fault("bad_path", f"checkpoint path must be a non-empty string, got {raw!r}")
    if raw.startswith(("/", "\\")) or os.path.isabs(raw) or (len(raw) > 1 and raw[1] == ":"):
        raise _fault("absolute_path", f"checkpoint path must be relative to checkpoint_dir, got {raw!r}")
    parts = PurePosixPath(raw.replace("\\", "/")).parts
    if ".." in parts:
        raise _fault("traversal", f"checkpoint path may not contain '..': {raw!r}")
    root = checkpoint_dir.resolve()
    current = root
    for part in parts:
        current = current / part
        if current.is_symlink():
            raise _fault("symlink", f"checkpoint path goes through a symlink: {raw!r}")
    if not current.exists():
        raise _fault("missing", f"checkpoint path {raw!r} does not exist under checkpoint_dir")
    try:
        current.resolve().relative_to(root)
    except ValueError as exc:
        raise _fault("outside", f"checkpoint path {raw!r} resolves outside checkpoint_dir") from exc
    return PurePosixPath(*parts).as_posix()


def accept_checkpoint(returned: Any, checkpoint_dir: Path) -> AcceptedCheckpoint | None:
    """Validate what ``save_checkpoint`` returned; raise a ``checkpoint.*`` miner fault when invalid."""
    checkpoint_dir = Path(checkpoint_dir)
    if returned is None:
        workspace_bytes(checkpoint_dir)  # the cap and the no-symlink rule hold even when nothing is recorded
        _check_cap(checkpoint_dir)
        return None
    if isinstance(returned, str):
        path, metadata = returned, {}
    elif isinstance(returned, dict):
        keys = set(returned)
        if keys != {"path", "metadata"}:
            raise _fault(
                "bad_return",
                f"save_checkpoint dict must have exactly the keys 'path' and 'metadata', got {sorted(map(str, keys))}",
            )
        path, metadata = returned["path"], returned["metadata"]
        if not isinstance(metadata, dict) or not _json_compatible(metadata):
            raise _fault("bad_metadata", "checkpoint metadata must be a dict of JSON-compatible values")
        metadata = json.loads(json.dumps(metadata))  # detach from the submission's objects
    else:
        raise _fault(
            "bad_return",
            f"save_checkpoint must return None, a str or {{'path', 'metadata'}}, got {type(returned).__name__}",
        )
    rel = _check_relative_path(path, checkpoint_dir)
    size = _check_cap(checkpoint_dir)
    return AcceptedCheckpoint(path=rel, metadata=metadata, workspace_bytes=size)


def _check_cap(checkpoint_dir: Path) -> int:
    size = workspace_bytes(checkpoint_dir)
    if size > CHECKPOINT_WORKSPACE_CAP_BYTES:
        raise _fault(
            "workspace_exceeded",
            f"checkpoint workspace holds {size} bytes, above the cap of {CHECKPOINT_WORKSPACE_CAP_BYTES}",
        )
    return size
