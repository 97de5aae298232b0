"""The sandbox launcher: the only way PRISM starts untrusted code (host side, no torch).

Every process that imports submission code (the torchrun training runner, the held-out
evaluation process) is started through :func:`start_sandboxed` / :func:`run_sandboxed`.

Layers, outermost first:

1. **bubblewrap** (``bwrap``): new user, mount, pid, ipc, uts, cgroup and network namespaces
   (``--unshare-all``; the network namespace has only loopback, so ``torchrun --standalone``
   rendezvous works and nothing else is reachable), all capabilities dropped, a new session (no
   terminal injection), killed with its parent. The filesystem is an empty read-only root with
   read-only binds of ``/usr`` (plus the ``/bin``/``/lib`` links), a few loader files from
   ``/etc``, the Python prefix, site-packages and the ``prism`` package; ``/tmp`` and
   ``/dev/shm`` are private tmpfs; the caller's writable binds are the only writable host paths.
   Hostname ``sandbox``; ``/etc/hosts`` maps it and ``localhost`` to 127.0.0.1.
2. **cgroups** (where writable): a per-run memory cap (OOM kill inside the group only) and a
   process/thread cap (fork bombs fail with EAGAIN); also the reliable way to kill every process.
3. **rlimits** (always): CPU seconds, file size, open files, no core dumps; the address-space
   limit only when no memory cgroup is available and the run is CPU-only (RLIMIT_AS breaks CUDA).
   RLIMIT_NPROC is *not* used: it counts every process of the user, and as root it is ignored.
4. **watchdog**: a wall-clock deadline that SIGKILLs the whole tree.
5. **bounded log**: stdout/stderr are drained by a host thread that keeps at most ``log_bytes``
   on disk and a short tail in memory, so a flood can fill neither the disk nor host memory.

Where bubblewrap cannot start, runs fall back to **degraded** mode (rlimits + cgroups only, no
filesystem or network isolation) and the probe reports ``mode="degraded"``; such runs are never
score-eligible. ``PRISM_SANDBOX=auto|bwrap|degraded`` forces the mode (``bwrap`` fails loudly if
bubblewrap is unusable). In degraded mode every bind must keep its host path (``dest=None``),
because nothing can remap paths.

Exit status: ``SandboxResult.exit_code`` is the command's own exit code; a death by signal is
reported as ``signal`` (bubblewrap reports a signalled child as 128+N, which is translated), so
in-sandbox programs should use exit codes below 128. ``PR_SET_PDEATHSIG`` (``--die-with-parent``)
fires when the *thread* that started the sandbox exits: start sandboxes from a thread that
outlives them (the main thread is always fine).
"""

from __future__ import annotations

import collections
import contextlib
import importlib.util
import json
import logging
import os
import shutil
import signal
import site
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import IO, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

import prism
from prism.errors import InfrastructureFault, OperatorError
from prism.evaluator.sandbox_cgroups import CgroupSupport, RunCgroup, detect_cgroups, reap_stale_cgroups
from prism.evaluator.seccomp import filter_fd
from prism.profiles import Limits

logger = logging.getLogger(__name__)

SANDBOX_MODE_ENV = "PRISM_SANDBOX"
SANDBOX_HOSTNAME = "sandbox"
LOG_TAIL_BYTES = 8192
_READ_CHUNK = 65536
_PROBE_TIMEOUT_S = 30.0
_EXEC_HELPER = Path(__file__).with_name("sandbox_exec.py")
# Files from the host /etc that the dynamic loader and libc want; everything else in /etc stays out.
_ETC_FILES = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime")
# Top-level system paths: merged-/usr symlinks are recreated, real directories bound read-only.
_SYSTEM_DIRS = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")


# ---------------------------------------------------------------------------------------------
# Specification


class SandboxLimits(BaseModel):
    """Resource limits of one sandboxed process tree."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    wall_s: float = Field(gt=0, description="wall-clock deadline; the whole tree is killed at it")
    memory_bytes: int = Field(gt=0, description="memory cgroup cap (RLIMIT_AS fallback on CPU)")
    pids: int = Field(gt=0, description="processes + threads (cgroup pids controller)")
    cpu_s: int = Field(gt=0, description="RLIMIT_CPU per process: SIGXCPU, then SIGKILL 5 s later")
    fsize_bytes: int = Field(gt=0, description="RLIMIT_FSIZE: largest file a process may write")
    nofile: int = Field(gt=0, description="RLIMIT_NOFILE")
    log_bytes: int = Field(gt=0, description="bytes of stdout/stderr kept on disk; the rest dropped")
    device: Literal["cpu", "cuda"] = Field(
        default="cpu", description="cuda disables the RLIMIT_AS fallback (it breaks CUDA)"
    )

    @classmethod
    def from_profile(
        cls, limits: Limits, *, phase: Literal["train", "eval"], device: Literal["cpu", "cuda"] = "cpu"
    ) -> SandboxLimits:
        """The limits of one phase of a profile (training or held-out evaluation)."""
        wall_s = limits.train_wall_s if phase == "train" else limits.eval_wall_s
        return cls(
            wall_s=wall_s,
            memory_bytes=limits.memory_bytes,
            pids=limits.pids,
            cpu_s=limits.cpu_s,
            fsize_bytes=limits.fsize_bytes,
            nofile=limits.nofile,
            log_bytes=limits.log_bytes,
            device=device,
        )


class Bind(BaseModel):
    """A host path made visible inside the sandbox (read-only unless ``writable``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    src: Path
    dest: Path | None = Field(default=None, description="path inside; None means the same as src")
    writable: bool = False
    device: bool = Field(default=False, description="bind a device node (GPUs): --dev-bind")

    @field_validator("src", "dest")
    @classmethod
    def _absolute(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_absolute():
            raise ValueError(f"bind paths must be absolute, got {value}")
        return value

    @property
    def target(self) -> Path:
        return self.dest if self.dest is not None else self.src


class SandboxSpec(BaseModel):
    """What to run and what it may see."""

    model_config = ConfigDict(extra="forbid")

    argv: list[str] = Field(min_length=1)
    binds: list[Bind] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict, description="added to (and overriding) the base env")
    cwd: str = "/tmp"
    limits: SandboxLimits
    pass_fds: tuple[int, ...] = ()
    stdin: Literal["pipe", "null"] = "null"
    stdout: Literal["log", "pipe"] = Field(
        default="log", description="pipe: raw stdout for a host protocol; stderr always goes to the log"
    )


@dataclass(frozen=True)
class IsolationProbe:
    """Which isolation this host provides, decided once per process."""

    mode: Literal["bwrap", "degraded"]
    cgroups: bool
    detail: str
    cgroup_memory: bool = False
    cgroup_pids: bool = False
    bwrap_path: str | None = None
    tmpfs_size: bool = False  # bwrap understands --size (>= 0.7): tmpfs mounts get a cap


@dataclass(frozen=True)
class SandboxResult:
    """How a sandboxed process tree ended."""

    exit_code: int | None
    signal: int | None
    timed_out: bool
    memory_exceeded: bool
    log_truncated: bool
    wall_s: float
    isolation: IsolationProbe
    log_tail: str
    pids_limited: bool = False
    killed: bool = False  # SandboxProcess.kill() was called by the host
    peak_memory_bytes: int | None = None
    log_bytes_written: int = 0
    cpu_s: float = 0.0  # user + system CPU of the whole tree, measured by the host
    cpu_accounted: bool = False  # cpu_s covers the whole tree (cgroup cpuacct, or wait4 when degraded)

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out and not self.memory_exceeded

    def failure_code(self) -> str | None:
        """A stable code for why the run ended badly, or None if it exited 0.

        These are facts about the process, not verdicts: whose fault a code is (usually the
        miner's) is decided by the caller, which knows what ran inside.
        """
        if self.timed_out:
            return "sandbox.timeout"
        if self.memory_exceeded:
            return "sandbox.memory_exceeded"
        if self.signal == signal.SIGXCPU:
            return "sandbox.cpu_exceeded"
        if self.signal == signal.SIGXFSZ:
            return "sandbox.fsize_exceeded"
        if self.signal is not None:
            return "sandbox.killed_by_signal"
        if self.exit_code not in (0, None):
            # A fork bomb that hit the pids cap usually dies of the EAGAIN it provoked.
            return "sandbox.pids_exceeded" if self.pids_limited else "sandbox.nonzero_exit"
        return None


# ---------------------------------------------------------------------------------------------
# Probe


def _bwrap_supports_size(bwrap: str) -> bool:
    try:
        out = subprocess.run([bwrap, "--help"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return False
    return "--size" in (out.stdout + out.stderr)


def _try_bwrap(bwrap: str) -> tuple[bool, str]:
    """Start a real python inside the full base layer; the only honest test of user namespaces."""
    probe = IsolationProbe(mode="bwrap", cgroups=False, detail="probe", bwrap_path=bwrap)
    spec = SandboxSpec(
        argv=[sys.executable, "-I", "-S", "-c", "pass"],
        binds=python_binds(),
        limits=SandboxLimits(
            wall_s=_PROBE_TIMEOUT_S,
            memory_bytes=1 << 30,
            pids=64,
            cpu_s=60,
            fsize_bytes=1 << 20,
            nofile=256,
            log_bytes=65536,
        ),
    )
    with tempfile.TemporaryDirectory(prefix="prism-sbx-probe-") as tmp:
        result = run_sandboxed(spec, log_path=Path(tmp) / "probe.log", isolation=probe)
    if result.exit_code == 0:
        return True, "bwrap ok"
    return False, f"bwrap failed (exit {result.exit_code}, signal {result.signal}): {result.log_tail[-500:]}"


@cache
def _probe(requested: str) -> IsolationProbe:
    support = detect_cgroups_cached()
    cgroup_fields = {
        "cgroups": support.memory or support.pids,
        "cgroup_memory": support.memory,
        "cgroup_pids": support.pids,
    }
    if requested != "degraded":
        bwrap = shutil.which("bwrap")
        if bwrap is None:
            ok, why = False, "bwrap not found on PATH"
        else:
            ok, why = _try_bwrap(bwrap)
        if ok:
            probe = IsolationProbe(
                mode="bwrap",
                detail=f"{why}; {support.detail}",
                bwrap_path=bwrap,
                tmpfs_size=_bwrap_supports_size(bwrap),
                **cgroup_fields,
            )
            logger.info("sandbox isolation: bwrap (%s)", probe.detail)
            return probe
        if requested == "bwrap":
            raise InfrastructureFault(
                f"{SANDBOX_MODE_ENV}=bwrap but bubblewrap cannot start here: {why}",
                code="sandbox.bwrap_unavailable",
            )
        detail = f"degraded: {why}; {support.detail}"
    else:
        detail = f"degraded: forced; {support.detail}"
    probe = IsolationProbe(mode="degraded", detail=detail, **cgroup_fields)
    logger.warning("sandbox isolation: DEGRADED, runs are never score-eligible (%s)", probe.detail)
    return probe


def probe_isolation(*, force_degraded: bool = False) -> IsolationProbe:
    """Decide (once per process and requested mode) how sandboxes are isolated here."""
    requested = "degraded" if force_degraded else os.environ.get(SANDBOX_MODE_ENV, "auto").strip().lower()
    if requested not in ("auto", "bwrap", "degraded"):
        raise OperatorError(
            f"{SANDBOX_MODE_ENV} must be auto, bwrap or degraded, got {requested!r}",
            code="sandbox.bad_mode",
        )
    return _probe(requested)


# ---------------------------------------------------------------------------------------------
# What a sandboxed python needs


def _package_dir(name: str) -> Path | None:
    """The directory of a top-level package, found without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))).resolve()


def prism_package_dirs() -> list[Path]:
    """``prism`` and the ``prism_challenge`` compatibility package (old submissions import it)."""
    dirs = [Path(prism.__file__).resolve().parent]
    compat = _package_dir("prism_challenge")
    if compat is not None:
        dirs.append(compat)
    return dirs


def _covered(path: Path, roots: list[Path]) -> bool:
    return any(path == root or root in path.parents for root in roots)


def python_binds() -> list[Bind]:
    """Read-only binds a sandboxed python + torch + prism need, at their host paths."""
    roots: list[Path] = [Path("/usr")]
    candidates = [
        sys.prefix,
        sys.base_prefix,
        sys.exec_prefix,
        sys.base_exec_prefix,
        str(Path(sys.executable).resolve().parent),
        sysconfig.get_paths()["stdlib"],
        sysconfig.get_paths()["platstdlib"],
        *site.getsitepackages(),
    ]
    user_site = site.getusersitepackages()
    if site.ENABLE_USER_SITE and user_site and Path(user_site).is_dir():
        candidates.append(user_site)
    binds: list[Bind] = []
    for raw in candidates:
        path = Path(raw).resolve()
        if not path.exists() or _covered(path, roots):
            continue
        roots.append(path)
        binds.append(Bind(src=path))
    for package in prism_package_dirs():
        if not _covered(package, roots):
            roots.append(package)
            binds.append(Bind(src=package))
    return binds


def gpu_binds() -> list[Bind]:
    """Device binds for the NVIDIA GPUs this process may use (empty on CPU-only machines).

    With ``CUDA_VISIBLE_DEVICES`` set to indexes (a worker's slot), only those GPUs' nodes
    (``/dev/nvidiaN``) are bound, with the driver's shared nodes (``nvidiactl``, ``nvidia-uvm``,
    ...): the other GPUs of the machine do not exist inside the sandbox.
    """
    dev = Path("/dev")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    wanted = {int(x) for x in visible.split(",") if x.strip().isdigit()} if visible else None
    binds = []
    for path in sorted(p for p in dev.glob("nvidia*") if not p.is_dir()):
        suffix = path.name.removeprefix("nvidia")
        if suffix.isdigit() and wanted is not None and int(suffix) not in wanted:
            continue
        binds.append(Bind(src=path, device=True))
    caps = dev / "nvidia-caps"
    if caps.is_dir():
        binds.append(Bind(src=caps, device=True))
    return binds


def _python_path() -> str:
    """PYTHONPATH inside: the directories holding the prism packages (bound at the same paths)."""
    parents: list[str] = []
    for package in prism_package_dirs():
        parent = str(package.parent)
        if parent not in parents:
            parents.append(parent)
    return os.pathsep.join(parents)


def base_env(spec_env: dict[str, str]) -> dict[str, str]:
    """The whole environment of the sandboxed process: nothing leaks from the host's env."""
    env = {
        "PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin",
        "HOME": "/tmp",
        "TMPDIR": "/tmp",
        "USER": "sandbox",
        "LOGNAME": "sandbox",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "PYTHONPATH": _python_path(),
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONNOUSERSITE": "1",
        # Unbuffered so the log holds everything up to a kill, not just what was flushed.
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
        # Nothing inside may try the network; these make well-behaved libraries not even try.
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "WANDB_MODE": "disabled",
    }
    for name in ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES"):
        if name in os.environ:
            env[name] = os.environ[name]
    env.update(spec_env)
    return env


# ---------------------------------------------------------------------------------------------
# Command construction


_HOSTS = f"127.0.0.1\tlocalhost {SANDBOX_HOSTNAME}\n::1\tlocalhost ip6-localhost\n"
_PASSWD = "root:x:0:0:root:/tmp:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
_GROUP = "root:x:0:\nnogroup:x:65534:\n"


def _write_etc(directory: Path) -> dict[str, Path]:
    """Synthetic /etc files for the sandbox (hosts for torchrun's loopback rendezvous)."""
    files = {
        "hosts": _HOSTS,
        "hostname": f"{SANDBOX_HOSTNAME}\n",
        "passwd": _PASSWD,
        "group": _GROUP,
        "nsswitch.conf": "passwd: files\ngroup: files\nhosts: files\n",
    }
    paths = {}
    for name, text in files.items():
        path = directory / name
        path.write_text(text, encoding="utf-8")
        paths[name] = path
    return paths


def _bwrap_argv(
    spec: SandboxSpec, isolation: IsolationProbe, etc: dict[str, Path], status_fd: int, seccomp_fd: int | None
) -> list[str]:
    assert isolation.bwrap_path is not None
    argv = [
        isolation.bwrap_path,
        *(["--seccomp", str(seccomp_fd)] if seccomp_fd is not None else []),  # prism.evaluator.seccomp
        "--unshare-all",  # user, mount, pid, ipc, uts, cgroup, net (loopback only)
        "--die-with-parent",
        "--new-session",
        "--cap-drop",
        "ALL",
        "--hostname",
        SANDBOX_HOSTNAME,
        "--json-status-fd",
        str(status_fd),
        "--ro-bind",
        "/usr",
        "/usr",
    ]
    for name in _SYSTEM_DIRS:
        path = Path(name)
        if path.is_symlink():
            argv += ["--symlink", os.readlink(path), name]
        elif path.is_dir():
            argv += ["--ro-bind", name, name]
    for name in _ETC_FILES:
        argv += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
    for name, path in etc.items():
        argv += ["--ro-bind", str(path), f"/etc/{name}"]
    argv += ["--proc", "/proc", "--dev", "/dev"]
    size = ["--size", str(spec.limits.memory_bytes)] if isolation.tmpfs_size else []
    argv += [*size, "--tmpfs", "/tmp", *size, "--tmpfs", "/dev/shm"]
    # Parents before children so a nested bind is not hidden by its parent's mount.
    for bind in sorted(spec.binds, key=lambda b: len(b.target.parts)):
        flag = "--dev-bind" if bind.device else ("--bind" if bind.writable else "--ro-bind")
        argv += [flag, str(bind.src), str(bind.target)]
    # Nothing else in the sandbox's root is writable (binds and tmpfs keep their own flags).
    argv += ["--remount-ro", "/"]
    argv += ["--clearenv"]
    for name, value in base_env(spec.env).items():
        argv += ["--setenv", name, value]
    argv += ["--chdir", spec.cwd, "--", *spec.argv]
    return argv


def _rlimit_args(limits: SandboxLimits, *, memory_cgroup: bool) -> list[str]:
    rlimits = {
        "cpu": limits.cpu_s,
        "fsize": limits.fsize_bytes,
        "nofile": limits.nofile,
        "core": 0,
    }
    if not memory_cgroup and limits.device == "cpu":
        rlimits["as"] = limits.memory_bytes
    args: list[str] = []
    for name, value in rlimits.items():
        args += ["--rlimit", f"{name}={value}"]
    return args


def _check_binds(spec: SandboxSpec, isolation: IsolationProbe) -> None:
    for bind in spec.binds:
        if not bind.src.exists():
            raise InfrastructureFault(
                f"sandbox bind source {bind.src} does not exist", code="sandbox.bind_missing"
            )
        if isolation.mode == "degraded" and bind.dest is not None and bind.dest != bind.src:
            raise InfrastructureFault(
                f"degraded sandbox cannot remap {bind.src} to {bind.dest}; use dest=None (same path)",
                code="sandbox.degraded_remap",
            )


# ---------------------------------------------------------------------------------------------
# Running


class _BoundedLog(threading.Thread):
    """Drains a pipe into a file, keeping at most ``limit`` bytes on disk and a tail in memory."""

    def __init__(self, pipe: IO[bytes], path: Path, limit: int) -> None:
        super().__init__(name=f"sandbox-log-{path.name}", daemon=True)
        self._fd = pipe.fileno()
        self._pipe = pipe  # keep the file object alive so the fd stays open while we read
        self._path = path
        self._limit = limit
        self._tail: collections.deque[bytes] = collections.deque()
        self._tail_len = 0
        self.written = 0
        self.dropped = 0

    def run(self) -> None:
        with self._path.open("wb") as out:
            while True:
                try:
                    chunk = os.read(self._fd, _READ_CHUNK)
                except OSError:
                    break
                if not chunk:
                    break
                room = self._limit - self.written
                if room > 0:
                    kept = chunk[:room]
                    out.write(kept)
                    out.flush()
                    self.written += len(kept)
                self.dropped += max(0, len(chunk) - max(room, 0))
                self._remember(chunk)
        self._pipe.close()

    def _remember(self, chunk: bytes) -> None:
        self._tail.append(chunk[-LOG_TAIL_BYTES:])
        self._tail_len += len(self._tail[-1])
        while self._tail_len - len(self._tail[0]) >= LOG_TAIL_BYTES:
            self._tail_len -= len(self._tail.popleft())

    @property
    def truncated(self) -> bool:
        return self.dropped > 0

    def tail(self) -> str:
        return b"".join(self._tail)[-LOG_TAIL_BYTES:].decode("utf-8", errors="replace")


def _read_status(fd: int) -> list[dict]:
    """bwrap's --json-status-fd documents (child-pid, then exit-code when the command ended)."""
    os.set_blocking(fd, False)
    data = b""
    with contextlib.suppress(BlockingIOError, OSError):
        while chunk := os.read(fd, 65536):
            data += chunk
    os.close(fd)
    docs, decoder, text = [], json.JSONDecoder(), data.decode("utf-8", errors="replace")
    index = 0
    while True:
        while index < len(text) and text[index].isspace():
            index += 1
        if index >= len(text):
            break
        try:
            doc, index = decoder.raw_decode(text, index)
        except (json.JSONDecodeError, RecursionError):  # the sandbox wrote it: junk ends the scan
            break
        if isinstance(doc, dict):
            docs.append(doc)
    return docs


class SandboxProcess:
    """A running sandboxed process tree. Use :func:`start_sandboxed` to create one."""

    def __init__(
        self,
        spec: SandboxSpec,
        isolation: IsolationProbe,
        popen: subprocess.Popen[bytes],
        log: _BoundedLog,
        cgroup: RunCgroup | None,
        status_fd: int | None,
        scratch: Path,
    ) -> None:
        self.spec = spec
        self.isolation = isolation
        self._popen = popen
        self._log = log
        self._cgroup = cgroup
        self._status_fd = status_fd
        self._scratch = scratch
        self._started = time.monotonic()
        self._timed_out = False
        self._killed = False
        self._lock = threading.Lock()
        self._result: SandboxResult | None = None
        self._failure: InfrastructureFault | None = None
        self._watchdog = threading.Timer(spec.limits.wall_s, self._on_deadline)
        self._watchdog.daemon = True
        self._watchdog.start()

    @property
    def pid(self) -> int:
        return self._popen.pid

    @property
    def stdin(self) -> IO[bytes] | None:
        """Writable pipe to the command's stdin (``stdin="pipe"``); flush after each write."""
        return self._popen.stdin

    @property
    def protocol(self) -> IO[bytes] | None:
        """Readable raw stdout (``stdout="pipe"``); None when stdout goes to the log."""
        return self._popen.stdout if self.spec.stdout == "pipe" else None

    stdout = protocol

    def poll(self) -> int | None:
        """The exit status if the tree's main process has ended, else None. Never reaps it: only
        :meth:`wait` does, with ``wait4``, so the CPU time of the whole tree is not lost."""
        if self._popen.returncode is not None:
            return self._popen.returncode
        try:
            info = os.waitid(os.P_PID, self._popen.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return self._popen.returncode
        if info is None:
            return None
        return -info.si_status if info.si_code in (os.CLD_KILLED, os.CLD_DUMPED) else info.si_status

    def _reap(self) -> tuple[int, float]:
        """Wait for the main process; (returncode as Popen reports it, CPU seconds of the tree).

        ``wait4`` returns the resource usage of the process and of every descendant that was
        waited for (torchrun waits for its workers, bwrap's init for everything in the pid
        namespace), so this is the CPU the sandboxed tree used, measured from outside.
        """
        while True:
            try:
                _, status, usage = os.wait4(self._popen.pid, 0)
                break
            except InterruptedError:
                continue
            except ChildProcessError:  # reaped elsewhere (should not happen): no CPU figure
                return (self._popen.returncode if self._popen.returncode is not None else -1), 0.0
        self._popen.returncode = os.waitstatus_to_exitcode(status)
        return self._popen.returncode, usage.ru_utime + usage.ru_stime

    def _on_deadline(self) -> None:
        if self.poll() is None:
            logger.warning(
                "sandbox pid %d passed its %.1f s wall limit; killing", self.pid, self.spec.limits.wall_s
            )
            self._timed_out = True
            self._kill_tree()

    def _kill_tree(self) -> None:
        # bwrap's own process group: with --die-with-parent the pid namespace collapses with it.
        # In degraded mode this is the command's process group (it was started in a new session).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._popen.pid, signal.SIGKILL)
        if self._cgroup is not None:
            self._cgroup.kill_all()

    def kill(self) -> None:
        """Kill the whole tree now (idempotent); :meth:`wait` still returns the result."""
        self._killed = True
        self._kill_tree()

    def wait(self) -> SandboxResult:
        """Block until the tree has ended (or was killed at the deadline); clean up; report."""
        with self._lock:
            if self._failure is not None:
                raise self._failure
            if self._result is None:
                try:
                    self._result = self._finish()
                except InfrastructureFault as exc:
                    self._failure = exc
                    raise
            return self._result

    def _finish(self) -> SandboxResult:
        returncode, cpu_s = self._reap()
        # wait4 sees the whole tree only without bwrap: bwrap's outer process does not reap its
        # namespace's init, so under bwrap only a cgroup's CPU accounting counts the tree.
        cpu_accounted = self.isolation.mode == "degraded"
        wall_s = time.monotonic() - self._started
        self._watchdog.cancel()
        self._sweep()
        statuses = _read_status(self._status_fd) if self._status_fd is not None else []
        exit_code, sig = self._exit_status(returncode, statuses)
        memory_exceeded = pids_limited = False
        peak = None
        if self._cgroup is not None:
            peak = self._cgroup.peak_memory_bytes()
            memory_exceeded = self._cgroup.oom_killed() or (
                sig == signal.SIGKILL and self._cgroup.memory_limit_hit() and not self._timed_out
            )
            pids_limited = self._cgroup.pids_limit_hit()
            group_cpu = self._cgroup.cpu_seconds()  # the whole group, even what wait4 cannot see
            cpu_accounted = group_cpu is not None or cpu_accounted
            cpu_s = group_cpu if group_cpu is not None else cpu_s
            self._cgroup.remove()
        tail = self._log.tail()
        if not memory_exceeded and self._address_space_limited() and exit_code not in (0, None):
            # Under RLIMIT_AS allocation fails inside the process instead of an OOM kill.
            memory_exceeded = any(
                m in tail for m in ("MemoryError", "std::bad_alloc", "can't allocate memory")
            )
        shutil.rmtree(self._scratch, ignore_errors=True)
        self._raise_if_launcher_failed(returncode, statuses, memory_exceeded, tail)
        return SandboxResult(
            exit_code=exit_code,
            signal=sig,
            timed_out=self._timed_out,
            memory_exceeded=memory_exceeded,
            log_truncated=self._log.truncated,
            wall_s=wall_s,
            isolation=self.isolation,
            log_tail=tail,
            pids_limited=pids_limited,
            killed=self._killed,
            peak_memory_bytes=peak,
            log_bytes_written=self._log.written,
            cpu_s=cpu_s,
            cpu_accounted=cpu_accounted,
        )

    def _sweep(self) -> None:
        """Anything that outlived the main process goes now, which also closes the log pipe's
        last writer. Under bwrap the pid namespace died with its init, so only the cgroup is swept
        (the process group id may already be recycled); in degraded mode a daemonized child can
        only be found through its process group or the cgroup."""
        if self.isolation.mode == "degraded":
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._popen.pid, signal.SIGKILL)
        if self._cgroup is not None:
            self._cgroup.kill_all()
        self._log.join(timeout=10.0)
        for stream in (self.stdin, self.protocol):
            if stream is not None:
                with contextlib.suppress(OSError, ValueError):
                    stream.close()

    def _raise_if_launcher_failed(
        self,
        returncode: int,
        statuses: list[dict],  # type: ignore[type-arg]
        memory_exceeded: bool,
        tail: str,
    ) -> None:
        """bwrap that exited by itself (not killed with the tree) before it reported the
        command's start failed on our side: nothing of the command ran."""
        command_ended = any("exit-code" in doc for doc in statuses)
        if (
            self.isolation.mode == "bwrap"
            and not command_ended
            and returncode >= 0
            and not (self._killed or self._timed_out or memory_exceeded)
        ):
            raise InfrastructureFault(
                f"bubblewrap failed before starting the command (exit {returncode}): {tail[-1000:]}",
                code="sandbox.setup_failed",
            )

    def _address_space_limited(self) -> bool:
        memory_cgroup = self._cgroup is not None and self._cgroup.has_memory_limit
        return not memory_cgroup and self.spec.limits.device == "cpu"

    def _exit_status(self, returncode: int, statuses: list[dict]) -> tuple[int | None, int | None]:
        if returncode < 0:  # bwrap itself (or the degraded command) died by a signal
            return None, -returncode
        if self.isolation.mode == "bwrap":
            exits = [d["exit-code"] for d in statuses if isinstance(d.get("exit-code"), int)]
            code = exits[-1] if exits else returncode
            if code > 128 and code - 128 < signal.NSIG:  # bwrap's encoding of a signalled child
                return None, code - 128
            return code, None
        return returncode, None

    def __enter__(self) -> SandboxProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.poll() is None:
            self.kill()
        self.wait()


def start_sandboxed(
    spec: SandboxSpec, *, log_path: Path, isolation: IsolationProbe | None = None
) -> SandboxProcess:
    """Start ``spec.argv`` in the sandbox; stdout/stderr go to the bounded log at ``log_path``."""
    isolation = isolation or probe_isolation()
    _check_binds(spec, isolation)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="prism-sbx-"))
    cgroup: RunCgroup | None = None
    status_r = status_w = seccomp_fd = None
    try:
        if isolation.cgroups:
            cgroup = RunCgroup.create(
                detect_cgroups_cached(), memory_bytes=spec.limits.memory_bytes, pids=spec.limits.pids
            )
        helper = [sys.executable, "-I", "-S", str(_EXEC_HELPER)]
        for procs in cgroup.procs_files() if cgroup else []:
            helper += ["--cgroup", str(procs)]
        helper += _rlimit_args(spec.limits, memory_cgroup=bool(cgroup and cgroup.has_memory_limit))
        if isolation.mode == "bwrap":
            status_r, status_w = os.pipe()
            seccomp_fd = filter_fd()
            command = [
                *helper,
                "--",
                *_bwrap_argv(spec, isolation, _write_etc(scratch), status_w, seccomp_fd),
            ]
            env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
            cwd = "/"
        else:
            command = [*helper, "--", *spec.argv]
            env = base_env(spec.env)
            private_tmp = scratch / "tmp"
            private_tmp.mkdir()
            env.update({"HOME": str(private_tmp), "TMPDIR": str(private_tmp)})
            cwd = str(private_tmp) if spec.cwd == "/tmp" else spec.cwd
        popen = subprocess.Popen(
            command,
            stdin=subprocess.PIPE if spec.stdin == "pipe" else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT if spec.stdout == "log" else subprocess.PIPE,
            env=env,
            cwd=cwd,
            start_new_session=True,  # one process group to kill; no controlling terminal
            pass_fds=tuple(spec.pass_fds) + tuple(fd for fd in (status_w, seccomp_fd) if fd is not None),
            close_fds=True,
        )
    except BaseException:
        if cgroup is not None:
            cgroup.remove()
        for fd in (status_r, status_w, seccomp_fd):
            if fd is not None:
                os.close(fd)
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    for fd in (status_w, seccomp_fd):
        if fd is not None:
            os.close(fd)
    log_pipe = popen.stdout if spec.stdout == "log" else popen.stderr
    assert log_pipe is not None
    log = _BoundedLog(log_pipe, log_path, spec.limits.log_bytes)
    log.start()
    logger.debug("sandbox pid %d started (%s): %s", popen.pid, isolation.mode, " ".join(spec.argv))
    return SandboxProcess(spec, isolation, popen, log, cgroup, status_r, scratch)


@cache
def detect_cgroups_cached() -> CgroupSupport:
    return detect_cgroups()


def reap_stale_sandboxes() -> list[Path]:
    """Kill and remove sandbox cgroups left behind by dead host processes (call at service start).

    Only groups named after a host pid that no longer exists are touched; see
    :func:`prism.evaluator.sandbox_cgroups.reap_stale_cgroups`.
    """
    return reap_stale_cgroups(detect_cgroups_cached())


def run_sandboxed(
    spec: SandboxSpec, *, log_path: Path, isolation: IsolationProbe | None = None
) -> SandboxResult:
    """Start and wait: the common case for a process that needs no pipes."""
    process = start_sandboxed(spec, log_path=log_path, isolation=isolation)
    try:
        return process.wait()
    except BaseException:
        process.kill()
        raise
