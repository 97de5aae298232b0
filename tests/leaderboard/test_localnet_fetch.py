"""A training miner's path on a real network, offline: fetch the family from a localnet validator's
leaderboard, then train the starter in the sandbox on that family."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from leaderboard_helpers import REPO, TINY_PROFILE

from prism.evaluator.host import evaluate
from prism.profiles import load_profile


@pytest.mark.slow
def test_fetched_starter_trains_on_the_family_it_targets(localnet_root: Path, serve, tmp_path: Path) -> None:
    gpt_family = yaml.safe_load((REPO / "examples/gpt_recipe/prism.yaml").read_text())["architecture_id"]
    url = serve(localnet_root / "validator").url
    project = tmp_path / "variant"
    out = subprocess.run([sys.executable, "-m", "prism.cli", "fetch-family", gpt_family, "--from", url,
                          "--out", str(project), "--json"], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert json.loads(out.stdout)["check"]["ok"]

    (manifest,) = evaluate(project, profile=load_profile(str(TINY_PROFILE)), out_dir=tmp_path / "runs",
                           data_dir=localnet_root / "data" / "offline-byte", recipe_mode="submitted",
                           progress=False)  # fmt: skip
    assert manifest.status.state == "succeeded", manifest.status
    # the model the starter builds is the family's, and the stub hook ran the training
    assert manifest.submission.kind == "training_for_arch"
    assert manifest.submission.family_id == manifest.submission.target_architecture_id == gpt_family
    hook = manifest.hooks["configure_optimizer"]
    assert hook.used and hook.source_file == "src/train_variant.py"
    assert manifest.metrics.heldout_bpb is not None and manifest.metrics.train_steps > 1
