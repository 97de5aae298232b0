"""Device slots: where one evaluation runs (host side, no torch).

A slot is a GPU index (made visible alone inside the run's sandbox: ``CUDA_VISIBLE_DEVICES`` and
only that GPU's device node) or, on CPU, a share of the cores (the worker pins itself and its
sandbox to them). A profile run with ``nproc_per_node`` > 1 takes that many slots at once.
"""

from __future__ import annotations

import os
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from prism.errors import OperatorError


class DeviceSlot(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["cpu", "cuda"]
    index: int = Field(ge=0, description="the slot's number; on CUDA the GPU index")
    cpus: tuple[int, ...] = Field(default=(), description="cores this slot may use (empty: no pinning)")

    def environment(self, group: list[DeviceSlot]) -> dict[str, str]:
        """Variables the worker sets for its run (the sandbox passes CUDA_VISIBLE_DEVICES through)."""
        if self.kind == "cuda":
            return {"CUDA_VISIBLE_DEVICES": ",".join(str(s.index) for s in group)}
        return {}


def _cpu_shares(workers: int) -> list[tuple[int, ...]]:
    cores = (
        sorted(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else list(range(os.cpu_count() or 1))
    )
    if workers >= len(cores):
        return [(cores[i % len(cores)],) for i in range(workers)]
    per = len(cores) // workers
    return [tuple(cores[i * per : (i + 1) * per]) for i in range(workers)]


def make_slots(
    device: Literal["cpu", "cuda"], *, workers: int, devices: str | None = None
) -> list[DeviceSlot]:
    """``--evaluation.workers N`` and ``--evaluation.devices 0,1,...`` as slots.

    On CUDA the slots are the listed GPU indexes (default ``0..N-1``); on CPU, ``N`` slots each
    pinned to an equal share of the cores this process may use.
    """
    if workers < 1:
        raise OperatorError("--evaluation.workers must be at least 1", code="config.workers")
    if device == "cuda":
        try:
            indexes = [int(x) for x in devices.split(",")] if devices else list(range(workers))
        except ValueError as exc:
            raise OperatorError(
                f"--evaluation.devices must list GPU indexes, got {devices!r}", code="config.devices"
            ) from exc
        if len(set(indexes)) != len(indexes) or any(i < 0 for i in indexes):
            raise OperatorError(
                f"--evaluation.devices has duplicate or negative indexes: {devices!r}", code="config.devices"
            )
        return [DeviceSlot(kind="cuda", index=i) for i in indexes]
    if devices:
        raise OperatorError(
            "--evaluation.devices lists GPUs; this profile runs on CPU", code="config.devices"
        )
    return [DeviceSlot(kind="cpu", index=i, cpus=share) for i, share in enumerate(_cpu_shares(workers))]


__all__ = ["DeviceSlot", "make_slots"]
