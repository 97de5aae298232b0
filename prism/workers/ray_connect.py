"""Joining a Ray cluster from the validator (Ray itself is imported only here, and only on use).

Ray is optional (``pip install 'prism-subnet[ray]'``): ``import_ray`` names the extra when it is
missing. ``join`` checks the head answers on TCP first (``ray.init`` waits minutes on an address
nobody serves) and keeps the validator's SIGTERM handler, which ``ray.init`` replaces.
"""

from __future__ import annotations

import logging
import signal
import socket
from typing import Any, Literal

from prism.errors import OperatorError

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


def join(ray: Any, address: str) -> bool:
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


def capable_nodes(ray: Any, device: Device, cpus_per_slot: float) -> list[dict[str, Any]]:
    """The live nodes that can run one slot's task."""
    resource, need = ("GPU", 1.0) if device == "cuda" else ("CPU", cpus_per_slot)
    return [n for n in ray.nodes() if n.get("Alive") and n["Resources"].get(resource, 0) >= need]


__all__ = ["Device", "capable_nodes", "import_ray", "join"]
