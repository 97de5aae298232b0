"""Fixtures for the evaluator tests: a tiny real data dir, a tiny profile, submission writers."""

from __future__ import annotations

import random
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from prism.profiles import load_profile

# --import-mode=importlib does not put test folders on sys.path; the helper modules need it.
sys.path.insert(0, str(Path(__file__).resolve().parent))

WORDS = [
    "the",
    "model",
    "learns",
    "to",
    "predict",
    "the",
    "next",
    "byte",
    "of",
    "text",
    "from",
    "the",
    "bytes",
    "before",
    "it",
    "and",
    "the",
    "loss",
    "falls",
    "as",
    "training",
    "goes",
    "on",
    "while",
    "the",
    "held",
    "out",
    "windows",
    "measure",
    "what",
    "it",
    "really",
    "learned",
]


def _document(rng: random.Random) -> str:
    """Learnable pseudo-English: sentences drawn from a small vocabulary with fixed punctuation."""
    sentences = []
    for _ in range(rng.randint(6, 12)):
        words = [rng.choice(WORDS) for _ in range(rng.randint(5, 12))]
        sentences.append(" ".join(words).capitalize() + ".")
    return " ".join(sentences)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory, text_corpus_builder) -> Path:
    rng = random.Random(1234)
    texts = [_document(rng) for _ in range(600)]
    return text_corpus_builder(texts, tmp_path_factory.mktemp("evaluator-data"), shard_tokens=1 << 16)


def _tiny_profile(**regime_updates: object):
    """local_cpu_smoke shrunk to seconds: 32-token windows, ~40 steps, a 60k-parameter budget."""
    base = load_profile("local_cpu_smoke")
    regime = base.regimes[0].model_copy(
        update={
            "max_parameters": 60_000,
            "max_layers": 4,
            "sequence_length": 32,
            "train_tokens": 32 * 8 * 40,
            "batch_size": 8,
            "batch_size_cap": 16,
        }
        | regime_updates
    )
    return base.model_copy(
        update={
            "regimes": (regime,),
            "seeds": (7,),
            "heldout": base.heldout.model_copy(update={"windows": 64, "batch_size": 32}),
            "limits": base.limits.model_copy(update={"train_wall_s": 240, "eval_wall_s": 120}),
        }
    )


@pytest.fixture
def clean_modules(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """In-process runs import submissions by stem (model, train, ...): forget them afterwards.

    Only modules loaded from pytest's temp dirs go; torch's lazily imported submodules stay.
    """
    base = str(tmp_path_factory.getbasetemp().resolve())
    path_before = list(sys.path)
    yield
    for name, module in list(sys.modules.items()):
        if str(getattr(module, "__file__", None) or "").startswith(base):
            del sys.modules[name]
    sys.path[:] = path_before


def _write_files(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


@pytest.fixture
def tiny_profile():
    """Factory: ``tiny_profile(**regime_updates) -> Profile``."""
    return _tiny_profile


@pytest.fixture
def write_files():
    """Factory: ``write_files(root, {relative_name: text}) -> root``."""
    return _write_files
