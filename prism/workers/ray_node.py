"""The worker-node side of the Ray backend: check the node, run one task, ship its run dir back.

Nothing here imports Ray at module level, and only JSON text and bytes cross the wire: the task
(``EvaluationTask`` JSON), the ZIP's bytes (a Ray object, content-addressed by its sha256), the
requirements the validator holds the node to, and back a ``NodeResult`` (JSON) plus the run
directory as a deterministic tar (:mod:`prism.workers.run_archive`). A paired re-measurement
also receives the two manifests and the model's weights, described by a ``PairedPayload``
(:mod:`prism.workers.ray_paired`), and ships back only its outcome (per-window nats). A training
variant's task also receives its family's canonical ZIP (``architecture_json`` describes it).

Before a run the node must match the validator: the same prepared data (the fingerprint is the
sha256 of the data dir's MANIFEST.json), the same evaluator version and torch, and a sandbox at
least as strong. A node that does not is an infrastructure failure (``ray.data_mismatch``,
``ray.version_mismatch``, ``ray.sandbox_mismatch``), never the miner's. The ZIP is checked against
its sha256 before it is written to the node's scratch (``ray.zip_mismatch``; so is a canonical
ZIP), and so is every file of a paired task (``ray.payload_mismatch``). The run happens in a scratch directory of its
own under the node's PRISM cache, removed afterwards: nothing on a worker writes into the
validator's store.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import os
import socket
import time
import uuid
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from prism.errors import InfrastructureFault, PrismError
from prism.workers.ray_paired import PairedPayload, land_architecture, land_paired
from prism.workers.run_archive import pack_run_dir, remove_tree
from prism.workers.tasks import EvaluationTask, PairedJob, TaskOutcome, run_task

logger = logging.getLogger(__name__)

Isolation = Literal["bwrap", "degraded"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class WorkerRequirements(_Strict):
    """What every node must hold to run the validator's tasks."""

    data_dir: Path
    data_fingerprint: str = Field(pattern=r"^[0-9a-f]{64}$")
    evaluator_version: str
    code_sha256: str = Field(description="the prism package's source, as on the validator's disk")
    torch_version: str | None
    isolation: Isolation = Field(description="the validator's own sandbox; a node must be as strong")


class NodeReport(_Strict):
    """What a node holds (the answer to a probe, and the first step of every run)."""

    node: str = Field(description="the Ray node id and host name")
    data_fingerprint: str | None
    data_error: str | None = None
    evaluator_version: str
    code_sha256: str
    torch_version: str | None
    isolation: Isolation


class NodeResult(_Strict):
    """A run's outcome as the node saw it; ``run_id`` names the run directory shipped with it."""

    outcome: TaskOutcome
    run_id: str | None = Field(default=None, pattern=r"^run-[0-9a-f]{24}$")


def torch_version() -> str | None:
    """The installed torch, read from its metadata (no import)."""
    try:
        return importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return None


def evaluator_version() -> str:
    from prism.evaluator.plan import EVALUATOR_VERSION

    return EVALUATOR_VERSION


def code_fingerprint() -> str:
    """sha256 over the prism package's sources and data files (names and bytes, in order)."""
    import prism

    root = Path(prism.__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.suffix in (".py", ".yaml", ".json") and "__pycache__" not in path.parts and path.is_file():
            digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def isolation_mode() -> Isolation:
    from prism.evaluator.sandbox import probe_isolation

    return probe_isolation().mode


def data_fingerprint(data_dir: Path) -> str:
    """The sha256 of ``data_dir``'s MANIFEST.json (the fingerprint every run manifest records)."""
    from prism.data import read_data_manifest

    return read_data_manifest(data_dir).sha256


def node_name() -> str:
    try:
        import ray
    except ImportError:
        return f"{socket.gethostname()} (no ray)"
    node_id = ray.get_runtime_context().get_node_id() if ray.is_initialized() else "none"
    return f"{node_id[:12]} ({socket.gethostname()})"


def describe_node(data_dir: Path) -> NodeReport:
    fingerprint, error = None, None
    try:
        fingerprint = data_fingerprint(data_dir)
    except PrismError as exc:
        error = str(exc)
    return NodeReport(
        node=node_name(), data_fingerprint=fingerprint, data_error=error,
        evaluator_version=evaluator_version(), code_sha256=code_fingerprint(), torch_version=torch_version(),
        isolation=isolation_mode(),
    )  # fmt: skip


def mismatches(report: NodeReport, wanted: WorkerRequirements) -> list[InfrastructureFault]:
    """Every way ``report`` fails ``wanted`` (empty: the node may run the validator's tasks)."""
    problems = []
    if report.data_fingerprint != wanted.data_fingerprint:
        held = report.data_fingerprint or f"no prepared data ({report.data_error})"
        problems.append(InfrastructureFault(
            f"node {report.node} holds data {held} at {wanted.data_dir}, the validator's is "
            f"{wanted.data_fingerprint}: prepare the same data on every node", code="ray.data_mismatch",
        ))  # fmt: skip
    theirs = (report.evaluator_version, report.code_sha256, report.torch_version)
    ours = (wanted.evaluator_version, wanted.code_sha256, wanted.torch_version)
    if theirs != ours:
        problems.append(InfrastructureFault(
            f"node {report.node} runs prism {theirs[0]} (code {theirs[1][:16]}) with torch {theirs[2]}, the "
            f"validator prism {ours[0]} (code {ours[1][:16]}) with torch {ours[2]}: install the same "
            "prism and torch on every node", code="ray.version_mismatch",
        ))  # fmt: skip
    if wanted.isolation == "bwrap" and report.isolation != "bwrap":
        problems.append(InfrastructureFault(
            f"node {report.node} cannot start bubblewrap (its sandbox is {report.isolation}); "
            "install bubblewrap there", code="ray.sandbox_mismatch",
        ))  # fmt: skip
    return problems


def probe_node(requirements_json: str) -> str:
    """A Ray task pinned to one node: its ``NodeReport`` as JSON."""
    wanted = WorkerRequirements.model_validate_json(requirements_json)
    return describe_node(wanted.data_dir).model_dump_json()


def _infra(task: EvaluationTask, exc: PrismError, started: float, node: str) -> NodeResult:
    outcome = TaskOutcome(
        key=task.key, state="infra_fault", code=exc.code, message=exc.message,
        seconds=time.monotonic() - started, worker=node, paired=task.paired,
    )  # fmt: skip
    return NodeResult(outcome=outcome)


def _write_zip(task: EvaluationTask, zip_bytes: bytes, scratch: Path) -> Path:
    """The ZIP the task runs (a paired task's is the model's), checked against its sha256."""
    wanted = task.paired.request.model_zip_sha256 if task.paired is not None else task.key.zip_sha256
    actual = hashlib.sha256(zip_bytes).hexdigest()
    if actual != wanted:
        raise InfrastructureFault(
            f"the ZIP received for {task.label} has sha256 {actual}, expected {wanted}",
            code="ray.zip_mismatch",
        )
    path = scratch / f"{actual}.zip"
    path.write_bytes(zip_bytes)
    return path


#: A paired task's payload as it arrives: its description (JSON) and the files' bytes
#: (model manifest, weights, challenger manifest).
PairedArrival = tuple[str, tuple[bytes, bytes, bytes]]


def _remeasure_here(
    job: PairedJob, local: EvaluationTask, paired: PairedArrival | None, scratch: Path, worker: str,
    architecture: Path | None,
) -> NodeResult:  # fmt: skip
    """A paired task: land its files, re-measure, answer in the validator's terms (its paths)."""
    if paired is None:
        raise InfrastructureFault(f"{local.label} arrived without its files", code="ray.payload_mismatch")
    payload_json, files = paired
    here = land_paired(job, PairedPayload.model_validate_json(payload_json), files, zip_path=local.zip_path,
                       architecture_zip=architecture, scratch=scratch, label=local.label)  # fmt: skip
    outcome = run_task(local.model_copy(update={"paired": here}))
    return NodeResult(outcome=outcome.model_copy(update={"worker": worker, "paired": job}))


def _evaluate_here(
    task: EvaluationTask, zip_bytes: bytes, scratch: Path, max_bytes: int, paired: PairedArrival | None,
    architecture: tuple[str, bytes] | None,
) -> tuple[NodeResult, bytes]:  # fmt: skip
    from prism.evaluator.plan import default_calibration_dir

    zip_path = _write_zip(task, zip_bytes, scratch)
    architecture_zip = land_architecture(task, architecture, scratch)
    local = task.model_copy(update={
        "zip_path": zip_path, "runs_dir": scratch / "runs", "calibration_dir": default_calibration_dir(),
        "slots": (), "architecture_zip_path": None if task.paired is not None else architecture_zip,
    })  # fmt: skip
    worker = f"ray node {node_name()} pid {os.getpid()}"
    if task.paired is not None:  # no run directory: only the outcome (per-window nats) goes back
        return _remeasure_here(task.paired, local, paired, scratch, worker, architecture_zip), b""
    outcome = run_task(local).model_copy(update={"worker": worker})
    run_dirs = (
        sorted(p for p in local.runs_dir.glob("run-*") if p.is_dir()) if local.runs_dir.is_dir() else []
    )
    if len(run_dirs) != 1:
        return NodeResult(outcome=outcome), b""
    archive = pack_run_dir(run_dirs[0], max_bytes=max_bytes)
    return NodeResult(outcome=outcome, run_id=run_dirs[0].name), archive


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale_scratch(root: Path) -> list[Path]:
    """Remove the scratch of runs whose worker died mid-run (``task-<pid>-...`` with no such pid)."""
    removed = []
    for path in sorted(root.glob("task-*-*")) if root.is_dir() else []:
        pid = path.name.split("-")[1]
        if pid.isdigit() and not _alive(int(pid)):
            remove_tree(path)
            removed.append(path)
            logger.info("removed the scratch %s of a worker that died mid-run", path)
    return removed


def run_on_node(
    task_json: str, zip_bytes: bytes, requirements_json: str, max_result_bytes: int,
    paired_json: str | None = None, model_manifest: bytes = b"", weights: bytes = b"",
    challenger_manifest: bytes = b"", *, architecture_json: str | None = None, architecture_zip: bytes = b"",
) -> tuple[str, bytes]:  # fmt: skip
    """A Ray task: evaluate one cell (or, with ``paired_json`` and the files it describes, one
    paired re-measurement) on this node; a training variant's with its canonical ZIP
    (``architecture_zip``, described by a ``ShippedFile`` in ``architecture_json``). Returns
    (``NodeResult`` JSON, run dir tar; empty for a paired task)."""
    from prism.evaluator.plan import cache_dir
    from prism.workers.worker import die_with_parent

    die_with_parent()
    started = time.monotonic()
    task = EvaluationTask.model_validate_json(task_json)
    wanted = WorkerRequirements.model_validate_json(requirements_json)
    scratch_root = cache_dir() / "ray-scratch"
    sweep_stale_scratch(scratch_root)
    scratch = scratch_root / f"task-{os.getpid()}-{uuid.uuid4().hex[:12]}"
    node = node_name()
    try:
        problems = mismatches(describe_node(wanted.data_dir), wanted)
        if problems:
            raise problems[0]
        scratch.mkdir(parents=True)
        paired = (paired_json, (model_manifest, weights, challenger_manifest)) if paired_json else None
        architecture = (architecture_json, architecture_zip) if architecture_json is not None else None
        result, archive = _evaluate_here(task, zip_bytes, scratch, max_result_bytes, paired, architecture)
    except PrismError as exc:
        result, archive = _infra(task, exc, started, node), b""
    except OSError as exc:  # the node's scratch disk, not the run
        fault = InfrastructureFault(
            f"node {node} could not use its scratch {scratch}: {exc}", code="ray.scratch"
        )
        result, archive = _infra(task, fault, started, node), b""
    finally:
        remove_tree(scratch)
    return result.model_dump_json(), archive


__all__ = [
    "NodeReport",
    "NodeResult",
    "WorkerRequirements",
    "code_fingerprint",
    "data_fingerprint",
    "describe_node",
    "mismatches",
    "probe_node",
    "run_on_node",
    "sweep_stale_scratch",
]
