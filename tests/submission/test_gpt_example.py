"""The GPT example sizes itself from the context: never over the parameter or depth budget."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType

import pytest
import torch
from submission_helpers import EXAMPLES

from prism.evaluator.interface import PrismContext, TrainingRecipe, coerce_recipe

GPT_SRC = EXAMPLES / "gpt" / "src"


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Tiny models on a shared 2-core machine: extra threads only spin against each other."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@contextmanager
def gpt_modules() -> Iterator[ModuleType]:
    """Import the example (our own trusted code) by stem, as the runner would, then forget it."""
    before = set(sys.modules)
    sys.path.insert(0, str(GPT_SRC))
    try:
        import model  # type: ignore[import-not-found]

        yield model
    finally:
        sys.path.remove(str(GPT_SRC))
        for name in set(sys.modules) - before:
            del sys.modules[name]


@pytest.mark.parametrize(
    ("vocab", "seq", "layers", "budget"),
    [(257, 64, 4, 400_000), (257, 64, 2, 100_000), (257, 32, 8, 30_000), (1000, 128, 6, 2_000_000)],
)
def test_gpt_fits_budget_and_returns_logits(vocab: int, seq: int, layers: int, budget: int) -> None:
    torch.manual_seed(0)
    ctx = PrismContext(
        vocab_size=vocab, sequence_length=seq, max_layers=layers, max_parameters=budget, seed=0
    )
    with gpt_modules() as gpt:
        model = gpt.build_model(ctx)
        recipe = coerce_recipe(gpt.get_recipe(ctx))
        n_params = sum(p.numel() for p in model.parameters())
        assert n_params <= budget
        assert n_params >= budget // 4  # it uses the budget, not a token fraction of it
        assert len(model.blocks) <= layers
        tokens = torch.randint(0, vocab, (2, seq))
        logits = model(tokens)
        assert logits.shape == (2, seq, vocab)
        assert torch.isfinite(logits).all()
        assert isinstance(recipe, TrainingRecipe)


def test_gpt_parameter_formula_is_exact_at_large_vocab() -> None:
    with gpt_modules():
        import config  # type: ignore[import-not-found]

        for layers, budget in [(12, 124_000_000), (8, 20_000_000), (4, 3_000_000)]:
            chosen = config.choose_config(50257, 1024, layers, budget)
            total = config.parameter_count(50257, 1024, chosen.n_layer, chosen.d_model)
            assert total <= budget and chosen.n_layer <= layers
            assert chosen.d_model % chosen.n_head == 0


def test_gpt_is_causal_and_trains() -> None:
    torch.manual_seed(0)
    ctx = PrismContext(vocab_size=257, sequence_length=16, max_layers=2, max_parameters=60_000, seed=0)
    with gpt_modules() as gpt:
        import train  # type: ignore[import-not-found]

        model = gpt.build_model(ctx)
        tokens = torch.randint(0, 257, (4, 17))
        # Causality: changing the last token leaves earlier positions' logits unchanged.
        changed = tokens[:, :16].clone()
        changed[:, -1] = (changed[:, -1] + 1) % 257
        with torch.no_grad():
            assert torch.allclose(model(tokens[:, :16])[:, :-1], model(changed)[:, :-1], atol=1e-5)
        optimizer = train.configure_optimizer(model, gpt.get_recipe(ctx), ctx)
        grouped = [p for group in optimizer.param_groups for p in group["params"]]
        assert sorted(map(id, grouped)) == sorted(id(p) for p in model.parameters())
        assert [group["weight_decay"] for group in optimizer.param_groups] == [0.1, 0.0]
        losses = []
        for _ in range(25):
            logits = model(tokens[:, :-1])
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 257), tokens[:, 1:].reshape(-1))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        assert losses[-1] < losses[0] - 1.0  # memorizes a fixed batch
