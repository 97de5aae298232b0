"""What a paired re-measurement needs on a Ray node, read on the validator and landed on the node.

A paired task (``EvaluationTask.paired``) names files in the validator's store: the model's ZIP,
the model run's manifest with its weights next to it (``weights/weights.safetensors``), and the
challenger run's manifest. None of them exists on a worker node. The validator reads the three
files (the ZIP travels like any run's ZIP, content-addressed by its sha256) and describes each
by its sha256 and size (``PairedPayload``, JSON); the bytes travel as Ray objects. The node checks
every file against that description before writing it into its scratch, laid out as the store
lays out a run directory, and gets back the ``PairedJob`` with its own paths. A file that arrives
different from what the validator read is ``ray.payload_mismatch``; a file over the bound is
``ray.payload_too_large``: both infrastructure faults, never the miner's.

Nothing here imports Ray.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from prism.errors import InfrastructureFault
from prism.evaluator.context import WEIGHTS_FILENAME
from prism.manifest import MANIFEST_FILENAME
from prism.workers.tasks import PairedJob

logger = logging.getLogger(__name__)

#: Default bound on one file shipped to a node for a paired task (the weights, mostly).
DEFAULT_MAX_PAYLOAD_BYTES = 2 << 30


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ShippedFile(_Strict):
    """One file as the validator read it."""

    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=0)

    @classmethod
    def of(cls, data: bytes) -> ShippedFile:
        return cls(sha256=hashlib.sha256(data).hexdigest(), size=len(data))


class PairedPayload(_Strict):
    """The files of a paired task besides its ZIP, as the node must receive them."""

    model_manifest: ShippedFile
    weights: ShippedFile
    challenger_manifest: ShippedFile


def weights_path(run_dir: Path) -> Path:
    """Where a run directory keeps its trained weights."""
    return run_dir / "weights" / WEIGHTS_FILENAME


def read_shipped(path: Path, *, what: str, max_bytes: int, missing_code: str) -> tuple[bytes, ShippedFile]:
    """A file's bytes and description; ``InfrastructureFault`` when it is gone, unreadable or too big."""
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise InfrastructureFault(
                f"{what} {path} holds {size} bytes, more than the {max_bytes} a node is sent",
                code="ray.payload_too_large",
            )
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise InfrastructureFault(f"{what} {path} is gone", code=missing_code) from exc
    except OSError as exc:
        raise InfrastructureFault(f"cannot read {what} {path}: {exc}", code="ray.payload_unreadable") from exc
    return data, ShippedFile.of(data)


def read_manifests(job: PairedJob, max_bytes: int) -> tuple[bytes, bytes]:
    """The model's and the challenger's manifest bytes, as the validator's store holds them."""
    model, _ = read_shipped(job.model_manifest_path, what="the model manifest", max_bytes=max_bytes,
                            missing_code="ray.payload_unreadable")  # fmt: skip
    challenger, _ = read_shipped(job.challenger_manifest_path, what="the challenger manifest",
                                 max_bytes=max_bytes, missing_code="ray.payload_unreadable")  # fmt: skip
    return model, challenger


def _check(what: str, data: bytes, wanted: ShippedFile, label: str) -> None:
    got = ShippedFile.of(data)
    if got != wanted:
        raise InfrastructureFault(
            f"the {what} received for {label} has sha256 {got.sha256} ({got.size} bytes); the validator "
            f"sent {wanted.sha256} ({wanted.size} bytes)",
            code="ray.payload_mismatch",
        )


def land_paired(
    job: PairedJob, payload: PairedPayload, files: tuple[bytes, bytes, bytes], *, zip_path: Path,
    scratch: Path, label: str,
) -> PairedJob:  # fmt: skip
    """Check ``files`` (model manifest, weights, challenger manifest) against ``payload`` and write
    them under ``scratch`` as run directories; the job with the node's paths."""
    model_manifest, weights, challenger_manifest = files
    _check("model manifest", model_manifest, payload.model_manifest, label)
    _check("weights", weights, payload.weights, label)
    _check("challenger manifest", challenger_manifest, payload.challenger_manifest, label)
    model_dir, challenger_dir = scratch / "paired-model", scratch / "paired-challenger"
    weights_file = weights_path(model_dir)
    weights_file.parent.mkdir(parents=True)
    challenger_dir.mkdir()
    (model_dir / MANIFEST_FILENAME).write_bytes(model_manifest)
    weights_file.write_bytes(weights)
    weights_file.chmod(0o444)  # as in the validator's store
    (challenger_dir / MANIFEST_FILENAME).write_bytes(challenger_manifest)
    return job.model_copy(update={
        "model_zip_path": zip_path, "model_manifest_path": model_dir / MANIFEST_FILENAME,
        "challenger_manifest_path": challenger_dir / MANIFEST_FILENAME,
    })  # fmt: skip


__all__ = [
    "DEFAULT_MAX_PAYLOAD_BYTES",
    "PairedPayload",
    "ShippedFile",
    "land_paired",
    "read_manifests",
    "read_shipped",
    "weights_path",
]
