"""The runner's hook contract, run in-process on a real data dir with a tiny real model.

Each hook test submission records its calls in a module-level list, so a test proves the hook was
called with the right arguments, and checks that its effect shows in what the runner produced.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
from feed_helpers import run_runner_with_feed
from safetensors.torch import load_file

from prism.evaluator.context import (
    CHECKPOINT_RECORD_FILENAME,
    EXIT_MINER_FAULT,
    EXIT_OK,
    PROBE_FILENAME,
    RUNNER_REPORT_FILENAME,
    WEIGHTS_FILENAME,
    ContextValues,
    RunnerReport,
    RunSpec,
)

pytestmark = pytest.mark.usefixtures("clean_modules")

BASE = """
import torch
from prism.evaluator.interface import TrainingRecipe

CALLS = []

class Bigram(torch.nn.Module):
    def __init__(self, vocab):
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, 16)
        self.head = torch.nn.Linear(16, vocab)
    def forward(self, tokens):
        return self.head(self.emb(tokens))

def build_model(ctx):
    return Bigram(ctx.vocab_size)

def get_recipe(ctx):
    return RECIPE

RECIPE = TrainingRecipe(learning_rate=1e-2, batch_size=8, weight_decay=0.0)
"""


def _spec(tmp_path: Path, data_dir: Path, profile, entry: Path, mode: str, **ctx_updates) -> Path:
    regime = profile.regimes[0]
    out = tmp_path / "out"
    out.mkdir(parents=True, exist_ok=True)
    context = ContextValues(
        vocab_size=257,
        sequence_length=regime.sequence_length,
        max_layers=regime.max_layers,
        max_parameters=regime.max_parameters,
        seed=3,
        checkpoint_dir=str(out / "checkpoints"),
    ).model_copy(update=ctx_updates)
    spec = RunSpec(
        run_id="run-test",
        submission_dir=str(entry.parent),
        architecture_entrypoint=entry.name,
        training_entrypoint=None,
        feed_socket="",
        out_dir=str(out),
        recipe_mode=mode,
        regime=regime,
        context=context,
        eos_id=256,
        lr_window=profile.lr_window,
        probe_every_steps=1,
        probe_fraction=0.25,
        log_every_steps=5,
        **({"resume_step": ctx_updates["resume_step"]} if "resume_step" in ctx_updates else {}),
    )
    return spec.write(tmp_path / "spec")


def _run(tmp_path, data_dir, tiny_profile, source: str, mode: str = "submitted", name: str = "sub", **ctx):
    sub = tmp_path / "submission"
    sub.mkdir(parents=True, exist_ok=True)
    entry = sub / f"{name}.py"
    entry.write_text(BASE + source, encoding="utf-8")
    resume_step = ctx.pop("resume_step", None)
    spec_path = _spec(tmp_path, data_dir, tiny_profile(), entry, mode, **ctx)
    if resume_step is not None:
        spec = RunSpec.read(spec_path).model_copy(update={"resume_step": resume_step})
        spec_path.chmod(0o644)
        spec_path.write_text(spec.model_dump_json(), encoding="utf-8")
    code, _ = run_runner_with_feed(spec_path, data_dir)
    out = tmp_path / "out"
    report = RunnerReport.model_validate_json((out / RUNNER_REPORT_FILENAME).read_text())
    return code, report, out, sys.modules.get(name)


def _initial_weights(seed: int = 3) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    emb = torch.nn.Embedding(257, 16)
    head = torch.nn.Linear(16, 257)
    return {
        "emb.weight": emb.weight.detach(),
        "head.weight": head.weight.detach(),
        "head.bias": head.bias.detach(),
    }


def _probes(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / PROBE_FILENAME).read_text().splitlines()]


def test_reference_mode_trains_and_ignores_hooks(tmp_path, data_dir, tiny_profile) -> None:
    code, report, out, mod = _run(
        tmp_path,
        data_dir,
        tiny_profile,
        """
def configure_optimizer(model, recipe, ctx):
    CALLS.append("configure_optimizer")
    return torch.optim.SGD(model.parameters(), lr=0.0)

def inference_logits(model, batch, ctx):
    CALLS.append("inference_logits")
    return model(batch["input_ids"])
""",
        mode="reference",
    )
    assert code == EXIT_OK and report.ok
    assert mod.CALLS == []  # no hook ran
    assert report.hooks["configure_optimizer"].present and not report.hooks["configure_optimizer"].used
    assert not report.hooks["inference_logits"].used
    assert report.steps == report.planned_steps == 40
    assert report.tokens == 40 * 8 * 32
    assert report.recipe_effective["optimizer_source"] == "harness"
    probes = _probes(out)
    assert len(probes) == 40
    assert probes[0]["loss_nats"] == pytest.approx(math.log(257), abs=0.3)  # random init
    assert probes[-1]["loss_nats"] < probes[0]["loss_nats"] - 1.0  # it learned
    weights = load_file(str(out / WEIGHTS_FILENAME))
    assert set(weights) == {"emb.weight", "head.weight", "head.bias"}


def test_configure_optimizer_is_called_with_model_recipe_ctx_and_lr_zero_does_not_learn(
    tmp_path, data_dir, tiny_profile
) -> None:
    code, report, out, mod = _run(
        tmp_path,
        data_dir,
        tiny_profile,
        """
def configure_optimizer(model, recipe, ctx):
    CALLS.append((type(model).__name__, recipe, ctx))
    return torch.optim.SGD(model.parameters(), lr=0.0)
""",
    )
    assert code == EXIT_OK, report.failure
    ((model_name, recipe, ctx),) = mod.CALLS
    assert model_name == "Bigram"
    assert recipe == mod.RECIPE  # the declared recipe, as get_recipe returned it
    assert (ctx.vocab_size, ctx.sequence_length, ctx.seed, ctx.rank, ctx.world_size) == (257, 32, 3, 0, 1)
    assert ctx.checkpoint_dir == str(out / "checkpoints")
    assert report.hooks["configure_optimizer"].used
    trained = load_file(str(out / WEIGHTS_FILENAME))
    for name, tensor in _initial_weights().items():
        assert torch.equal(trained[name], tensor), name  # lr 0: weights never moved
    probes = _probes(out)
    assert min(p["loss_nats"] for p in probes) > probes[0]["loss_nats"] - 0.5  # batch noise only


def test_scheduler_from_configure_optimizer_is_stepped_each_update(tmp_path, data_dir, tiny_profile) -> None:
    code, report, _, mod = _run(
        tmp_path,
        data_dir,
        tiny_profile,
        """
class Counting(torch.optim.lr_scheduler.LambdaLR):
    def step(self, *args, **kwargs):
        CALLS.append("step")
        return super().step(*args, **kwargs)

def configure_optimizer(model, recipe, ctx):
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.learning_rate)
    return opt, Counting(opt, lambda s: 1.0)
""",
    )
    assert code == EXIT_OK, report.failure
    # LambdaLR steps once at construction; the harness then steps once per update.
    assert mod.CALLS.count("step") == 1 + report.steps


def test_compute_loss_gets_shifted_batch_and_its_loss_drives_the_update(
    tmp_path, data_dir, tiny_profile
) -> None:
    code, report, out, mod = _run(
        tmp_path,
        data_dir,
        tiny_profile,
        """
import torch.nn.functional as F

def compute_loss(model, batch, ctx):
    x, y = batch["input_ids"], batch["targets"]
    CALLS.append((tuple(x.shape), tuple(y.shape), x.dtype, bool(torch.equal(x[:, 1:], y[:, :-1]))))
    logits = model(x)
    return 0.0 * F.cross_entropy(logits.reshape(-1, ctx.vocab_size), y.reshape(-1))
""",
    )
    assert code == EXIT_OK, report.failure
    assert len(mod.CALLS) == report.steps == 40
    assert set(mod.CALLS) == {((8, 32), (8, 32), torch.int64, True)}
    assert report.hooks["compute_loss"].used and not report.hooks["train_step"].used
    trained = load_file(str(out / WEIGHTS_FILENAME))
    for name, tensor in _initial_weights().items():  # a zero loss (and no weight decay) changes nothing
        assert torch.equal(trained[name], tensor), name


def test_train_step_owns_the_update(tmp_path, data_dir, tiny_profile) -> None:
    code, report, out, mod = _run(
        tmp_path,
        data_dir,
        tiny_profile,
        """
import torch.nn.functional as F

def compute_loss(model, batch, ctx):
    raise AssertionError("train_step takes precedence over compute_loss")

def train_step(model, batch, optimizer, ctx):
    CALLS.append(type(optimizer).__name__)
    logits = model(batch["input_ids"])
    loss = F.cross_entropy(logits.reshape(-1, ctx.vocab_size), batch["targets"].reshape(-1))
    optimizer.zero_grad()
    loss.backward()
    if len(CALLS) % 2 == 0:  # update only every other step
        optimizer.step()
    return loss
""",
    )
    assert code == EXIT_OK, report.failure
    assert mod.CALLS == ["AdamW"] * 40
    assert report.hooks["train_step"].used and not report.hooks["compute_loss"].used
    probes = _probes(out)
    assert probes[-1]["loss_nats"] < probes[0]["loss_nats"] - 0.5


def test_inference_logits_is_preferred_over_infer_for_the_probe(tmp_path, data_dir, tiny_profile) -> None:
    code, report, out, mod = _run(
        tmp_path,
        data_dir,
        tiny_profile,
        """
def inference_logits(model, batch, ctx):
    CALLS.append(tuple(batch["input_ids"].shape))
    assert set(batch) == {"input_ids"}   # targets are never shown to the inference path
    return torch.zeros(*batch["input_ids"].shape, ctx.vocab_size)   # uniform prediction

def infer(model, batch, ctx):
    raise AssertionError("infer must not be used when inference_logits exists")
""",
    )
    assert code == EXIT_OK, report.failure
    assert mod.CALLS == [(2, 32)] * 40  # ceil(0.25 * 8) sequences probed per step
    assert report.hooks["inference_logits"].used and not report.hooks["infer"].used
    assert {round(p["loss_nats"], 5) for p in _probes(out)} == {round(math.log(257), 5)}


def test_infer_is_the_fallback(tmp_path, data_dir, tiny_profile) -> None:
    code, report, _, mod = _run(
        tmp_path,
        data_dir,
        tiny_profile,
        """
def infer(model, batch, ctx):
    CALLS.append(1)
    return model(batch["input_ids"])
""",
    )
    assert code == EXIT_OK, report.failure
    assert len(mod.CALLS) == 40 and report.hooks["infer"].used


@pytest.mark.parametrize(
    ("source", "code"),
    [
        ("def compute_loss(model, batch, ctx):\n    return 1.0\n", "hook.bad_loss"),
        (
            "def compute_loss(model, batch, ctx):\n    return torch.ones(3, requires_grad=True).sum() * float('nan')\n",
            "eval.nonfinite_loss",
        ),
        ("def train_step(model, batch, optimizer, ctx):\n    return {'loss': 1}\n", "hook.bad_loss"),
        (
            "def train_step(model, batch, optimizer, ctx):\n    return torch.tensor(float('inf'))\n",
            "eval.nonfinite_loss",
        ),
        (
            "def train_step(model, batch, optimizer, ctx):\n    raise ValueError('x')\n",
            "hook.train_step_failed",
        ),
        ("def configure_optimizer(model, recipe, ctx):\n    return 'adam'\n", "hook.bad_optimizer"),
        ("def inference_logits(model, batch, ctx):\n    return torch.zeros(1)\n", "eval.bad_logits"),
    ],
)
def test_bad_hook_returns_are_typed_miner_faults(tmp_path, data_dir, tiny_profile, source, code) -> None:
    exit_code, report, _, _ = _run(tmp_path, data_dir, tiny_profile, source)
    assert exit_code == EXIT_MINER_FAULT
    assert report.failure is not None
    assert (report.failure.code, report.failure.fault) == (code, "miner")
    assert report.nonfinite_loss == (code == "eval.nonfinite_loss")


SAVE = """
import os
def save_checkpoint(model, checkpoint_dir, ctx):
    CALLS.append(("save", checkpoint_dir, ctx.checkpoint_dir))
    os.makedirs(os.path.join(checkpoint_dir, "final"), exist_ok=True)
    torch.save(model.state_dict(), os.path.join(checkpoint_dir, "final", "model.pt"))
    return RETURN
"""


def test_save_checkpoint_return_is_accepted_and_recorded(tmp_path, data_dir, tiny_profile) -> None:
    source = SAVE.replace("RETURN", '{"path": "final/model.pt", "metadata": {"step": 40, "note": "ok"}}')
    code, report, out, mod = _run(tmp_path, data_dir, tiny_profile, source)
    assert code == EXIT_OK, report.failure
    assert [("save", str(out / "checkpoints"), str(out / "checkpoints"))] == mod.CALLS
    assert report.checkpoint is not None
    assert (report.checkpoint.path, report.checkpoint.metadata, report.checkpoint.step) == (
        "final/model.pt",
        {"step": 40, "note": "ok"},
        40,
    )
    assert json.loads((out / CHECKPOINT_RECORD_FILENAME).read_text())["path"] == "final/model.pt"


@pytest.mark.parametrize(
    ("returned", "code"),
    [
        ('"../escape.pt"', "checkpoint.traversal"),
        ('"/tmp/model.pt"', "checkpoint.absolute_path"),
        ('{"path": "final/model.pt", "metadata": {}, "extra": 1}', "checkpoint.bad_return"),
        (
            '(os.symlink(os.path.join(checkpoint_dir, "final"), os.path.join(checkpoint_dir, "ln")) or "ln")',
            "checkpoint.symlink",
        ),
    ],
)
def test_bad_checkpoint_returns_fail_as_miner_faults(
    tmp_path, data_dir, tiny_profile, returned, code
) -> None:
    exit_code, report, _, _ = _run(tmp_path, data_dir, tiny_profile, SAVE.replace("RETURN", returned))
    assert exit_code == EXIT_MINER_FAULT
    assert (report.failure.code, report.failure.fault) == (code, "miner")


def test_load_checkpoint_runs_only_on_an_approved_retry_and_resumes_the_step(
    tmp_path, data_dir, tiny_profile
) -> None:
    source = """
def load_checkpoint(model, checkpoint_dir, ctx):
    CALLS.append((checkpoint_dir, ctx.is_resume, ctx.attempt, dict(ctx.checkpoint_metadata)))
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
"""
    code, report, _, mod = _run(tmp_path / "a", data_dir, tiny_profile, source)
    assert code == EXIT_OK and mod.CALLS == []  # first attempt: never called
    assert not report.hooks["load_checkpoint"].used
    resume_dir = tmp_path / "previous" / "checkpoints"
    resume_dir.mkdir(parents=True)
    code, report, out, mod = _run(
        tmp_path / "b",
        data_dir,
        tiny_profile,
        source,
        name="sub2",
        attempt=1,
        resume_checkpoint_dir=str(resume_dir),
        checkpoint_metadata={"step": 30},
        resume_step=30,
    )
    assert code == EXIT_OK, report.failure
    assert [(str(resume_dir), True, 1, {"step": 30})] == mod.CALLS
    assert report.resumed_from_step == 30 and report.steps == 40
    probes = _probes(out)
    assert [p["step"] for p in probes] == list(range(30, 40))  # only the remaining steps ran


@pytest.mark.parametrize(
    ("source", "code"),
    [
        ("def build_model(ctx):\n    return Bigram(ctx.vocab_size * 100)\n", "budget.parameters_exceeded"),
        (
            "def build_model(ctx):\n    return torch.nn.Sequential(*[torch.nn.Linear(2, 2) for _ in range(9)])\n",
            "budget.layers_exceeded",
        ),
        ("def build_model(ctx):\n    return 'a model'\n", "eval.not_a_module"),
        ("def build_model(ctx):\n    raise RuntimeError('no')\n", "eval.build_failed"),
        ("def get_recipe(ctx):\n    return {'learning_rate': -1}\n", "eval.bad_recipe"),
        ("def get_recipe(ctx):\n    return 3\n", "eval.bad_recipe"),
    ],
)
def test_build_and_recipe_failures_are_typed(tmp_path, data_dir, tiny_profile, source, code) -> None:
    exit_code, report, _, _ = _run(tmp_path, data_dir, tiny_profile, source)
    assert exit_code == EXIT_MINER_FAULT
    assert (report.failure.code, report.failure.fault) == (code, "miner")


def test_recipe_clamping(tmp_path, data_dir, tiny_profile) -> None:
    source = "RECIPE = TrainingRecipe(learning_rate=5.0, batch_size=1000, weight_decay=0.0)\n"
    _, report, _, _ = _run(tmp_path / "ref", data_dir, tiny_profile, source, mode="reference")
    assert report.recipe_effective["learning_rate"] == tiny_profile().lr_window[1]
    assert report.recipe_effective["batch_size"] == 8  # the regime's reference batch
    assert "learning_rate" in report.recipe_clamped and "batch_size" in report.recipe_clamped
    _, report, _, _ = _run(tmp_path / "sub", data_dir, tiny_profile, source, name="sub_b")
    assert report.recipe_effective["batch_size"] == 16  # clamped to batch_size_cap
    assert report.recipe_effective["learning_rate"] == tiny_profile().lr_window[1]
    assert report.steps == (32 * 8 * 40) // (16 * 32)


def test_periodic_checkpoints_follow_the_spec_interval(tmp_path, data_dir, tiny_profile) -> None:
    source = SAVE.replace("RETURN", '{"path": "final", "metadata": {"step": ctx.attempt}}').replace(
        'CALLS.append(("save", checkpoint_dir, ctx.checkpoint_dir))', "CALLS.append(len(CALLS))"
    )
    sub = tmp_path / "submission"
    sub.mkdir()
    (sub / "periodic.py").write_text(BASE + source, encoding="utf-8")
    spec_path = _spec(tmp_path, data_dir, tiny_profile(), sub / "periodic.py", "submitted")
    spec = RunSpec.read(spec_path).model_copy(update={"checkpoint_every_steps": 12})
    spec_path.write_text(spec.model_dump_json(), encoding="utf-8")
    assert run_runner_with_feed(spec_path, data_dir)[0] == EXIT_OK
    report = RunnerReport.model_validate_json((tmp_path / "out" / RUNNER_REPORT_FILENAME).read_text())
    # steps 12, 24, 36 and the end (40)
    assert sys.modules["periodic"].CALLS == [0, 1, 2, 3]
    assert report.checkpoint is not None and report.checkpoint.step == 40
