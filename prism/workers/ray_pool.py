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
copy. A paired re-measurement (``task.paired``) ships the model's ZIP the same way, plus the two
manifests and the model's weights (:mod:`prism.workers.ray_paired`: each checked on the node
against the sha256 and size the validator read, each at most ``max_payload_bytes``; the weights
are one object per model run while tasks use them), and gets back only its outcome. A training
variant's task also ships its family's canonical ZIP, keyed by the sha256 of its bytes. The pool's
slots are logical (``workers``; by default what the cluster can run at once): Ray decides where
each task runs and which GPUs it sees.

Ray never retries a run (``max_retries=0``): a worker or node lost mid-run is an ``infra_fault``
outcome with code ``ray.worker_lost`` and the validator's own retry logic re-queues it. When the
validator exits, Ray ends its job, and with it every task still running. Ray is optional
(``pip install 'prism-subnet[ray]'``) and imported only when a pool connects.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prism.errors import InfrastructureFault, OperatorError
from prism.manifest import MANIFEST_FILENAME
from prism.store import RunKey
from prism.workers import ray_node, ray_paired
from prism.workers.ray_connect import Device, capable_nodes, import_ray, join
from prism.workers.ray_paired import DEFAULT_MAX_PAYLOAD_BYTES, PairedPayload, ShippedFile, read_zip
from prism.workers.run_archive import DEFAULT_MAX_RESULT_BYTES, unpack_run_dir
from prism.workers.slots import DeviceSlot
from prism.workers.tasks import EvaluationTask, PairedJob, TaskOutcome

logger = logging.getLogger(__name__)


@dataclass
class _Running:
    task: EvaluationTask
    ref: Any  # ray.ObjectRef of (NodeResult JSON, run dir tar)
    started: float
    held: tuple[str, ...]  # the objects it uses (keys of RayPool._held)


@dataclass
class _Held:
    """A file put into Ray's object store once and shared by the tasks in flight that use it."""

    ref: Any
    file: ShippedFile
    users: int = 0


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
        owns_connection: bool = False, max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
    ) -> None:  # fmt: skip
        self._ray = ray
        self.slots = list(slots)
        self.requirements = requirements
        self.largest_node = largest_node
        self.cpus_per_slot = cpus_per_slot
        self.max_result_bytes = max_result_bytes
        self.max_payload_bytes = max_payload_bytes
        self._owns_connection = owns_connection
        self._remote = ray.remote(max_calls=1)(ray_node.run_on_node)
        self._running: dict[int, _Running] = {}
        self._ready: list[tuple[EvaluationTask, TaskOutcome]] = []  # failed at submit; out at the next poll
        self._held: dict[str, _Held] = {}  # "zip:<sha256>" / "weights:<path>" -> the object
        self._next = 0
        self.node_ids: list[str] = []  # the nodes able to run a task when the pool connected

    @property
    def device(self) -> Device:
        return self.slots[0].kind

    @classmethod
    def connect(
        cls, address: str, *, device: Device, data_dir: Path, data_fingerprint: str | None = None,
        workers: int | None = None, cpus_per_slot: float = 1.0, max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES,
        check_nodes: bool = True, probe_timeout_s: float = 120.0, max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
    ) -> RayPool:  # fmt: skip
        """Join the cluster at ``address`` (``host:port`` of its head) and check its nodes.

        ``data_fingerprint`` defaults to the sha256 of ``data_dir``'s MANIFEST.json on this
        machine. ``workers`` caps the runs in flight (default: the cluster's GPUs on CUDA, its
        CPUs / ``cpus_per_slot`` on CPU). With ``check_nodes`` every node able to run a task must
        hold the same data, evaluator version, torch and bubblewrap, else ``OperatorError``.
        ``max_result_bytes`` bounds a run directory shipped back, ``max_payload_bytes`` each file
        a paired task ships to a node (the model's weights).
        """
        ray = import_ray()
        requirements = ray_node.WorkerRequirements(
            data_dir=Path(data_dir).resolve(),
            data_fingerprint=data_fingerprint or ray_node.data_fingerprint(Path(data_dir)),
            evaluator_version=ray_node.evaluator_version(), code_sha256=ray_node.code_fingerprint(),
            torch_version=ray_node.torch_version(), isolation=ray_node.isolation_mode(),
        )  # fmt: skip
        owns = join(ray, address)
        try:
            pool = cls._build(
                ray, address, device, requirements, workers, cpus_per_slot, max_result_bytes, max_payload_bytes, owns
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
        workers: int | None, cpus_per_slot: float, max_result_bytes: int, max_payload_bytes: int, owns: bool,
    ) -> RayPool:  # fmt: skip
        nodes = capable_nodes(ray, device, cpus_per_slot)
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
            max_result_bytes=max_result_bytes, max_payload_bytes=max_payload_bytes, owns_connection=owns,
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
            arguments, extra, held = self._arguments(task)
        except InfrastructureFault as exc:
            self._ready.append((task, _fault(task, exc, time.monotonic())))
            return True
        ref = self._remote.options(
            num_cpus=self.cpus_per_slot * slots_needed, num_gpus=slots_needed if self.device == "cuda" else 0,
            max_retries=0, retry_exceptions=False, name=f"prism-eval {task.label}",
        ).remote(task.model_dump_json(), *arguments, **extra)  # fmt: skip
        self._next += 1
        self._running[self._next] = _Running(task, ref, time.monotonic(), held)
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
                for key in running.held:
                    self._release(key)
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
        self._held.clear()
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

    def _arguments(self, task: EvaluationTask) -> tuple[list[Any], dict[str, Any], tuple[str, ...]]:
        """The Ray task's arguments after the task's JSON (positional, keyword) and the held
        objects they use (let go again when reading one of them fails)."""
        held: list[str] = []
        try:
            if task.paired is not None:
                arguments = self._paired_arguments(task, task.paired, held)
            else:
                sha = task.key.zip_sha256
                held.append(self._hold(f"zip:{sha}", lambda: read_zip(task.zip_path, sha)))
                arguments = [self._held[held[0]].ref, self._requirements_for(task), self.max_result_bytes]
            extra = self._architecture_arguments(task, held)
        except InfrastructureFault:
            for key in held:
                self._release(key)
            raise
        return arguments, extra, tuple(held)

    def _paired_arguments(self, task: EvaluationTask, job: PairedJob, held: list[str]) -> list[Any]:
        """The model's ZIP and weights (held objects), both manifests, and what the node checks."""
        sha, weights = job.request.model_zip_sha256, ray_paired.weights_path(job.model_manifest_path.parent)
        held.append(self._hold(f"zip:{sha}", lambda: read_zip(job.model_zip_path, sha)))
        held.append(self._hold(f"weights:{weights}", lambda: ray_paired.read_shipped(
            weights, what=f"the weights of run {job.request.model_run_id}", max_bytes=self.max_payload_bytes,
            missing_code="paired.no_weights")))  # fmt: skip
        model, challenger = ray_paired.read_manifests(job, self.max_payload_bytes)
        zip_held, weights_held = self._held[held[0]], self._held[held[1]]
        payload = PairedPayload(model_manifest=ShippedFile.of(model), weights=weights_held.file,
                                challenger_manifest=ShippedFile.of(challenger))  # fmt: skip
        return [zip_held.ref, self._requirements_for(task), self.max_result_bytes, payload.model_dump_json(),
                model, weights_held.ref, challenger]  # fmt: skip

    def _architecture_arguments(self, task: EvaluationTask, held: list[str]) -> dict[str, Any]:
        """A training variant's canonical ZIP (a held object keyed by the sha256 of its bytes,
        never by its file name) and its description, for the node to check."""
        path = ray_paired.architecture_zip_of(task)
        if path is None:
            return {}
        data, file = read_zip(path)
        held.append(self._hold(f"zip:{file.sha256}", lambda: (data, file)))
        return {"architecture_json": file.model_dump_json(), "architecture_zip": self._held[held[-1]].ref}

    def _hold(self, key: str, read: Callable[[], tuple[bytes, ShippedFile]]) -> str:
        """Put a file into Ray's object store once (read and checked once) while tasks use it."""
        held = self._held.get(key)
        if held is None:
            data, file = read()
            held = self._held[key] = _Held(ref=self._ray.put(data), file=file)
        held.users += 1
        return key

    def _release(self, key: str) -> None:
        held = self._held.get(key)
        if held is not None:
            held.users -= 1
            if held.users <= 0:
                del self._held[key]  # dropping the last reference frees the object

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
        seconds=time.monotonic() - started, worker="ray", paired=task.paired,
    )  # fmt: skip


def _land_paired(task: EvaluationTask, outcome: TaskOutcome) -> TaskOutcome:
    """A re-measurement's outcome, as the node sent it (it names the validator's paths)."""
    measured = len(outcome.nats) == len(outcome.window_bytes) > 0
    if outcome.paired != task.paired or (outcome.state == "finished" and not measured):
        raise InfrastructureFault(
            f"a worker answered {task.label} with something else than its re-measurement",
            code="ray.result_corrupt",
        )
    return outcome


def _land(task: EvaluationTask, result: ray_node.NodeResult, archive: bytes, max_bytes: int) -> TaskOutcome:
    """Write the shipped run dir into the validator's store; the outcome names the local manifest."""
    outcome = result.outcome
    if outcome.key != task.key:
        raise InfrastructureFault(
            f"a worker answered {task.label} with another run's outcome", code="ray.result_corrupt"
        )
    if task.paired is not None:
        return _land_paired(task, outcome)
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


__all__ = ["RayPool", "import_ray"]
