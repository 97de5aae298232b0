"""Per-run control groups for the sandbox: a memory cap, a process cap, and a reliable tree kill.

Host side, stdlib only. Two layouts exist in the wild:

* **cgroup v1** (one hierarchy per controller, e.g. ``/sys/fs/cgroup/memory`` and
  ``/sys/fs/cgroup/pids``): we create one child group per run in each hierarchy, nested under the
  group this process already lives in (so an outer limit still covers the sandbox).
* **cgroup v2** (one unified hierarchy): one child group holds both limits, provided the parent
  delegates the ``memory`` and ``pids`` controllers to its children.

Where neither is writable the launcher falls back to rlimits only; ``detect_cgroups`` says which
controllers are usable and why not. Nothing here raises on a missing cgroup feature: limits are
best-effort layers on top of bubblewrap, and the probe records what was actually in force.
"""

from __future__ import annotations

import logging
import os
import signal
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

logger = logging.getLogger(__name__)

_KILL_TIMEOUT_S = 5.0
_REMOVE_TIMEOUT_S = 5.0
#: Per-run groups are named ``{RUN_PREFIX}-{owner pid}-{random}``; the owner pid lets a later
#: process recognise groups whose owner died without cleaning up (see ``reap_stale_cgroups``).
RUN_PREFIX = "prism-sandbox"


@dataclass(frozen=True)
class CgroupSupport:
    """Where per-run groups can be created; ``None`` roots mean that controller is unusable."""

    version: Literal[1, 2] | None
    memory_root: Path | None
    pids_root: Path | None
    detail: str
    #: v1 only: where per-run cpuacct groups go (v2 groups always carry cpu.stat).
    cpuacct_root: Path | None = None

    @property
    def memory(self) -> bool:
        return self.memory_root is not None

    @property
    def pids(self) -> bool:
        return self.pids_root is not None


def _cgroup_mounts() -> list[tuple[str, Path, set[str]]]:
    """(fstype, mount point, options) for every cgroup mount, from /proc/self/mounts."""
    mounts = []
    try:
        text = Path("/proc/self/mounts").read_text(encoding="utf-8")
    except OSError:
        return mounts
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[2] in ("cgroup", "cgroup2"):
            mounts.append((parts[2], Path(parts[1]), set(parts[3].split(","))))
    return mounts


def _own_cgroup_paths() -> dict[str, str]:
    """Controller name (or "" for v2) -> this process's group path, from /proc/self/cgroup."""
    paths: dict[str, str] = {}
    try:
        text = Path("/proc/self/cgroup").read_text(encoding="utf-8")
    except OSError:
        return paths
    for line in text.splitlines():
        _, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        for name in controllers.split(",") if controllers else [""]:
            paths[name] = path
    return paths


def _writable_parent(mount: Path, own_path: str, required_files: tuple[str, ...]) -> Path | None:
    """The deepest of (own group, hierarchy root) where a child group can be made and limited.

    Nesting under our own group keeps any outer limit in force; the root is the fallback for
    containers whose /proc/self/cgroup paths do not match the mounted view.
    """
    candidates = [mount / own_path.lstrip("/"), mount] if own_path not in ("", "/") else [mount]
    for parent in candidates:
        if not parent.is_dir():
            continue
        probe = parent / f"prism-probe-{uuid.uuid4().hex[:12]}"
        try:
            probe.mkdir()
        except OSError:
            continue
        try:
            if all((probe / name).exists() for name in required_files):
                return parent
        finally:
            _rmdir_quietly(probe)
    return None


def _enable_v2_controllers(parent: Path) -> None:
    """Ask the v2 parent to delegate memory and pids; fails (harmlessly) if it holds processes."""
    try:
        enabled = (parent / "cgroup.subtree_control").read_text(encoding="utf-8").split()
        wanted = [c for c in ("memory", "pids") if c not in enabled]
        if wanted:
            (parent / "cgroup.subtree_control").write_text(" ".join(f"+{c}" for c in wanted))
    except OSError:
        pass


def detect_cgroups() -> CgroupSupport:
    """Find writable memory and pids controllers, preferring v1 hierarchies when both exist."""
    mounts = _cgroup_mounts()
    own = _own_cgroup_paths()
    v1 = {opt: mnt for fstype, mnt, opts in mounts if fstype == "cgroup" for opt in opts}
    memory_root = pids_root = None
    if "memory" in v1:
        memory_root = _writable_parent(v1["memory"], own.get("memory", "/"), ("memory.limit_in_bytes",))
    if "pids" in v1:
        pids_root = _writable_parent(v1["pids"], own.get("pids", "/"), ("pids.max",))
    if memory_root or pids_root:
        cpuacct_root = None
        if "cpuacct" in v1:
            cpuacct_root = _writable_parent(v1["cpuacct"], own.get("cpuacct", "/"), ("cpuacct.usage",))
        detail = f"cgroup v1: memory={'yes' if memory_root else 'no'}, pids={'yes' if pids_root else 'no'}"
        return CgroupSupport(1, memory_root, pids_root, detail, cpuacct_root)
    for fstype, mnt, _ in mounts:
        if fstype != "cgroup2":
            continue
        own_v2 = own.get("", "/")
        for parent in ([mnt / own_v2.lstrip("/")] if own_v2 != "/" else []) + [mnt]:
            if parent.is_dir():
                _enable_v2_controllers(parent)
        root = _writable_parent(mnt, own_v2, ("memory.max", "pids.max"))
        if root is not None:
            return CgroupSupport(2, root, root, "cgroup v2: memory=yes, pids=yes")
    return CgroupSupport(None, None, None, "no writable cgroup memory/pids controller")


def _rmdir_quietly(path: Path) -> bool:
    try:
        path.rmdir()
        return True
    except FileNotFoundError:
        return True
    except OSError:
        return False


def _write(path: Path, value: str) -> bool:
    try:
        path.write_text(value, encoding="ascii")
        return True
    except OSError as exc:
        logger.debug("cannot write %s to %s: %s", value, path, exc)
        return False


def _read_counter(path: Path, key: str) -> int:
    """A ``key value`` line from a flat-keyed cgroup file, 0 when absent or unreadable."""
    try:
        for line in path.read_text(encoding="ascii").splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value.strip() or 0)
    except (OSError, ValueError):
        pass
    return 0


@dataclass
class RunCgroup:
    """The groups one sandboxed run lives in. Create with ``RunCgroup.create``."""

    support: CgroupSupport
    memory_dir: Path | None = None
    pids_dir: Path | None = None
    cpu_dir: Path | None = None
    _removed: bool = field(default=False, repr=False)

    @classmethod
    def create(
        cls,
        support: CgroupSupport,
        *,
        memory_bytes: int,
        pids: int,
        prefix: str = RUN_PREFIX,
        owner_pid: int | None = None,
    ) -> RunCgroup:
        owner = os.getpid() if owner_pid is None else owner_pid
        name = f"{prefix}-{owner}-{uuid.uuid4().hex[:12]}"
        run = cls(support)
        if support.memory_root is not None:
            run.memory_dir = cls._make(support.memory_root / name)
            if run.memory_dir is not None:
                run._limit_memory(memory_bytes)
        if support.pids_root is not None:
            same = support.version == 2 and support.pids_root == support.memory_root
            run.pids_dir = run.memory_dir if same else cls._make(support.pids_root / name)
            if run.pids_dir is not None:
                _write(run.pids_dir / "pids.max", str(pids))
        if support.version == 2:
            run.cpu_dir = run.memory_dir or run.pids_dir
        elif support.cpuacct_root is not None:
            run.cpu_dir = cls._make(support.cpuacct_root / name)
        return run

    @staticmethod
    def _make(path: Path) -> Path | None:
        try:
            path.mkdir()
            return path
        except OSError as exc:
            logger.warning("cannot create cgroup %s: %s", path, exc)
            return None

    def _limit_memory(self, memory_bytes: int) -> None:
        assert self.memory_dir is not None
        if self.support.version == 1:
            _write(self.memory_dir / "memory.limit_in_bytes", str(memory_bytes))
            # Without swap accounting a process could page out past the cap; pin both.
            _write(self.memory_dir / "memory.memsw.limit_in_bytes", str(memory_bytes))
        else:
            _write(self.memory_dir / "memory.max", str(memory_bytes))
            _write(self.memory_dir / "memory.swap.max", "0")

    @property
    def has_memory_limit(self) -> bool:
        return self.memory_dir is not None

    def _dirs(self) -> set[Path]:
        return {d for d in (self.memory_dir, self.pids_dir, self.cpu_dir) if d is not None}

    def procs_files(self) -> list[Path]:
        """The ``cgroup.procs`` files the launcher writes its own pid into before exec."""
        return sorted(d / "cgroup.procs" for d in self._dirs())

    def cpu_seconds(self) -> float | None:
        """CPU time (user + system) every process of the group used, or None when not accounted."""
        if self.cpu_dir is None:
            return None
        try:
            if self.support.version == 1:
                return int((self.cpu_dir / "cpuacct.usage").read_text(encoding="ascii")) / 1e9
        except (OSError, ValueError):
            return None
        usage = _read_counter(self.cpu_dir / "cpu.stat", "usage_usec")
        return usage / 1e6 if usage else None

    def _members(self) -> set[int]:
        pids: set[int] = set()
        for procs in self.procs_files():
            try:
                pids.update(int(p) for p in procs.read_text(encoding="ascii").split())
            except (OSError, ValueError):
                continue
        return pids

    def kill_all(self) -> None:
        """SIGKILL every process in the run's groups until none is left (or a timeout)."""
        for directory in self._dirs():
            if (directory / "cgroup.kill").exists():  # v2: one atomic write kills the subtree
                _write(directory / "cgroup.kill", "1")
        deadline = time.monotonic() + _KILL_TIMEOUT_S
        while time.monotonic() < deadline:
            members = self._members()
            if not members:
                return
            for pid in members:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.02)
        logger.error("processes still alive in sandbox cgroup after kill: %s", sorted(self._members()))

    def oom_killed(self) -> bool:
        """Did the kernel's OOM killer act inside the memory group?"""
        if self.memory_dir is None:
            return False
        if self.support.version == 1:
            return _read_counter(self.memory_dir / "memory.oom_control", "oom_kill") > 0
        return _read_counter(self.memory_dir / "memory.events", "oom_kill") > 0

    def memory_limit_hit(self) -> bool:
        """Did usage reach the cap at least once (v1 ``failcnt``, v2 ``max`` events)?"""
        if self.memory_dir is None:
            return False
        if self.support.version == 1:
            try:
                return int((self.memory_dir / "memory.failcnt").read_text(encoding="ascii")) > 0
            except (OSError, ValueError):
                return False
        return _read_counter(self.memory_dir / "memory.events", "max") > 0

    def pids_limit_hit(self) -> bool:
        if self.pids_dir is None:
            return False
        return _read_counter(self.pids_dir / "pids.events", "max") > 0

    def peak_memory_bytes(self) -> int | None:
        if self.memory_dir is None:
            return None
        name = "memory.max_usage_in_bytes" if self.support.version == 1 else "memory.peak"
        try:
            return int((self.memory_dir / name).read_text(encoding="ascii"))
        except (OSError, ValueError):
            return None

    def remove(self) -> None:
        """Kill leftovers and remove the groups; idempotent."""
        if self._removed:
            return
        self.kill_all()
        for directory in self._dirs():
            deadline = time.monotonic() + _REMOVE_TIMEOUT_S
            while not _rmdir_quietly(directory):
                if time.monotonic() > deadline:
                    logger.warning("could not remove cgroup %s; left for the operator", directory)
                    break
                time.sleep(0.05)
        self._removed = True


def _owner_alive(group_name: str, prefix: str) -> bool:
    owner = group_name.removeprefix(prefix + "-").split("-", 1)[0]
    if not owner.isdigit():
        return True  # not one of ours in the expected shape: leave it alone
    return Path(f"/proc/{owner}").exists()


def reap_stale_cgroups(support: CgroupSupport, *, prefix: str = RUN_PREFIX) -> list[Path]:
    """Kill and remove per-run groups whose owning host process is gone; returns what was reaped.

    A validator killed with SIGKILL cannot clean up, and if it dies while bubblewrap is still
    setting up, bwrap's helper can miss its parent-death signal and sleep forever inside the
    group. Call this when a validator or evaluator service starts. A recycled owner pid only
    delays the reaping to a later start-up.
    """
    reaped: list[Path] = []
    roots = {r for r in (support.memory_root, support.pids_root, support.cpuacct_root) if r is not None}
    for root in roots:
        for group in sorted(root.glob(f"{prefix}-*")):
            if not group.is_dir() or _owner_alive(group.name, prefix):
                continue
            orphan = RunCgroup(support)
            if support.memory_root == root:
                orphan.memory_dir = group
            elif support.pids_root == root:
                orphan.pids_dir = group
            else:
                orphan.cpu_dir = group
            logger.warning("reaping sandbox cgroup %s left by a dead process", group)
            orphan.remove()
            reaped.append(group)
    return reaped
