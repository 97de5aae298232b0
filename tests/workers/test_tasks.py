"""What a worker makes of a run whose handling breaks PRISM's own host code."""

from __future__ import annotations

from pathlib import Path

import pytest

from prism.manifest import MANIFEST_FILENAME
from prism.store import RunKey
from prism.submission import pack_to
from prism.workers.tasks import EvaluationTask, run_task

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "tests" / "validator" / "tiny_profile.yaml"

pytestmark = pytest.mark.slow


def test_a_host_exception_on_a_runs_output_is_a_typed_host_error(tmp_path, text_corpus_builder, monkeypatch):
    """Fault injection: the host's weights reader raises as a decoder bug would on crafted output.
    The run is not blamed on the miner (it may be our bug) and leaves no manifest, so its retry
    computes it again; the outcome's code lets the validator keep one submission's host errors
    from pausing everyone (tests/validator: the back-off rule)."""
    from prism.evaluator import host

    def broken_reader(path: Path) -> None:
        raise ValueError(f"cannot make sense of {path.name}")

    monkeypatch.setattr(host, "inspect_weights", broken_reader)
    data_dir = text_corpus_builder(
        [f"a host error is ours {i} " * 20 for i in range(200)], tmp_path / "data", shard_tokens=1 << 15
    )
    zip_path = tmp_path / "tiny.zip"
    key = RunKey(zip_sha256=pack_to(ROOT / "examples" / "tiny", zip_path), profile="test_tiny", profile_version=1,
                 regime="tiny", seed=7, recipe_mode="reference")  # fmt: skip
    task = EvaluationTask(key=key, zip_path=zip_path, profile=str(TINY), data_dir=data_dir,
                          runs_dir=tmp_path / "runs", calibration_dir=tmp_path / "calibration")  # fmt: skip
    outcome = run_task(task)
    assert (outcome.state, outcome.code) == ("infra_fault", "validator.host_error"), outcome
    assert outcome.message is not None and "ValueError: cannot make sense of" in outcome.message
    assert "run " in outcome.message and outcome.manifest_path is None
    assert not list((tmp_path / "runs").glob(f"*/{MANIFEST_FILENAME}"))
