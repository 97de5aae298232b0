"""A one-machine Ray cluster for tests, benchmarks and demos (never needed in production).

    with LocalRayHead.start(root, num_cpus=2) as head:
        pool = RayPool.connect(head.address, device="cpu", data_dir=data_dir)

``ray start --head --block`` runs in a process group of its own with a private temp dir, free
ports for everything that would otherwise take a fixed one, no dashboard and a small object
store. Every Ray process it starts inherits ``PRISM_CACHE_DIR=<root>/cache``, which marks them as
this cluster's: ``stop`` kills the group and then, by pid, every process that still carries the
mark (Ray's workers run in process groups of their own). ``ray stop`` is not used, since it ends
every Ray process of the user on the machine, other people's clusters included.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from prism.errors import InfrastructureFault

#: Ray's components that would otherwise take a fixed or self-chosen port. Ray refuses to start
#: when two of them meet on one port, so they are all given distinct free ones.
PORT_FLAGS = (
    "ray-client-server-port", "dashboard-port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
    "metrics-export-port", "runtime-env-agent-port", "node-manager-port", "object-manager-port",
)  # fmt: skip
START_ATTEMPTS = 3


def _free_ports(count: int) -> list[int]:
    """``count`` distinct free ports: every socket stays bound until all are chosen."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for s in sockets:
            s.close()


def marked_pids(marker: str) -> list[int]:
    """Processes (not this one) whose environment or command line contains ``marker``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            seen = (entry / "environ").read_bytes() + (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if marker.encode() in seen:
            pids.append(int(entry.name))
    return pids


@dataclass
class LocalRayHead:
    address: str
    root: Path
    process: subprocess.Popen[bytes]

    @property
    def cache_dir(self) -> Path:
        """``PRISM_CACHE_DIR`` of every process of this cluster (its nodes' scratch lives here)."""
        return self.root / "cache"

    @classmethod
    def start(cls, root: Path, *, num_cpus: int = 2, object_store_bytes: int = 100 << 20) -> LocalRayHead:
        """Start the head and wait until it accepts drivers. ``root`` must be a short path (Ray's
        Unix sockets live under it). A start that fails (a port taken meanwhile) is retried."""
        root.mkdir(parents=True, exist_ok=True)
        failure = ""
        for _ in range(START_ATTEMPTS):
            head, failure = cls._start_once(root, num_cpus, object_store_bytes)
            if head is not None:
                return head
        raise InfrastructureFault(f"the local Ray head did not start: {failure}", code="ray.head_failed")

    @classmethod
    def _start_once(
        cls, root: Path, num_cpus: int, object_store_bytes: int
    ) -> tuple[LocalRayHead | None, str]:
        env = os.environ | {
            "PRISM_CACHE_DIR": str(root / "cache"), "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1",
        }  # fmt: skip
        ports = [
            f"--{flag}={port}" for flag, port in zip(PORT_FLAGS, _free_ports(len(PORT_FLAGS)), strict=True)
        ]
        command = [
            sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block", "--port=0",
            f"--num-cpus={num_cpus}", "--num-gpus=0", f"--object-store-memory={object_store_bytes}",
            "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={root / 'ray'}", *ports,
        ]  # fmt: skip
        log = root / "head.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        head = cls(address="", root=root, process=process)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            text = log.read_text(errors="replace")
            found = re.search(r"--address='([^']+)'", text)
            if found and "Ray runtime started" in text:
                head.address = found.group(1)
                return head, ""
            time.sleep(0.5)
        failure = log.read_text(errors="replace")[-2000:]
        head.stop()
        return None, failure

    def stop(self, *, remove: bool = False) -> None:
        """Kill the head's process group, then every process still marked as this cluster's."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)  # on SIGTERM Ray drains for 30 s
        except ProcessLookupError:
            pass
        self.process.wait()
        marker = str(self.cache_dir)
        deadline = time.monotonic() + 20
        while (left := marked_pids(marker)) and time.monotonic() < deadline:
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    continue
            time.sleep(0.5)
        if marked_pids(marker):
            raise InfrastructureFault(
                f"processes of the Ray cluster under {self.root} survived", code="ray.head_stop"
            )
        if remove:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> LocalRayHead:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop(remove=True)


__all__ = ["LocalRayHead", "marked_pids"]
