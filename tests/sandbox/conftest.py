"""Fixtures for the sandbox containment tests: real bwrap, real cgroups, raw python scripts."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from prism.evaluator.sandbox import (
    Bind,
    IsolationProbe,
    SandboxLimits,
    SandboxResult,
    SandboxSpec,
    probe_isolation,
    python_binds,
    run_sandboxed,
)

RunScript = Callable[..., tuple[SandboxResult, str]]


@pytest.fixture(scope="session")
def bwrap_isolation() -> IsolationProbe:
    probe = probe_isolation()
    if probe.mode != "bwrap":
        pytest.skip(f"bubblewrap cannot start on this machine: {probe.detail}")
    return probe


@pytest.fixture(scope="session")
def degraded_isolation() -> IsolationProbe:
    return probe_isolation(force_degraded=True)


@pytest.fixture
def small_limits() -> SandboxLimits:
    return SandboxLimits(
        wall_s=30.0,
        memory_bytes=400_000_000,
        pids=64,
        cpu_s=60,
        fsize_bytes=50_000_000,
        nofile=256,
        log_bytes=200_000,
    )


@pytest.fixture
def run_script(tmp_path: Path, small_limits: SandboxLimits, bwrap_isolation: IsolationProbe) -> RunScript:
    """Run a python source string in the sandbox; returns (result, log text).

    The script is bound read-only at /job/script.py; extra binds and limit overrides are optional.
    """

    def run(
        source: str,
        *,
        binds: list[Bind] | None = None,
        isolation: IsolationProbe | None = None,
        args: list[str] | None = None,
        **limit_overrides: object,
    ) -> tuple[SandboxResult, str]:
        iso = isolation or bwrap_isolation
        job = tmp_path / f"job-{len(list(tmp_path.glob('job-*')))}"
        job.mkdir()
        script = job / "script.py"
        script.write_text(textwrap.dedent(source), encoding="utf-8")
        limits = small_limits.model_copy(update=limit_overrides)
        same_path = iso.mode == "degraded"
        job_bind = Bind(src=job) if same_path else Bind(src=job, dest=Path("/job"))
        script_path = str(script) if same_path else "/job/script.py"
        spec = SandboxSpec(
            argv=[sys.executable, script_path, *(args or [])],
            binds=[*python_binds(), job_bind, *(binds or [])],
            limits=limits,
        )
        log_path = job / "run.log"
        result = run_sandboxed(spec, log_path=log_path, isolation=iso)
        return result, log_path.read_text(encoding="utf-8", errors="replace")

    return run
