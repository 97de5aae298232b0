"""Make the literal-manifest builders importable as ``prism_test_manifests``."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path


def _load_builders() -> None:
    if "prism_test_manifests" in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(
        "prism_test_manifests", Path(__file__).with_name("manifests.py")
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["prism_test_manifests"] = module
    spec.loader.exec_module(module)


_load_builders()
