"""``prism localnet`` end to end: the README's main command, with a tiny profile to keep CI fast.

The command is run exactly as a person runs it (a subprocess of the installed CLI); only the
profile is swapped for the tiny test profile. It must end with the leaderboard of the three
example submissions, non-zero weights for the right owners on chain, and exit code 0.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from prism.localnet import LocalnetConfig, _finished, default_miners
from prism.validator.status import EvaluationStats, ValidatorStatus

TINY_PROFILE = Path(__file__).with_name("tiny_profile.yaml")


def test_finished_needs_every_submission_nothing_pending_and_current_weights() -> None:
    status = ValidatorStatus(
        hotkey="hk", block=60, step=9, submissions=3, runs={"done": 4}, pending_runs=0,
        evaluation=EvaluationStats(backend="local", slots=1), last_weights_block=50, weights_current=True,
        updated_at=0.0,
    )  # fmt: skip
    assert _finished(status, 3)
    assert not _finished(status.model_copy(update={"weights_current": False}), 3)  # weights predate a result
    assert not _finished(status.model_copy(update={"pending_runs": 1}), 3)
    assert not _finished(status.model_copy(update={"submissions": 2}), 3)
    assert not _finished(status.model_copy(update={"last_weights_block": None}), 3)
    assert not _finished(None, 3)


def test_default_miners_are_two_families_and_one_training_variant() -> None:
    names = [m.submission.name for m in LocalnetConfig(root=Path("/tmp/x")).miners]
    assert names == ["gpt", "mixer", "gpt_recipe"]
    assert all(m.submission.exists() for m in default_miners())


@pytest.mark.slow
def test_localnet_ends_with_leaderboard_and_weights_on_chain(tmp_path: Path) -> None:
    root = tmp_path / "localnet"
    proc = subprocess.run(
        [sys.executable, "-m", "prism.cli", "localnet", "--dir", str(root), "--profile", str(TINY_PROFILE),
         "--block-time", "0.5", "--tempo", "6", "--timeout", "600", "--workers", "2", "--json"],
        capture_output=True, text=True, timeout=720,
    )  # fmt: skip
    logs = "\n".join(p.read_text()[-2000:] for p in sorted((root / "logs").glob("*.log")))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:] + logs
    out = proc.stdout
    assert "Architecture families" in out and "On chain" in out
    summary = json.loads(out[out.index("{\n") :])
    weights, incentives = summary["weights"], summary["incentives"]
    # The architecture pool pays a family's owner; only miners earn, the validator does not.
    assert weights["validator"] == 0.0
    assert sum(weights.values()) == pytest.approx(1.0)
    assert max(weights["miner-gpt"], weights["miner-mixer"]) > 0.0
    assert sum(incentives.values()) == pytest.approx(1.0)
    manifests = list(Path(summary["runs_dir"]).glob("*/prism_run_manifest.v1.json"))
    assert len(manifests) >= 4  # gpt reference + submitted, mixer reference, recipe submitted
    evaluation = summary["evaluation"]
    assert evaluation["finished_runs"] >= 4 and evaluation["backend"] == "local" and evaluation["slots"] == 2
    assert evaluation["max_concurrent"] == 2  # --workers 2: two runs were in flight at once
    assert "evaluation:" in out and "prism serve --db" in out
    # Every process it started is gone.
    assert subprocess.run(["pgrep", "-f", str(root)], capture_output=True).returncode == 1
