"""Fixtures for `prism identify` / `prism check --build`: a profile with several regimes."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from prism.profiles import load_profile

# --import-mode=importlib does not put test folders on sys.path; the helper module needs it.
sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture(scope="session")
def regimes_profile(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """local_cpu_smoke with three regimes: short (T = 64), long (T = 512) and a tight budget."""
    data = load_profile("local_cpu_smoke").model_dump(mode="json")
    smoke = data["regimes"][0]
    data["name"] = "test_identify_regimes"
    data["regimes"] = [
        {**smoke, "name": "short", "sequence_length": 64},
        {**smoke, "name": "long", "sequence_length": 512},
        {**smoke, "name": "tight", "max_parameters": 50_000, "max_layers": 2},
    ]
    path = tmp_path_factory.mktemp("profiles") / "regimes.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path
