"""The launcher API: pipes, kill, probe and mode selection, spec validation, degraded mode."""

from __future__ import annotations

import signal
import struct
import sys
from pathlib import Path

import pytest

import prism
from prism.errors import InfrastructureFault, OperatorError
from prism.evaluator.sandbox import (
    Bind,
    IsolationProbe,
    SandboxLimits,
    SandboxSpec,
    probe_isolation,
    python_binds,
    start_sandboxed,
)
from prism.profiles import load_profile

ECHO_SERVER = """
import struct, sys
sys.stderr.write("server up\\n")
while True:
    header = sys.stdin.buffer.read(4)
    if len(header) < 4:
        break
    (size,) = struct.unpack("<I", header)
    payload = sys.stdin.buffer.read(size)
    reply = payload[::-1]
    sys.stdout.buffer.write(struct.pack("<I", len(reply)) + reply)
    sys.stdout.buffer.flush()
sys.stderr.write("server done\\n")
"""


def test_limits_from_profile_pick_the_phase():
    limits = load_profile("local_cpu_smoke").limits
    train = SandboxLimits.from_profile(limits, phase="train")
    evaluation = SandboxLimits.from_profile(limits, phase="eval", device="cuda")
    assert train.wall_s == limits.train_wall_s and evaluation.wall_s == limits.eval_wall_s
    assert train.memory_bytes == limits.memory_bytes and train.log_bytes == limits.log_bytes
    assert (train.device, evaluation.device) == ("cpu", "cuda")


def test_pipe_protocol_over_stdin_and_stdout(tmp_path, small_limits, bwrap_isolation):
    script = tmp_path / "echo.py"
    script.write_text(ECHO_SERVER, encoding="utf-8")
    spec = SandboxSpec(
        argv=[sys.executable, "/job/echo.py"],
        binds=[*python_binds(), Bind(src=tmp_path, dest=Path("/job"))],
        limits=small_limits,
        stdin="pipe",
        stdout="pipe",
    )
    log_path = tmp_path / "logs" / "echo.log"
    with start_sandboxed(spec, log_path=log_path, isolation=bwrap_isolation) as process:
        assert process.stdin is not None and process.protocol is not None
        for message in (b"hello", b"x" * 100_000):
            process.stdin.write(struct.pack("<I", len(message)) + message)
            process.stdin.flush()
            (size,) = struct.unpack("<I", process.protocol.read(4))
            assert process.protocol.read(size) == message[::-1]
        process.stdin.close()
        result = process.wait()
    assert result.exit_code == 0
    assert log_path.read_text(encoding="utf-8") == "server up\nserver done\n"  # stderr only


def test_kill_stops_a_running_sandbox(tmp_path, small_limits, bwrap_isolation):
    spec = SandboxSpec(
        argv=[sys.executable, "-c", "import time; time.sleep(60)"], binds=python_binds(), limits=small_limits
    )
    process = start_sandboxed(spec, log_path=tmp_path / "sleep.log", isolation=bwrap_isolation)
    assert process.poll() is None
    process.kill()
    result = process.wait()
    assert result.killed and result.signal == signal.SIGKILL and not result.timed_out
    assert result.wall_s < 10
    assert process.wait() is result  # idempotent


def test_spec_errors_are_infrastructure_faults(tmp_path, small_limits, degraded_isolation, bwrap_isolation):
    missing = SandboxSpec(argv=["true"], binds=[Bind(src=tmp_path / "nope")], limits=small_limits)
    with pytest.raises(InfrastructureFault) as excinfo:
        start_sandboxed(missing, log_path=tmp_path / "x.log", isolation=bwrap_isolation)
    assert excinfo.value.code == "sandbox.bind_missing"
    remapped = SandboxSpec(argv=["true"], binds=[Bind(src=tmp_path, dest=Path("/job"))], limits=small_limits)
    with pytest.raises(InfrastructureFault) as excinfo:
        start_sandboxed(remapped, log_path=tmp_path / "x.log", isolation=degraded_isolation)
    assert excinfo.value.code == "sandbox.degraded_remap"
    with pytest.raises(ValueError):
        Bind(src=Path("relative/path"))


def test_bwrap_setup_failure_is_an_infrastructure_fault(tmp_path, small_limits, bwrap_isolation):
    # /proc is mounted by bwrap itself; a bind below it cannot be created.
    spec = SandboxSpec(
        argv=[sys.executable, "-c", "pass"],
        binds=[*python_binds(), Bind(src=tmp_path, dest=Path("/proc/sys/prism"))],
        limits=small_limits,
    )
    process = start_sandboxed(spec, log_path=tmp_path / "setup.log", isolation=bwrap_isolation)
    with pytest.raises(InfrastructureFault) as excinfo:
        process.wait()
    assert excinfo.value.code == "sandbox.setup_failed"


def test_mode_selection_by_environment(monkeypatch):
    monkeypatch.setenv("PRISM_SANDBOX", "sometimes")
    with pytest.raises(OperatorError) as excinfo:
        probe_isolation()
    assert excinfo.value.code == "sandbox.bad_mode"
    monkeypatch.setenv("PRISM_SANDBOX", "degraded")
    probe = probe_isolation()
    assert probe.mode == "degraded" and "forced" in probe.detail
    assert probe_isolation() is probe  # probed once, cached


def test_degraded_mode_still_enforces_rlimits(run_script, degraded_isolation, tmp_path):
    assert degraded_isolation.mode == "degraded"
    result, log = run_script(
        f"""
        with open("{tmp_path}/big.bin", "wb") as handle:
            handle.write(b"0" * 2_000_000)
        """,
        isolation=degraded_isolation,
        fsize_bytes=1_000_000,
    )
    assert result.isolation.mode == "degraded"
    assert result.exit_code != 0 and "File too large" in log
    assert (tmp_path / "big.bin").stat().st_size <= 1_000_000

    # With no memory cgroup, RLIMIT_AS is the memory cap on CPU runs.
    bare = IsolationProbe(mode="degraded", cgroups=False, detail="test: rlimits only")
    result, log = run_script(
        """
        chunks = [b"x" * (50 << 20) for _ in range(40)]
        print("SURVIVED")
        """,
        isolation=bare,
        memory_bytes=300_000_000,
    )
    assert "SURVIVED" not in log and "MemoryError" in log
    assert result.memory_exceeded and result.isolation.mode == "degraded"

    result, _ = run_script("while True:\n    pass\n", isolation=bare, wall_s=1.5)
    assert result.timed_out and result.signal == signal.SIGKILL


def test_python_binds_are_read_only_and_cover_prism():
    binds = python_binds()
    assert binds and all(not b.writable and b.src.exists() and b.dest is None for b in binds)
    sources = [b.src for b in binds]
    prism_dir = Path(prism.__file__).resolve().parent
    assert any(src == prism_dir or src in prism_dir.parents for src in sources)
    assert any(
        Path(sys.prefix).resolve() == src or src in Path(sys.prefix).resolve().parents for src in sources
    )


def test_degraded_mode_scrubs_the_environment(run_script, degraded_isolation, monkeypatch):
    monkeypatch.setenv("PRISM_TEST_HOST_SECRET", "wallet-password")
    result, log = run_script(
        """
        import os
        print("SECRET", os.environ.get("PRISM_TEST_HOST_SECRET"), "TMP", os.environ["TMPDIR"] == os.getcwd())
        """,
        isolation=degraded_isolation,
    )
    assert result.exit_code == 0, log
    assert "SECRET None TMP True" in log
