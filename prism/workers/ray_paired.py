"""What a task needs on a Ray node besides its ZIP, read on the validator and landed on the node.

A paired task (``EvaluationTask.paired``) names files in the validator's store: the model's ZIP,
the model run's manifest with its weights next to it (``weights/weights.safetensors``), and the
challenger run's manifest. None of them exists on a worker node. The validator reads the three
files (the ZIP travels like any run's ZIP, content-addressed by its sha256) and describes each
by its sha256 and size (``PairedPayload``, JSON); the bytes travel as Ray objects. The node checks
every file against that description before writing it into its scratch, laid out as the store
lays out a run directory, and gets back the ``PairedJob`` with its own paths. A file that arrives
different from what the validator read is ``ray.payload_mismatch``; a file over the bound is
``ray.payload_too_large``: both infrastructure faults, never the miner's.

A training variant's task (a ``training_for_arch`` run, or the paired re-measurement of its
weights) also names its family's canonical ZIP (``architecture_zip_of``). It travels like the run's
ZIP, keyed by the sha256 of its bytes as the validator read them (never by its file name), and the
node checks it against that description before writing it into its scratch (``ray.zip_mismatch``).

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
from prism.workers.tasks import EvaluationTask, PairedJob

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


def architecture_zip_of(task: EvaluationTask) -> Path | None:
    """The canonical ZIP a training variant's task composes its code onto (a validator's path)."""
    return task.paired.model_architecture_zip_path if task.paired is not None else task.architecture_zip_path


def read_zip(path: Path, sha256: str | None = None) -> tuple[bytes, ShippedFile]:
    """A ZIP's bytes and description, checked against ``sha256`` where a run key (or request) names it."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InfrastructureFault(f"cannot read {path}: {exc}", code="ray.zip_unreadable") from exc
    file = ShippedFile.of(data)
    if sha256 is not None and file.sha256 != sha256:
        raise InfrastructureFault(
            f"{path} has sha256 {file.sha256}, its run key says {sha256}", code="ray.zip_mismatch"
        )
    return data, file


def land_architecture(task: EvaluationTask, arrived: tuple[str, bytes] | None, scratch: Path) -> Path | None:
    """The task's canonical ZIP in the node's scratch, checked against what the validator read
    (``arrived``: its ``ShippedFile`` JSON and bytes); None for a task that needs none."""
    if architecture_zip_of(task) is None:
        return None
    if arrived is None:
        raise InfrastructureFault(
            f"{task.label} arrived without its architecture ZIP", code="ray.zip_mismatch"
        )
    wanted, got = ShippedFile.model_validate_json(arrived[0]), ShippedFile.of(arrived[1])
    if got != wanted:
        raise InfrastructureFault(
            f"the architecture ZIP received for {task.label} has sha256 {got.sha256} ({got.size} bytes); "
            f"the validator sent {wanted.sha256} ({wanted.size} bytes)", code="ray.zip_mismatch",
        )  # fmt: skip
    path = scratch / "architecture" / f"{got.sha256}.zip"
    path.parent.mkdir()
    path.write_bytes(arrived[1])
    return path


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
    architecture_zip: Path | None, scratch: Path, label: str,
) -> PairedJob:  # fmt: skip
    """Check ``files`` (model manifest, weights, challenger manifest) against ``payload`` and write
    them under ``scratch`` as run directories; the job with the node's paths (``zip_path`` and
    ``architecture_zip`` already landed there)."""
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
        "model_zip_path": zip_path, "model_architecture_zip_path": architecture_zip,
        "model_manifest_path": model_dir / MANIFEST_FILENAME,
        "challenger_manifest_path": challenger_dir / MANIFEST_FILENAME,
    })  # fmt: skip


__all__ = [
    "DEFAULT_MAX_PAYLOAD_BYTES",
    "PairedPayload",
    "ShippedFile",
    "architecture_zip_of",
    "land_architecture",
    "land_paired",
    "read_manifests",
    "read_shipped",
    "read_zip",
    "weights_path",
]
