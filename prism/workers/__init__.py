"""Evaluation workers: each run is one task, executed off the validator's loop.

``tasks.py`` holds the typed task and its outcome and the function a worker runs; ``slots.py``
the device slots (a GPU, or a share of the CPU cores); ``local.py`` a pool of worker processes on
this machine; ``ray_pool.py`` the same on a Ray cluster. The validator loop only submits tasks and
collects outcomes, so it keeps syncing, scoring and setting weights while runs are in flight.
"""

from prism.workers.slots import DeviceSlot, make_slots
from prism.workers.tasks import EvaluationTask, TaskOutcome, run_task

__all__ = ["DeviceSlot", "EvaluationTask", "TaskOutcome", "make_slots", "run_task"]
