"""Host-side device facts: GPU names and health from ``nvidia-smi``, peak FLOP/s for MFU (no torch).

The host asks the driver itself (``nvidia-smi``, never a sandboxed process) which GPUs it has and
whether they answer. A failed run on a GPU whose health check then fails is ours
(``device.unhealthy``, see ``prism.evaluator.verdicts``). Peak dense bf16 FLOP/s per device name
turn the host-measured tokens/s into a model FLOPs utilisation.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass

#: Dense bf16 tensor-core peak, FLOP/s, by a substring of the device name (first match wins).
PEAK_BF16_FLOPS: tuple[tuple[str, float], ...] = (
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),
    ("GH200", 989e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("L4", 121e12),
    ("A10", 125e12),
    ("RTX 4090", 165e12),
    ("RTX 3090", 71e12),
)
_QUERY_TIMEOUT_S = 20


@dataclass(frozen=True)
class GpuHealth:
    ok: bool
    names: tuple[str, ...]
    detail: str


def peak_flops(device_name: str) -> float | None:
    for key, flops in PEAK_BF16_FLOPS:
        if key in device_name:
            return flops
    return None


def gpu_health() -> GpuHealth:
    """What the driver says about this machine's GPUs; ok=True with no names when there is no driver."""
    if shutil.which("nvidia-smi") is None:
        return GpuHealth(ok=True, names=(), detail="no nvidia-smi on this host")
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=_QUERY_TIMEOUT_S, check=False,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError) as exc:
        return GpuHealth(ok=False, names=(), detail=f"nvidia-smi failed: {exc}")
    names = tuple(line.strip() for line in out.stdout.splitlines() if line.strip())
    if out.returncode != 0 or not names:
        return GpuHealth(
            ok=False, names=names, detail=f"nvidia-smi exited {out.returncode}: {out.stderr.strip()[:300]}"
        )
    return GpuHealth(ok=True, names=names, detail="ok")


__all__ = ["PEAK_BF16_FLOPS", "GpuHealth", "gpu_health", "peak_flops"]
