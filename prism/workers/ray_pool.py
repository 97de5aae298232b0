"""The evaluation pool on a Ray cluster (host side): the same interface as ``LocalPool``.

    pool = RayPool.connect("10.0.0.1:6379", device="cuda", data_dir=data_dir)
    pool.submit(task, slots_needed=2)   # a Ray task asking for 2 GPUs on one node
    outcomes = pool.poll()              # never blocks

Each run is one Ray task (:func:`prism.workers.ray_node.run_on_node`) that asks for the devices
it needs (``num_gpus`` = the slots it takes on CUDA profiles, ``cpus_per_slot`` CPUs per slot on
CPU profiles) and runs the same sandboxed ``run_task`` on its node, under that node's bubblewrap.
The ZIP travels as a Ray object keyed by its sha256 (one per submission, shared by its cells,
checked by the node before use). The node ships the run directory back as a tar; the pool writes
it to ``task.runs_dir/<run_id>`` and checks the manifest's sha256 there, so outcomes name the local
copy. The pool's slots are logical (``workers``; by default what the cluster can run at once):
Ray decides where each task runs and which GPUs it sees.

Ray never retries a run (``max_retries=0``): a worker or node lost mid-run is an ``infra_fault``
outcome with code ``ray.worker_lost`` and the validator's own retry logic re-queues it. When the
validator exits, Ray ends its job, and with it every task still running. Ray is optional
(``pip install 'prism-subnet[ray]'``) and imported only when a pool connects.
"""

from __future__ import annotations

import hashlib
import logging
import signal
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from prism.errors import InfrastructureFault, OperatorError
from prism.manifest import MANIFEST_FILENAME
from prism.store import RunKey
from prism.workers import ray_node
from prism.workers.run_archive import DEFAULT_MAX_RESULT_BYTES, unpack_run_dir
from prism.workers.slots import DeviceSlot
from prism.workers.tasks import EvaluationTask, TaskOutcome

logger = logging.getLogger(__name__)

Device = Literal["cpu", "cuda"]


def import_ray() -> Any:
    """Ray, or a clear error naming the extra that installs it."""
    try:
        import ray
    except ImportError as exc:
        raise OperatorError(
            "--evaluation.backend ray needs Ray: pip install 'prism-subnet[ray]'", code="ray.not_installed"
        ) from exc
    return ray


@dataclass
class _Running:
    task: EvaluationTask
    ref: Any  # ray.ObjectRef of (NodeResult JSON, run dir tar)
    started: float


def _lost_codes(ray: Any) -> tuple[type[BaseException], ...]:
    ex = ray.exceptions
    return (
        ex.WorkerCrashedError,
        ex.NodeDiedError,
        ex.LocalRayletDiedError,
        ex.ObjectLostError,
        ex.OutOfMemoryError,
    )


class RayPool:
    """``submit`` / ``poll`` / ``shutdown`` over Ray tasks; see the module docstring."""

    name = "ray"

    def __init__(
        self, *, ray: Any, slots: list[DeviceSlot], requirements: ray_node.WorkerRequirements,
        largest_node: float, cpus_per_slot: float = 1.0, max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES,
        owns_connection: bool = False,
    ) -> None:  # fmt: skip
        self._ray = ray
        self.slots = list(slots)
        self.requirements = requirements
        self.largest_node = largest_node
        self.cpus_per_slot = cpus_per_slot
        self.max_result_bytes = max_result_bytes
        self._owns_connection = owns_connection
        self._remote = ray.remote(max_calls=1)(ray_node.run_on_node)
        self._running: dict[int, _Running] = {}
        self._ready: list[tuple[EvaluationTask, TaskOutcome]] = []  # failed at submit; out at the next poll
        self._zips: dict[str, tuple[Any, int]] = {}  # zip sha256 -> (ray object, tasks using it)
        self._next = 0
        self.node_ids: list[str] = []  # the nodes able to run a task when the pool connected

    @property
    def device(self) -> Device:
        return self.slots[0].kind

    @classmethod
    def connect(
        cls, address: str, *, device: Device, data_dir: Path, data_fingerprint: str | None = None,
        workers: int | None = None, cpus_per_slot: float = 1.0, max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES,
        check_nodes: bool = True, probe_timeout_s: float = 120.0,
    ) -> RayPool:  # fmt: skip
        """Join the cluster at ``address`` (``host:port`` of its head) and check its nodes.

        ``data_fingerprint`` defaults to the sha256 of ``data_dir``'s MANIFEST.json on this
        machine. ``workers`` caps the runs in flight (default: the cluster's GPUs on CUDA, its
        CPUs / ``cpus_per_slot`` on CPU). With ``check_nodes`` every node able to run a task must
        hold the same data, evaluator version, torch and bubblewrap, else ``OperatorError``.
        """
        ray = import_ray()
        requirements = ray_node.WorkerRequirements(
            data_dir=Path(data_dir).resolve(),
            data_fingerprint=data_fingerprint or ray_node.data_fingerprint(Path(data_dir)),
            evaluator_version=ray_node.evaluator_version(), code_sha256=ray_node.code_fingerprint(),
            torch_version=ray_node.torch_version(), isolation=ray_node.isolation_mode(),
        )  # fmt: skip
        owns = _join(ray, address)
        try:
            pool = cls._build(
                ray, address, device, requirements, workers, cpus_per_slot, max_result_bytes, owns
            )
            if check_nodes:
                pool.check_nodes(pool.node_ids, timeout_s=probe_timeout_s)
        except Exception:
            if owns:
                ray.shutdown()
            raise
        logger.info(
            "Ray pool at %s: %d %s slots on %d nodes", address, len(pool.slots), device, len(pool.node_ids)
        )
        return pool

    @classmethod
    def _build(
        cls, ray: Any, address: str, device: Device, requirements: ray_node.WorkerRequirements,
        workers: int | None, cpus_per_slot: float, max_result_bytes: int, owns: bool,
    ) -> RayPool:  # fmt: skip
        nodes = _capable_nodes(ray, device, cpus_per_slot)
        resource, per_slot = ("GPU", 1.0) if device == "cuda" else ("CPU", cpus_per_slot)
        capacity = workers or int(sum(n["Resources"].get(resource, 0) for n in nodes) // per_slot)
        if capacity < 1 or not nodes:
            raise OperatorError(
                f"the Ray cluster at {address} has no live node with {per_slot:g} {resource} for a {device} run",
                code="ray.no_resources",
            )
        pool = cls(
            ray=ray, slots=[DeviceSlot(kind=device, index=i) for i in range(capacity)], requirements=requirements,
            largest_node=max(n["Resources"].get(resource, 0) for n in nodes), cpus_per_slot=cpus_per_slot,
            max_result_bytes=max_result_bytes, owns_connection=owns,
        )  # fmt: skip
        pool.node_ids = [n["NodeID"] for n in nodes]
        return pool

    def check_nodes(self, node_ids: list[str], *, timeout_s: float = 120.0) -> None:
        """Probe each node (a task pinned to it); ``OperatorError`` naming every node that differs."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        probe = self._ray.remote(ray_node.probe_node)
        wanted = self.requirements.model_dump_json()
        refs = [
            probe.options(num_cpus=0, max_retries=0,
                          scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False)).remote(wanted)
            for node_id in node_ids
        ]  # fmt: skip
        try:
            reports = [
                ray_node.NodeReport.model_validate_json(r) for r in self._ray.get(refs, timeout=timeout_s)
            ]
        except self._ray.exceptions.RayError as exc:
            raise OperatorError(f"probing the Ray nodes failed: {exc}", code="ray.probe_failed") from exc
        problems = [p for report in reports for p in ray_node.mismatches(report, self.requirements)]
        if problems:
            raise OperatorError("; ".join(p.message for p in problems), code=problems[0].code)

    # -- the pool interface ------------------------------------------------------------------

    def free_slots(self) -> list[DeviceSlot]:
        busy = {s.index for r in self._running.values() for s in r.task.slots}
        return [s for s in self.slots if s.index not in busy]

    def in_flight(self) -> list[EvaluationTask]:
        return [r.task for r in self._running.values()] + [task for task, _ in self._ready]

    def submit(self, task: EvaluationTask, slots_needed: int = 1) -> bool:
        """Start ``task`` as a Ray task on ``slots_needed`` free slots; False when too few are free."""
        self._check_feasible(task, slots_needed)
        free = self.free_slots()
        if len(free) < slots_needed:
            return False
        task = task.model_copy(update={"slots": tuple(free[:slots_needed])})
        try:
            zip_ref = self._hold_zip(task)
        except InfrastructureFault as exc:
            self._ready.append((task, _fault(task, exc, time.monotonic())))
            return True
        ref = self._remote.options(
            num_cpus=self.cpus_per_slot * slots_needed, num_gpus=slots_needed if self.device == "cuda" else 0,
            max_retries=0, retry_exceptions=False, name=f"prism-eval {task.label}",
        ).remote(task.model_dump_json(), zip_ref, self._requirements_for(task), self.max_result_bytes)  # fmt: skip
        self._next += 1
        self._running[self._next] = _Running(task, ref, time.monotonic())
        logger.info("submitted %s to Ray (%d %s slots)", task.label, slots_needed, self.device)
        return True

    def poll(self) -> list[TaskOutcome]:
        """Outcomes of the runs that ended since the last call (never blocks on a run)."""
        done = [outcome for _, outcome in self._ready]
        self._ready = []
        if not self._running:
            return done
        ids = list(self._running)
        refs = [self._running[i].ref for i in ids]
        ready, _ = self._ray.wait(refs, num_returns=len(refs), timeout=0, fetch_local=True)
        finished = set(ready)
        for i, ref in zip(ids, refs, strict=True):
            if ref in finished:
                running = self._running.pop(i)
                done.append(self._collect(running))
                self._release_zip(running.task.key.zip_sha256)
        return done

    def shutdown(self) -> list[RunKey]:
        """Cancel every run (Ray kills their workers, their sandboxes die with them); their keys."""
        keys = [r.task.key for r in self._running.values()] + [task.key for task, _ in self._ready]
        for running in self._running.values():
            try:
                self._ray.cancel(running.ref, force=True)
            except self._ray.exceptions.RayError as exc:
                logger.warning("could not cancel %s: %s", running.task.label, exc)
        self._running.clear()
        self._ready.clear()
        self._zips.clear()
        if self._owns_connection:
            self._ray.shutdown()
        return keys

    # -- internals ---------------------------------------------------------------------------

    def _check_feasible(self, task: EvaluationTask, slots_needed: int) -> None:
        need = slots_needed * (1.0 if self.device == "cuda" else self.cpus_per_slot)
        if slots_needed > len(self.slots) or need > self.largest_node:
            raise OperatorError(
                f"{task.label} needs {slots_needed} {self.device} slots on one node; the pool has "
                f"{len(self.slots)} and its largest Ray node {self.largest_node:g}", code="ray.infeasible",
            )  # fmt: skip

    def _requirements_for(self, task: EvaluationTask) -> str:
        wanted = self.requirements.model_copy(update={
            "data_dir": task.data_dir, "data_fingerprint": task.data_fingerprint or self.requirements.data_fingerprint,
        })  # fmt: skip
        return wanted.model_dump_json()

    def _hold_zip(self, task: EvaluationTask) -> Any:
        """The ZIP as a Ray object keyed by its sha256 (read and checked once per submission)."""
        sha = task.key.zip_sha256
        if sha in self._zips:
            ref, users = self._zips[sha]
            self._zips[sha] = (ref, users + 1)
            return ref
        try:
            data = task.zip_path.read_bytes()
        except OSError as exc:
            raise InfrastructureFault(
                f"cannot read {task.zip_path}: {exc}", code="ray.zip_unreadable"
            ) from exc
        actual = hashlib.sha256(data).hexdigest()
        if actual != sha:
            raise InfrastructureFault(
                f"{task.zip_path} has sha256 {actual}, its run key says {sha}", code="ray.zip_mismatch"
            )
        ref = self._ray.put(data)
        self._zips[sha] = (ref, 1)
        return ref

    def _release_zip(self, sha: str) -> None:
        ref, users = self._zips.get(sha, (None, 0))
        if users <= 1:
            self._zips.pop(sha, None)  # dropping the last reference frees the object
        else:
            self._zips[sha] = (ref, users - 1)

    def _collect(self, running: _Running) -> TaskOutcome:
        ray = self._ray
        try:
            result_json, archive = ray.get(running.ref)
            return _land(
                running.task,
                ray_node.NodeResult.model_validate_json(result_json),
                archive,
                self.max_result_bytes,
            )
        except _lost_codes(ray) as exc:
            fault = InfrastructureFault(
                f"the Ray worker running {running.task.label} was lost: {exc}", code="ray.worker_lost"
            )
        except ray.exceptions.TaskCancelledError as exc:
            fault = InfrastructureFault(f"{running.task.label} was cancelled: {exc}", code="ray.cancelled")
        except ray.exceptions.RayError as exc:
            fault = InfrastructureFault(
                f"the Ray task for {running.task.label} failed: {exc}", code="ray.task_failed"
            )
        except InfrastructureFault as exc:
            fault = exc
        except (OSError, ValueError) as exc:
            fault = InfrastructureFault(
                f"cannot store the result of {running.task.label}: {exc}", code="ray.result_corrupt"
            )
        logger.warning("%s", fault)
        return _fault(running.task, fault, running.started)


def _fault(task: EvaluationTask, exc: InfrastructureFault, started: float) -> TaskOutcome:
    return TaskOutcome(
        key=task.key, state="infra_fault", code=exc.code, message=exc.message[:2000],
        seconds=time.monotonic() - started, worker="ray",
    )  # fmt: skip


def _land(task: EvaluationTask, result: ray_node.NodeResult, archive: bytes, max_bytes: int) -> TaskOutcome:
    """Write the shipped run dir into the validator's store; the outcome names the local manifest."""
    outcome = result.outcome
    if outcome.key != task.key:
        raise InfrastructureFault(
            f"a worker answered {task.label} with another run's outcome", code="ray.result_corrupt"
        )
    if result.run_id is None or not archive:
        if outcome.state == "finished":
            raise InfrastructureFault(
                f"{task.label} finished without its run directory", code="ray.result_corrupt"
            )
        return outcome
    run_dir = unpack_run_dir(archive, task.runs_dir, result.run_id, max_bytes=max_bytes)
    if outcome.state != "finished":
        return outcome
    manifest = run_dir / MANIFEST_FILENAME
    actual = hashlib.sha256(manifest.read_bytes()).hexdigest()
    if actual != outcome.manifest_sha256:
        raise InfrastructureFault(
            f"{manifest} has sha256 {actual}, the worker reported {outcome.manifest_sha256}",
            code="ray.result_corrupt",
        )
    return outcome.model_copy(update={"manifest_path": manifest})


def _check_reachable(address: str, timeout_s: float = 10.0) -> None:
    """A TCP connect to the head first: ``ray.init`` waits minutes on an address nobody serves."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise OperatorError(
            f"--evaluation.ray_address must be HOST:PORT, got {address!r}", code="ray.bad_address"
        )
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            pass
    except OSError as exc:
        raise OperatorError(
            f"nothing answers at the Ray head {address}: {exc}", code="ray.unreachable"
        ) from exc


def _join(ray: Any, address: str) -> bool:
    """Connect this process to the cluster (True when this call did); keeps our SIGTERM handler."""
    if ray.is_initialized():
        return False
    _check_reachable(address)
    previous = signal.getsignal(signal.SIGTERM)
    try:
        ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING, namespace="prism")
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise OperatorError(
            f"cannot join the Ray cluster at {address}: {exc}", code="ray.unreachable"
        ) from exc
    finally:
        signal.signal(signal.SIGTERM, previous)  # ray.init replaces it with sys.exit
    return True


def _capable_nodes(ray: Any, device: Device, cpus_per_slot: float) -> list[dict[str, Any]]:
    """The live nodes that can run one slot's task."""
    resource, need = ("GPU", 1.0) if device == "cuda" else ("CPU", cpus_per_slot)
    return [n for n in ray.nodes() if n.get("Alive") and n["Resources"].get(resource, 0) >= need]


__all__ = ["RayPool", "import_ray"]
