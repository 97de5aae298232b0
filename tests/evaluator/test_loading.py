"""Loading submissions by stem, hook resolution, parameter and layer counting (in-process, real files)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from prism.errors import MinerFault
from prism.evaluator.context import ContextValues, make_context
from prism.evaluator.loading import (
    count_layers,
    count_parameters,
    hook_source_file,
    inference_logits,
    load_submission_modules,
    resolve_hooks,
)
from prism.evaluator.plan import make_run_id

pytestmark = pytest.mark.usefixtures("clean_modules")


def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


SEED_MODEL = """
import torch
from train import recipe
from layers import Scale

class TinyBlock(torch.nn.Module):
    def __init__(self, vocab_size):
        super().__init__()
        self.emb = torch.nn.Embedding(vocab_size, 8)
        self.proj = torch.nn.Linear(8, vocab_size)
        self.scale = Scale()
    def forward(self, tokens):
        return self.scale(self.proj(self.emb(tokens)))

def build_model(ctx):
    return TinyBlock(ctx.vocab_size)

def get_recipe(ctx):
    return recipe(ctx)

def infer(model, batch, ctx):
    return model(batch["input_ids"]) * 0.0
"""
SEED_TRAIN = """
from prism_challenge.evaluator.interface import TrainingRecipe
from losses import my_loss

def recipe(ctx):
    return TrainingRecipe(learning_rate=3e-4, batch_size=2)

def compute_loss(model, batch, ctx):
    return my_loss(model, batch)

def infer(model, batch, ctx):
    return model(batch["input_ids"])
"""
SEED_LAYERS = """
import torch
class Scale(torch.nn.Module):
    def forward(self, x):
        return x * 1.0
"""
SEED_LOSSES = """
import torch.nn.functional as F
def my_loss(model, batch):
    logits = model(batch["input_ids"])
    return F.cross_entropy(logits.flatten(0, 1), batch["targets"].flatten())
"""


def test_multi_file_project_imports_siblings_by_stem_and_prism_challenge(tmp_path: Path) -> None:
    root = _write(
        tmp_path / "proj",
        {
            "src/model.py": SEED_MODEL,
            "src/train.py": SEED_TRAIN,
            "src/layers.py": SEED_LAYERS,
            "src/losses.py": SEED_LOSSES,
        },
    )
    loaded = load_submission_modules(root, "src/model.py", "src/train.py")
    ctx = make_context(
        ContextValues(vocab_size=11, sequence_length=4, max_layers=2, max_parameters=10_000, seed=0)
    )
    model = loaded.architecture.build_model(ctx)
    assert loaded.architecture.get_recipe(ctx).batch_size == 2
    hooks = resolve_hooks(loaded)
    # The training module wins over the architecture module for the same hook name.
    assert set(hooks) == {"compute_loss", "infer"}
    assert hooks["infer"].__module__ == "train"
    assert hook_source_file(hooks["compute_loss"], root) == "src/train.py"
    logits = inference_logits(model, hooks, torch.zeros(3, 4, dtype=torch.long), ctx)
    assert logits.shape == (3, 4, 11)
    assert logits.abs().sum() > 0  # the training module's infer, not the zeroing one


def test_import_error_and_missing_functions_are_miner_faults(tmp_path: Path) -> None:
    root = _write(tmp_path / "a", {"broken.py": "import torch\nraise RuntimeError('boom')\n"})
    with pytest.raises(MinerFault) as info:
        load_submission_modules(root, "broken.py", None)
    assert info.value.code == "eval.import_failed"
    root = _write(tmp_path / "b", {"nobuild.py": "def get_recipe(ctx):\n    return {}\n"})
    with pytest.raises(MinerFault) as info:
        load_submission_modules(root, "nobuild.py", None)
    assert info.value.code == "eval.missing_function"


def test_non_callable_hook_is_a_miner_fault(tmp_path: Path) -> None:
    root = _write(
        tmp_path / "c",
        {
            "one.py": "def build_model(ctx):\n    return None\ndef get_recipe(ctx):\n    return {}\ntrain_step = 3\n"
        },
    )
    loaded = load_submission_modules(root, "one.py", None)
    with pytest.raises(MinerFault) as info:
        resolve_hooks(loaded)
    assert info.value.code == "hook.not_callable"


def test_bad_logits_from_inference_path_are_typed(tmp_path: Path) -> None:
    ctx = make_context(
        ContextValues(vocab_size=5, sequence_length=3, max_layers=1, max_parameters=100, seed=0)
    )
    model = torch.nn.Embedding(5, 4)  # (B, T, 4): wrong vocabulary width
    with pytest.raises(MinerFault) as info:
        inference_logits(model, {}, torch.zeros(2, 3, dtype=torch.long), ctx)
    assert info.value.code == "eval.bad_logits"
    with pytest.raises(MinerFault):
        inference_logits(
            model, {"inference_logits": lambda m, b, c: "logits"}, torch.zeros(2, 3, dtype=torch.long), ctx
        )


class _Block(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(4, 4)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.GELU(), torch.nn.Linear(8, 4))


def test_count_layers_definition() -> None:
    gpt_like = torch.nn.Module()
    gpt_like.emb = torch.nn.Embedding(10, 4)
    gpt_like.blocks = torch.nn.ModuleList(_Block() for _ in range(5))
    assert count_layers(gpt_like) == 5  # the MLP's Sequential (2 linears) is shallower
    nested = torch.nn.ModuleList([torch.nn.ModuleList([_Block(), _Block()]) for _ in range(3)])
    assert count_layers(nested) == 6  # nested stacks add up
    assert count_layers(torch.nn.Linear(3, 3)) == 1
    # Parameter-free children (activations, dropout) are not layers.
    seq = torch.nn.Sequential(
        torch.nn.Linear(2, 2), torch.nn.ReLU(), torch.nn.Dropout(), torch.nn.Linear(2, 2)
    )
    assert count_layers(seq) == 2


def test_count_parameters_counts_tied_weights_once() -> None:
    emb = torch.nn.Embedding(10, 4)
    head = torch.nn.Linear(4, 10, bias=False)
    head.weight = emb.weight
    model = torch.nn.ModuleDict({"emb": emb, "head": head})
    assert count_parameters(model) == 40


def test_run_id_is_deterministic_and_sensitive_to_every_input() -> None:
    base = dict(
        zip_sha256="a" * 64,
        profile_key="p@1",
        regime="r",
        seed=1,
        recipe_mode="reference",
        heldout_seed=7,
        attempt=0,
        data_fingerprint="d" * 64,
        nproc=1,
        evaluator_version="0.1.0+x",
    )
    assert make_run_id(**base) == make_run_id(**base)
    for key, value in [
        ("seed", 2),
        ("attempt", 1),
        ("heldout_seed", 8),
        ("recipe_mode", "submitted"),
        ("regime", "q"),
        ("profile_key", "p@2"),
        ("zip_sha256", "b" * 64),
        ("data_fingerprint", "e" * 64),
        ("nproc", 2),
        ("evaluator_version", "0.1.0+y"),
    ]:
        assert make_run_id(**(base | {key: value})) != make_run_id(**base)
