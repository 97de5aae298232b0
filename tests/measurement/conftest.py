"""Fixtures for the measurement tests: tiny submissions written to disk, trained weights, windows."""

from __future__ import annotations

import math
import textwrap
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from prism.evaluator.interface import PrismContext

CANONICAL = {"vocab_size": 257, "sequence_length": 32, "max_parameters": 200_000, "max_layers": 4}
RUN_CONTEXT = {"vocab_size": 257, "sequence_length": 16, "max_parameters": 60_000, "max_layers": 2, "seed": 7}

# A tiny causal model: token embedding, a causal running mean over past positions, a head.
TINY_MODEL = """
import torch
from prism_challenge.evaluator.interface import TrainingRecipe


class Tiny(torch.nn.Module):
    def __init__(self, vocab_size, width):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab_size, width)
        self.mix = torch.nn.Linear(width, width)
        self.head = torch.nn.Linear(width, vocab_size)

    def forward(self, tokens):
        x = self.embed(tokens)
        steps = torch.arange(1, tokens.shape[1] + 1, device=tokens.device).view(1, -1, 1)
        x = x + torch.tanh(self.mix(x.cumsum(dim=1) / steps))
        return self.head(x)


def build_model(ctx):
    return Tiny(ctx.vocab_size, 16)


def get_recipe(ctx):
    return TrainingRecipe(learning_rate=1e-3, batch_size=4)
"""


@pytest.fixture
def tiny_model() -> str:
    return textwrap.dedent(TINY_MODEL)


@pytest.fixture
def write_submission(tmp_path: Path) -> Callable[..., Path]:
    """Write ``{relative path: source}`` as a project directory and return it."""

    def write(files: dict[str, str], name: str = "sub") -> Path:
        root = tmp_path / name
        for rel, text in files.items():
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(textwrap.dedent(text), encoding="utf-8")
        return root

    return write


@pytest.fixture
def save_weights(tmp_path: Path) -> Callable[..., Path]:
    """Build the submission's model at the run context, perturb it a little, save as safetensors."""

    def save(model, name: str = "weights.safetensors") -> Path:
        from safetensors.torch import save_file

        state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
        path = tmp_path / "weights" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(state, str(path))
        return path

    return save


@pytest.fixture
def heldout_windows() -> tuple[np.ndarray, np.ndarray]:
    """Deterministic (N, T+1) windows with a learnable pattern, plus bytes per window."""
    rng = np.random.default_rng(0)
    n, t = 10, RUN_CONTEXT["sequence_length"]
    base = rng.integers(0, 257, size=(n, 1))
    windows = (base + np.arange(t + 1)[None, :] * 3) % 257
    window_bytes = np.full(n, t, dtype=np.int64) + rng.integers(0, 5, size=n)
    return windows.astype(np.int64), window_bytes


def canonical_ctx(**overrides: int) -> PrismContext:
    values = {**CANONICAL, "seed": 0, **overrides}
    return PrismContext(**values)


def run_ctx() -> PrismContext:
    return PrismContext(**RUN_CONTEXT)


def direct_bpb(model, windows: np.ndarray, window_bytes: np.ndarray) -> float:
    import torch
    import torch.nn.functional as F

    tokens = torch.from_numpy(windows)
    with torch.no_grad():
        logits = model.eval()(tokens[:, :-1])
        nats = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]).double(), tokens[:, 1:].reshape(-1), reduction="sum"
        )
    return float(nats) / (math.log(2) * float(window_bytes.sum()))


@pytest.fixture
def load_project() -> Callable[[Path, str], object]:
    """Import a project's entrypoint (siblings by stem) without leaving its modules behind.

    Several projects in one test process reuse stems (model, layers, train); each import gets a
    clean slate and the modules it added are removed again afterwards.
    """
    import importlib
    import sys

    def load(root: Path, entrypoint: str):
        entry = Path(root) / entrypoint
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

    return load


@pytest.fixture
def contexts():
    """Context helpers: canonical(**overrides), run(), direct_bpb(model, windows, bytes)."""

    class _Contexts:
        canonical = staticmethod(canonical_ctx)
        run = staticmethod(run_ctx)
        bpb = staticmethod(direct_bpb)

    return _Contexts
