"""The measurement examples: the mixer family and the GPT training variant."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from prism.evaluator.graph import record_architecture
from prism.evaluator.interface import PrismContext
from prism.evaluator.loading import count_layers, count_parameters
from prism.profiles import load_profile
from prism.submission import load_submission

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def canonical_family(load_project, root: Path, entrypoint: str = "src/model.py") -> str:
    values = load_profile("local_cpu_smoke").canonical_context.model_dump()
    ctx = PrismContext(**values, seed=0)
    module = load_project(root, entrypoint)
    return record_architecture(module.build_model(ctx), ctx).family_id


def test_gpt_recipe_targets_the_gpt_family_it_declares(load_project):
    declared = yaml.safe_load((EXAMPLES / "gpt_recipe" / "prism.yaml").read_text())["architecture_id"]
    assert canonical_family(load_project, EXAMPLES / "gpt") == declared
    assert canonical_family(load_project, EXAMPLES / "gpt_recipe") == declared


@pytest.mark.parametrize("example", ["mixer", "gpt_recipe"])
def test_examples_pass_intake(example):
    submission = load_submission(EXAMPLES / example)
    assert submission.architecture_entrypoint == "src/model.py"
    if example == "gpt_recipe":
        assert submission.kind == "training_for_arch"
        assert "configure_optimizer" in submission.hooks


def test_gpt_recipe_hook_returns_an_optimizer_and_a_budget_free_schedule(load_project):
    train = load_project(EXAMPLES / "gpt_recipe" / "src", "train.py")
    gpt = load_project(EXAMPLES / "gpt_recipe", "src/model.py")
    ctx = PrismContext(vocab_size=257, sequence_length=16, max_layers=2, max_parameters=50_000, seed=0)
    model = gpt.build_model(ctx)
    recipe = train.recipe_for(64)
    optimizer, scheduler = train.configure_optimizer(model, recipe, None)
    lrs = []
    for _ in range(400):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    peak = recipe.learning_rate
    assert max(lrs) == pytest.approx(peak) and lrs.index(max(lrs)) == train.WARMUP_STEPS - 1
    assert lrs[-1] == pytest.approx(peak * (train.WARMUP_STEPS / 400) ** 0.5)
    decayed = {id(p) for g in optimizer.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    matrices = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Linear)}
    assert decayed == matrices  # Linear matrices only: not the embeddings, not the LayerNorms


@pytest.mark.parametrize(
    ("budget", "layers", "length"), [(60_000, 1, 32), (200_000, 4, 32), (400_000, 8, 64), (2_000_000, 6, 128)]
)
def test_mixer_fits_the_budget_and_the_layer_cap(load_project, budget, layers, length):
    module = load_project(EXAMPLES / "mixer", "src/model.py")
    sizing = load_project(EXAMPLES / "mixer", "src/sizing.py")
    ctx = PrismContext(
        vocab_size=257, sequence_length=length, max_layers=layers, max_parameters=budget, seed=0
    )
    model = module.build_model(ctx)
    assert count_parameters(model) <= budget
    assert count_parameters(model) == sizing.parameter_count(
        257, length, model.shape.depth, model.shape.width
    )
    assert 1 <= count_layers(model) <= layers
    assert model(torch.zeros(2, length, dtype=torch.long)).shape == (2, length, 257)


def test_mixer_is_causal(load_project):
    module = load_project(EXAMPLES / "mixer", "src/model.py")
    ctx = PrismContext(vocab_size=257, sequence_length=32, max_layers=2, max_parameters=100_000, seed=0)
    torch.manual_seed(0)
    model = module.build_model(ctx).eval()
    with torch.no_grad():  # make the token mixing matter before testing it
        for block in model.blocks:
            block.mixing.weight.normal_(std=0.3)
    tokens = torch.randint(0, 257, (2, 32))
    for cut in (0, 7, 20):
        changed = tokens.clone()
        changed[:, cut + 1 :] = (changed[:, cut + 1 :] + 5) % 257
        with torch.no_grad():
            before, after = model(tokens), model(changed)
        assert torch.allclose(before[:, : cut + 1], after[:, : cut + 1], atol=1e-6)
        assert not torch.allclose(before[:, cut + 1 :], after[:, cut + 1 :], atol=1e-3)


def test_mixer_learns_a_byte_pattern(load_project):
    module = load_project(EXAMPLES / "mixer", "src/model.py")
    ctx = PrismContext(vocab_size=257, sequence_length=32, max_layers=2, max_parameters=60_000, seed=0)
    torch.manual_seed(0)
    model = module.build_model(ctx)
    text = b"the quick brown fox jumps over the lazy dog. " * 40
    data = torch.tensor(list(text), dtype=torch.long)
    starts = torch.arange(0, len(data) - 33, 7)
    windows = torch.stack([data[s : s + 33] for s in starts])
    optimizer = torch.optim.AdamW(model.parameters(), lr=module.get_recipe(ctx).learning_rate)
    losses = []
    for step in range(60):
        batch = windows[(torch.arange(8) + step * 8) % len(windows)]
        logits = model(batch[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, 257), batch[:, 1:].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[0] > 5.0  # about ln(257) at initialization
    assert sum(losses[-5:]) / 5 < 0.5 * losses[0]
