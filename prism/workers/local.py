"""A pool of worker processes on this machine, one per device slot (host side).

The validator loop calls :meth:`LocalPool.submit` while slots are free and :meth:`poll` every
step; neither blocks on a run. Each run is a fresh ``python -m prism.workers.worker`` process with
its slots' environment (one GPU visible, or pinned cores) that dies with the validator. A worker
that ends without writing its outcome failed on our side (``worker.crashed``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from prism.store import RunKey
from prism.workers.slots import DeviceSlot
from prism.workers.tasks import EvaluationTask, TaskOutcome

logger = logging.getLogger(__name__)


@dataclass
class _Running:
    task: EvaluationTask
    process: subprocess.Popen[bytes]
    outcome_path: Path
    started: float


class LocalPool:
    """``submit`` / ``poll`` / ``shutdown`` over worker processes, one run per slot group."""

    name = "local"

    def __init__(self, slots: list[DeviceSlot], work_dir: Path) -> None:
        self.slots = list(slots)
        self.work_dir = work_dir
        work_dir.mkdir(parents=True, exist_ok=True)
        self._running: dict[str, _Running] = {}

    @property
    def busy_slots(self) -> set[int]:
        return {s.index for r in self._running.values() for s in r.task.slots}

    def free_slots(self) -> list[DeviceSlot]:
        busy = self.busy_slots
        return [s for s in self.slots if s.index not in busy]

    def in_flight(self) -> list[EvaluationTask]:
        return [r.task for r in self._running.values()]

    def submit(self, task: EvaluationTask, slots_needed: int = 1) -> bool:
        """Start ``task`` on the first free slots; False (nothing started) when too few are free."""
        free = self.free_slots()
        if len(free) < slots_needed:
            return False
        group = free[:slots_needed]
        task = task.model_copy(update={"slots": tuple(group)})
        name = f"task-{uuid.uuid4().hex[:12]}"
        task_path, outcome_path = self.work_dir / f"{name}.json", self.work_dir / f"{name}.outcome.json"
        task_path.write_text(task.model_dump_json(), encoding="utf-8")
        env = os.environ | group[0].environment(group)
        with (self.work_dir / f"{name}.log").open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "prism.workers.worker", "--task", str(task_path), "--outcome", str(outcome_path)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True,
            )  # fmt: skip
        self._running[name] = _Running(task, process, outcome_path, time.monotonic())
        logger.info(
            "started %s on %s (worker pid %d)",
            task.label,
            ",".join(f"{s.kind}:{s.index}" for s in group),
            process.pid,
        )
        return True

    def poll(self) -> list[TaskOutcome]:
        """Outcomes of the runs that ended since the last call (never blocks)."""
        done = []
        for name, running in list(self._running.items()):
            if running.process.poll() is None:
                continue
            del self._running[name]
            done.append(self._outcome(running))
        return done

    def _outcome(self, running: _Running) -> TaskOutcome:
        try:
            return TaskOutcome.model_validate_json(running.outcome_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            code = running.process.returncode
            return TaskOutcome(
                key=running.task.key, state="infra_fault", code="worker.crashed",
                message=f"the evaluation worker exited with {code} and no outcome", seconds=time.monotonic() - running.started,
                paired=running.task.paired,
            )  # fmt: skip

    def shutdown(self) -> list[RunKey]:
        """Kill every worker (and with it its sandboxes); the keys of the runs that were in flight."""
        keys = [r.task.key for r in self._running.values()]
        for running in self._running.values():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(running.process.pid, signal.SIGKILL)
        for running in self._running.values():
            running.process.wait()
        self._running.clear()
        return keys


__all__ = ["LocalPool"]
