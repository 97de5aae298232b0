"""The scripts under examples/scripts run as documented (with the tiny test profile)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "validator" / "tiny_profile.yaml"


@pytest.mark.slow
def test_paired_comparison_script(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "scripts" / "paired_comparison.py"), "--profile", str(TINY),
         "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    out = json.loads(proc.stdout[proc.stdout.index("{") :])
    assert out["window_stderr_bpb"] > 0
    # on the challenger's own windows the paired difference is close to the two own-window scores'
    unpaired = out["incumbent_own_windows_bpb"] - out["challenger_bpb"]
    assert abs(out["paired_difference_bpb"] - unpaired) < 0.5


@pytest.mark.parametrize("project", ["gpt", "mixer", "recurrence"])
def test_program_check_script_rebuilds_each_example_bit_for_bit(project: str) -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "scripts" / "program_check.py"), "--project",
         str(ROOT / "examples" / project)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    out = json.loads(proc.stdout[proc.stdout.index("{") :])
    assert out["max_abs_logit_difference"] == 0.0
    assert out["claimed_family"] == out["family_of_the_program"]
    assert out["weights_read_only_on_the_window"] == []
