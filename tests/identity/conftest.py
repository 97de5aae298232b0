"""Fixtures for the identity tests: the canonical context, the leader's graph, project loading."""

from __future__ import annotations

import importlib
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

# --import-mode=importlib does not put test folders on sys.path; the helper module needs it.
sys.path.insert(0, str(Path(__file__).resolve().parent))

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture(scope="session")
def canonical_ctx():
    from prism.evaluator.interface import PrismContext
    from prism.profiles import load_profile

    values = load_profile("local_cpu_smoke").canonical_context.model_dump()
    return PrismContext(**values, seed=0)


@pytest.fixture(scope="session")
def record(canonical_ctx) -> Callable:
    """``record(model)``: the model's ArchitectureGraph at the canonical context."""
    from prism.evaluator.graph import record_architecture

    return lambda model: record_architecture(model, canonical_ctx)


def _import_project(root: Path, entrypoint: str = "src/model.py"):
    entry = root / entrypoint
    before = set(sys.modules)
    paths = [str(entry.parent), str(root)]
    sys.path[:0] = paths
    try:
        return importlib.import_module(entry.stem)
    finally:
        for name in set(sys.modules) - before:
            del sys.modules[name]
        for path in paths:
            sys.path.remove(path)


@pytest.fixture(scope="session")
def example_graph(canonical_ctx, record) -> Callable:
    """``example_graph(root)``: the graph of a project's ``build_model`` at the canonical context."""
    import torch

    def graph(root: Path):
        module = _import_project(root)
        torch.manual_seed(0)
        return record(module.build_model(canonical_ctx))

    return graph


@pytest.fixture(scope="session")
def leader(example_graph):
    """examples/gpt: the family every no-op fork must map to."""
    return example_graph(EXAMPLES / "gpt")


@pytest.fixture(scope="session")
def mixer(example_graph):
    return example_graph(EXAMPLES / "mixer")


@pytest.fixture
def patched_example(tmp_path: Path) -> Callable[[str, str, str, str], Path]:
    """Copy an example and replace one line of one file: ``(example, file, old, new) -> root``."""

    def patch(example: str, relative: str, old: str, new: str) -> Path:
        root = tmp_path / example
        shutil.copytree(EXAMPLES / example, root)
        path = root / relative
        text = path.read_text(encoding="utf-8")
        assert old in text, f"{old!r} not in {relative}"
        path.write_text(text.replace(old, new), encoding="utf-8")
        return root

    return patch
