"""Paired re-measurement: a finished run's stored weights on another run's held-out windows,
through the same sandboxed held-out protocol as the run's own measurement."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from prism.errors import InfrastructureFault
from prism.evaluator.host import evaluate
from prism.evaluator.remeasure import remeasure
from prism.manifest import MANIFEST_FILENAME

pytestmark = pytest.mark.slow

TINY = Path(__file__).resolve().parents[2] / "examples" / "tiny"


def _window_losses(run_dir: Path, manifest) -> dict:
    return json.loads((run_dir / manifest.artifacts.window_losses).read_text())


def test_weights_remeasured_on_their_own_windows_give_the_same_nats_and_other_windows_differ(
    tmp_path, data_dir, tiny_profile
) -> None:
    profile = tiny_profile()
    common = dict(profile=profile, data_dir=data_dir, out_dir=tmp_path / "runs", recipe_mode="reference",
                  progress=False, calibration_dir=tmp_path / "cal")  # fmt: skip
    (model,) = evaluate(TINY, heldout_seed=11, **common)
    (challenger,) = evaluate(TINY, heldout_seed=12, **common)
    assert model.status.state == challenger.status.state == "succeeded"
    model_dir, challenger_dir = tmp_path / "runs" / model.run_id, tmp_path / "runs" / challenger.run_id
    own = _window_losses(model_dir, model)
    kwargs = dict(model_zip=TINY, model_manifest=model, model_run_dir=model_dir, profile=profile,
                  data_dir=data_dir)  # fmt: skip
    again = remeasure(challenger=model, log_dir=tmp_path / "log-own", **kwargs)
    assert again.failure is None
    assert list(again.window_bytes) == own["window_bytes"] and list(again.nats) == own["nats"]  # bit for bit
    other = remeasure(challenger=challenger, log_dir=tmp_path / "log-other", **kwargs)
    theirs = _window_losses(challenger_dir, challenger)
    assert other.failure is None and list(other.window_bytes) == theirs["window_bytes"]
    assert list(other.nats) != own["nats"]  # other windows, other losses
    # the same model measured on the challenger's windows is close to the challenger (same code, other seed)
    assert abs(sum(other.nats) - sum(theirs["nats"])) / sum(theirs["nats"]) < 0.2
    (model_dir / "weights" / "weights.safetensors").chmod(0o600)
    (model_dir / "weights" / "weights.safetensors").unlink()
    with pytest.raises(InfrastructureFault) as gone:
        remeasure(challenger=challenger, log_dir=tmp_path / "log-gone", **kwargs)
    assert gone.value.code == "paired.no_weights"
    assert (challenger_dir / MANIFEST_FILENAME).exists()
