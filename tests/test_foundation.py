"""The shared contracts: interface import weight, profile data, manifest schema."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from prism.evaluator.interface import PrismContext, TrainingRecipe, coerce_recipe
from prism.profiles import PROFILE_NAMES, load_profile


def test_interface_does_not_import_torch() -> None:
    code = (
        "import sys, prism.evaluator.interface, prism_challenge.evaluator.interface as alias;"
        "assert alias.TrainingRecipe is prism.evaluator.interface.TrainingRecipe;"
        "print(json.dumps(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", "import json;" + code], capture_output=True, text=True, check=True
    )
    assert json.loads(out.stdout) == []


def test_recipe_validation_and_coercion() -> None:
    assert coerce_recipe({"learning_rate": 1e-3, "batch_size": 4}).batch_size == 4
    with pytest.raises(ValueError):
        TrainingRecipe(learning_rate=-1.0)
    with pytest.raises(ValueError):
        TrainingRecipe(learning_rate=1e-3, unknown_field=1)
    with pytest.raises(TypeError):
        coerce_recipe(3)


def test_context_carries_every_seed_field() -> None:
    ctx = PrismContext(vocab_size=257, sequence_length=64, max_layers=4, max_parameters=10_000, seed=1)
    for name in (
        "vocab_size",
        "sequence_length",
        "max_layers",
        "max_parameters",
        "seed",
        "checkpoint_dir",
        "resume_checkpoint_dir",
        "checkpoint_api_version",
        "attempt",
        "is_resume",
        "rank",
        "local_rank",
        "world_size",
        "distributed_backend",
        "device",
        "checkpoint_metadata",
    ):
        assert hasattr(ctx, name), name


@pytest.mark.parametrize("name", PROFILE_NAMES)
def test_profiles_load(name: str) -> None:
    profile = load_profile(name)
    assert profile.name == name
    assert profile.official == (name != "local_cpu_smoke")
    if name == "gpu_proxy_eval":
        assert len(profile.regimes) >= 2
        assert len({r.max_parameters for r in profile.regimes}) == len(profile.regimes)
