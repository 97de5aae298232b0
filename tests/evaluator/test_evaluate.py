"""End to end: evaluate() through the real sandbox, torchrun, runner and held-out process.

Every test here starts real sandboxed processes and trains a real (tiny) model, so they are
marked slow; the tiny profile keeps each run to a few seconds of training.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from prism.evaluator.host import evaluate
from prism.manifest import MANIFEST_FILENAME, read_manifest

pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
INIT_BPB = math.log2(257)  # a uniform prediction over the byte vocabulary, per byte (about 8.0)


def _check_artifacts(root: Path, manifest) -> None:
    assert read_manifest(root / MANIFEST_FILENAME) == manifest
    for field in ("architecture_graph", "architecture_metadata", "run_log", "metrics", "plot"):
        rel = getattr(manifest.artifacts, field)
        assert rel is not None, field
        assert (root / rel).is_file(), field


def test_gpt_example_learns_is_valid_and_deterministic(tmp_path, data_dir, tiny_profile) -> None:
    profile = tiny_profile(train_tokens=32 * 8 * 60)
    kwargs = dict(
        profile=profile, data_dir=data_dir, out_dir=tmp_path / "out", recipe_mode="reference", progress=False
    )
    (first,) = evaluate(EXAMPLES / "gpt", **kwargs)
    assert first.status.state == "succeeded", first.status.failure
    root = tmp_path / "out" / first.run_id
    _check_artifacts(root, first)
    m = first.metrics
    assert m.heldout_bpb is not None and m.heldout_bpb < INIT_BPB - 1.5  # it learned something real
    assert m.first_probe_loss_nats == pytest.approx(math.log(257), abs=0.5)
    assert m.train_steps == 60 and m.train_tokens == 60 * 8 * 32
    assert m.heldout_tokens == 64 * 32 and m.heldout_bytes > 0
    assert m.parameter_count is not None and m.parameter_count <= 60_000
    assert m.flops_per_token and m.flops_per_token > 0
    assert m.probe_curve and m.loss_vs_tokens[0].tokens_seen == m.train_tokens
    assert first.validation.score_eligible is False
    assert "profile.not_official" in first.validation.reasons
    assert set(first.validation.reasons) <= {"profile.not_official", "isolation.degraded"}
    assert first.submission.family_id and first.submission.version_id
    assert first.hooks["configure_optimizer"].present and not first.hooks["configure_optimizer"].used
    assert first.recipe is not None and first.recipe.effective["optimizer_source"] == "harness"
    assert first.dataset.tokenizer.name == "byte" and first.dataset.heldout_seed == profile.heldout.seed
    assert first.diagnostics.params_sha256_before_eval == first.diagnostics.params_sha256_after_eval

    # A restarted validator finds the finished run instead of recomputing it.
    (again,) = evaluate(EXAMPLES / "gpt", **kwargs)
    assert again == first

    # Same seed, a new attempt (a new run id): bit-identical training, the same held-out bpb.
    (second,) = evaluate(EXAMPLES / "gpt", attempt=1, **kwargs)
    assert second.run_id != first.run_id
    assert second.metrics.heldout_bpb == first.metrics.heldout_bpb
    assert [p.loss_nats for p in second.metrics.probe_curve] == [
        p.loss_nats for p in first.metrics.probe_curve
    ]


def test_seed_tinyblock_project_evaluates_unmodified(tmp_path, data_dir, tiny_profile) -> None:
    """examples/tiny is the seed's multi-file TinyBlock: prism_challenge import, siblings by stem."""
    (manifest,) = evaluate(
        EXAMPLES / "tiny",
        profile=tiny_profile(train_tokens=32 * 2 * 40),  # the seed's recipe declares batch_size=2
        data_dir=data_dir,
        out_dir=tmp_path,
        recipe_mode="submitted",
        progress=False,
    )
    assert manifest.status.state == "succeeded", manifest.status.failure
    assert manifest.competition == "training"
    assert manifest.metrics.heldout_bpb is not None and manifest.metrics.heldout_bpb < INIT_BPB
    assert manifest.training_files  # the training side's files are recorded


LR_ZERO = """
import torch
from prism.evaluator.interface import TrainingRecipe

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
    return TrainingRecipe(learning_rate=1e-2, batch_size=8)

def configure_optimizer(model, recipe, ctx):
    return torch.optim.SGD(model.parameters(), lr=0.0)
"""


def test_configure_optimizer_with_lr_zero_leaves_heldout_at_init(tmp_path, data_dir, tiny_profile) -> None:
    path = tmp_path / "lr_zero.py"
    path.write_text(LR_ZERO, encoding="utf-8")
    common = dict(profile=tiny_profile(), data_dir=data_dir, out_dir=tmp_path / "out", progress=False)
    (frozen,) = evaluate(path, recipe_mode="submitted", **common)
    (trained,) = evaluate(path, recipe_mode="reference", **common)  # reference ignores the hook
    assert frozen.status.state == trained.status.state == "succeeded"
    assert frozen.hooks["configure_optimizer"].used and not trained.hooks["configure_optimizer"].used
    assert frozen.metrics.heldout_bpb > INIT_BPB - 0.3  # never moved from the random init
    assert trained.metrics.heldout_bpb < frozen.metrics.heldout_bpb - 1.0
    assert "recipe.not_reference" not in trained.validation.reasons


BAD_CHECKPOINT = LR_ZERO.replace(
    "def configure_optimizer(model, recipe, ctx):\n    return torch.optim.SGD(model.parameters(), lr=0.0)\n",
    "def save_checkpoint(model, checkpoint_dir, ctx):\n    return '../../escape.pt'\n",
)


def test_bad_checkpoint_return_gives_a_failed_manifest_with_a_miner_fault(
    tmp_path, data_dir, tiny_profile
) -> None:
    path = tmp_path / "bad_ckpt.py"
    path.write_text(BAD_CHECKPOINT, encoding="utf-8")
    (manifest,) = evaluate(
        path,
        profile=tiny_profile(train_tokens=32 * 8 * 4),
        data_dir=data_dir,
        out_dir=tmp_path / "out",
        recipe_mode="submitted",
        progress=False,
    )
    assert manifest.status.state == "failed"
    failure = manifest.status.failure
    assert (failure.code, failure.fault, failure.phase) == ("checkpoint.traversal", "miner", "train")
    assert {"run.failed", "metrics.missing", "profile.not_official"} <= set(manifest.validation.reasons)
    assert manifest.metrics.heldout_bpb is None
    assert read_manifest(tmp_path / "out" / manifest.run_id / MANIFEST_FILENAME) == manifest


def test_ddp_two_processes_on_cpu(tmp_path, data_dir, tiny_profile) -> None:
    (manifest,) = evaluate(
        EXAMPLES / "gpt",
        profile=tiny_profile(train_tokens=32 * 8 * 30),
        data_dir=data_dir,
        out_dir=tmp_path,
        recipe_mode="reference",
        nproc_per_node=2,
        progress=False,
    )
    assert manifest.status.state == "succeeded", manifest.status.failure
    assert manifest.hardware.world_size == 2
    assert manifest.hardware.distributed_backend == "gloo"
    assert manifest.metrics.train_steps == 30 and manifest.metrics.train_tokens == 30 * 8 * 32
    assert manifest.recipe.effective["per_rank_batch"] == 4
    assert manifest.metrics.heldout_bpb is not None and manifest.metrics.heldout_bpb < INIT_BPB - 0.5


RESUMABLE = LR_ZERO.replace(
    "def configure_optimizer(model, recipe, ctx):\n    return torch.optim.SGD(model.parameters(), lr=0.0)\n",
    """
def save_checkpoint(model, checkpoint_dir, ctx):
    # The static gate allows neither os nor pathlib: plain string paths it is.
    torch.save(model.state_dict(), checkpoint_dir + "/model.pt")
    return {"path": "model.pt", "metadata": {"attempt": ctx.attempt}}

def load_checkpoint(model, checkpoint_dir, ctx):
    assert ctx.is_resume and ctx.checkpoint_metadata == {"attempt": 0}
    model.load_state_dict(torch.load(checkpoint_dir + "/model.pt"))
""",
)


def test_approved_retry_resumes_from_the_accepted_checkpoint(tmp_path, data_dir, tiny_profile) -> None:
    path = tmp_path / "resumable.py"
    path.write_text(RESUMABLE, encoding="utf-8")
    common = dict(
        profile=tiny_profile(train_tokens=32 * 8 * 20),
        data_dir=data_dir,
        out_dir=tmp_path / "out",
        recipe_mode="submitted",
        progress=False,
    )
    (first,) = evaluate(path, **common)
    assert first.status.state == "succeeded", first.status.failure
    assert first.artifacts.checkpoint == "sandbox_out/checkpoints/model.pt"
    assert (tmp_path / "out" / first.run_id / first.artifacts.checkpoint).is_file()
    checkpoints = tmp_path / "out" / first.run_id / "sandbox_out" / "checkpoints"
    (retry,) = evaluate(path, attempt=1, resume_checkpoint_dir=checkpoints, **common)
    assert retry.status.state == "succeeded", retry.status.failure
    assert retry.hooks["load_checkpoint"].used and not first.hooks["load_checkpoint"].used
    # The checkpoint was taken at the end (step 20), so the retry resumes there: no steps left.
    assert retry.metrics.train_steps == 20 and retry.metrics.probe_curve == []
    assert retry.metrics.train_tokens == first.metrics.train_tokens == 20 * 8 * 32
    assert retry.metrics.heldout_bpb == pytest.approx(first.metrics.heldout_bpb, abs=1e-6)
