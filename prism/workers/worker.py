"""A worker process: run one task and write its outcome (``python -m prism.workers.worker``).

    python -m prism.workers.worker --task task.json --outcome outcome.json

The local pool starts one per run. The worker dies with the validator (``PR_SET_PDEATHSIG``), and
its sandboxes die with it (bubblewrap's ``--die-with-parent``), so a SIGKILLed validator leaves
nothing running that could write into a run directory its successor re-uses. On CPU it pins
itself (and so its sandboxes) to its slot's cores. The outcome is written atomically; a worker
that exits without one failed on our side.
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import signal
import sys
from pathlib import Path

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Ask the kernel to SIGKILL this process when its parent dies (Linux; a no-op elsewhere)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the parent died before the request took effect
        os._exit(1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m prism.workers.worker")
    parser.add_argument("--task", type=Path, required=True)
    parser.add_argument("--outcome", type=Path, required=True)
    args = parser.parse_args(argv)
    die_with_parent()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s [worker] %(levelname)s %(name)s: %(message)s")
    from prism.workers.tasks import EvaluationTask, run_task

    task = EvaluationTask.model_validate_json(args.task.read_text(encoding="utf-8"))
    cpus = {c for slot in task.slots for c in slot.cpus}
    if cpus and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, cpus)
    outcome = run_task(task).model_copy(update={"worker": f"pid {os.getpid()}"})
    tmp = args.outcome.with_suffix(".tmp")
    tmp.write_text(outcome.model_dump_json(), encoding="utf-8")
    tmp.replace(args.outcome)
    return 0


if __name__ == "__main__":
    sys.exit(main())
