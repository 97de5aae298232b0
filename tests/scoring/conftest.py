"""Make the literal-manifest builders and the economics example importable as
``prism_test_manifests`` and ``prism_test_economics``."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path


def _load(name: str, filename: str) -> None:
    if name in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(filename))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)


_load("prism_test_manifests", "manifests.py")
_load("prism_test_economics", "economics.py")
