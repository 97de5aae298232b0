"""Resource limits: pids, memory, wall clock, CPU, file size, bounded log; cgroup cleanup."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from prism.evaluator.sandbox import detect_cgroups_cached
from prism.evaluator.sandbox_cgroups import RunCgroup, reap_stale_cgroups


def _processes_with(marker: str) -> list[int]:
    """Host pids whose command line contains ``marker``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if marker.encode() in cmdline:
            found.append(int(entry.name))
    return found


def _our_cgroups() -> list[Path]:
    support = detect_cgroups_cached()
    roots = {r for r in (support.memory_root, support.pids_root) if r is not None}
    return [p for root in roots for p in root.glob(f"prism-sandbox-{os.getpid()}-*")]


def test_fork_loop_stopped_by_pids_limit(run_script, bwrap_isolation):
    if not bwrap_isolation.cgroup_pids:
        pytest.skip("no writable pids cgroup here")
    result, log = run_script(
        """
        import os, time
        children = 0
        try:
            while True:
                pid = os.fork()
                if pid == 0:
                    time.sleep(30)
                    os._exit(0)
                children += 1
        except OSError as exc:
            print("FORK-FAILED", children, exc.errno)
        """,
        pids=24,
    )
    assert result.exit_code == 0, log
    assert "FORK-FAILED" in log
    children = int(log.split("FORK-FAILED")[1].split()[0])
    assert 0 < children < 24
    assert result.pids_limited
    assert _our_cgroups() == []  # the sleeping children were killed and the groups removed


def test_memory_past_limit_is_killed(run_script, bwrap_isolation):
    if not bwrap_isolation.cgroup_memory:
        pytest.skip("no writable memory cgroup here")
    result, log = run_script(
        """
        chunks = []
        for i in range(100):
            chunks.append(b"x" * (20 << 20))  # touched pages, not a lazy calloc
            print("ALLOCATED-MB", (i + 1) * 20, flush=True)
        print("SURVIVED")
        """,
        memory_bytes=150_000_000,
    )
    assert "SURVIVED" not in log
    assert result.memory_exceeded
    assert result.failure_code() == "sandbox.memory_exceeded"
    assert result.exit_code != 0
    allocated = [int(line.split()[1]) for line in log.splitlines() if line.startswith("ALLOCATED-MB")]
    assert max(allocated) <= 150


def test_wall_clock_kills_the_whole_tree(run_script):
    marker = f"prism-spin-{uuid.uuid4().hex}"
    start = time.monotonic()
    result, log = run_script(
        f"""
        import subprocess, sys
        # A grandchild in its own session, as an escaping daemon would do.
        subprocess.Popen([sys.executable, "-c", "while True: pass", "{marker}"], start_new_session=True)
        print("SPINNING", flush=True)
        while True:
            pass
        """,
        wall_s=2.0,
    )
    elapsed = time.monotonic() - start
    assert "SPINNING" in log
    assert result.timed_out
    assert result.failure_code() == "sandbox.timeout"
    assert result.signal == signal.SIGKILL
    assert elapsed < 15
    deadline = time.monotonic() + 5
    while _processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _processes_with(marker) == []


def test_stdout_flood_is_capped(run_script):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result, log = run_script(
        """
        import sys
        line = "x" * 1023 + "\\n"
        for _ in range(40 * 1024):  # 40 MiB to stdout, then some to stderr
            sys.stdout.write(line)
        sys.stderr.write("THE-END\\n")
        """,
        log_bytes=10_000,
    )
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert result.exit_code == 0
    assert result.log_truncated
    assert len(log.encode()) == 10_000 == result.log_bytes_written
    assert "THE-END" in result.log_tail  # the tail still shows how the run ended
    assert len(result.log_tail) <= 8192
    assert (after - before) * 1024 < 30_000_000  # the flood never sat in host memory


def test_cpu_and_file_size_rlimits(run_script, tmp_path):
    from prism.evaluator.sandbox import Bind

    out = tmp_path / "out"
    out.mkdir()
    result, log = run_script(
        """
        with open("/out/big.bin", "wb") as handle:
            handle.write(b"0" * 2_000_000)
        print("WROTE-BIG")
        """,
        binds=[Bind(src=out, dest=Path("/out"), writable=True)],
        fsize_bytes=1_000_000,
    )
    assert "WROTE-BIG" not in log
    # CPython ignores SIGXFSZ, so the write fails with EFBIG instead of a signal death.
    assert result.signal == signal.SIGXFSZ or "[Errno 27] File too large" in log
    assert result.exit_code != 0
    assert (out / "big.bin").stat().st_size <= 1_000_000

    result, log = run_script("while True:\n    pass\n", cpu_s=1, wall_s=20.0)
    assert result.signal in (signal.SIGXCPU, signal.SIGKILL)
    assert not result.timed_out
    assert result.failure_code() == "sandbox.cpu_exceeded"


def test_exit_codes_and_signals_are_reported(run_script):
    result, _ = run_script("import sys; sys.exit(7)")
    assert (result.exit_code, result.signal) == (7, None)
    assert result.failure_code() == "sandbox.nonzero_exit"
    result, _ = run_script("import os, signal; os.kill(os.getpid(), signal.SIGTERM)")
    assert (result.exit_code, result.signal) == (None, signal.SIGTERM)
    result, _ = run_script("print('fine')")
    assert result.ok and result.failure_code() is None
    assert _our_cgroups() == []


def test_stale_groups_of_dead_owners_are_reaped():
    """A host killed mid-run leaves its group (and maybe a process) behind; a later start reaps it."""
    support = detect_cgroups_cached()
    if not (support.memory or support.pids):
        pytest.skip("no writable cgroups here")
    finished = subprocess.Popen(["true"])  # a pid that existed and is gone
    finished.wait()
    prefix = f"prism-sandbox-test{uuid.uuid4().hex[:8]}"
    stale = RunCgroup.create(
        support, memory_bytes=100_000_000, pids=16, prefix=prefix, owner_pid=finished.pid
    )
    live = RunCgroup.create(support, memory_bytes=100_000_000, pids=16, prefix=prefix)
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        for procs in stale.procs_files():
            procs.write_text(str(sleeper.pid), encoding="ascii")
        reaped = reap_stale_cgroups(support, prefix=prefix)
        assert reaped and all(path.name.startswith(f"{prefix}-{finished.pid}-") for path in reaped)
        assert sleeper.wait(timeout=10) == -signal.SIGKILL
        assert all(not path.exists() for path in reaped)
        assert all(path.parent.exists() for path in live.procs_files())  # a live owner's group stays
    finally:
        if sleeper.poll() is None:
            sleeper.kill()
        live.remove()
        stale.remove()
