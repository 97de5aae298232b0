"""Hostile submissions run end to end through ``prism.evaluator.host.evaluate`` (real bwrap, torch).

Every hostile file starts from the same tiny byte-level model and gets ``os`` the way a real
attacker would: ``getattr(torch, "o" + "s")`` walks past the static gate (which only sees
constant attribute names), so these tests exercise the sandbox, not the gate.
"""

from __future__ import annotations

import random
import shutil
import textwrap
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from prism.manifest import MANIFEST_FILENAME, RunManifest
from prism.profiles import Profile, load_profile

WORDS = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "the",
    "lazy",
    "dog",
    "while",
    "a",
    "small",
    "model",
    "learns",
    "to",
    "predict",
    "the",
    "next",
    "byte",
    "of",
    "plain",
    "english",
    "text",
    "written",
    "for",
    "a",
    "sandbox",
    "test",
]

PRELUDE = """
import time

import torch

# The static gate checks constant attribute names only; a computed one reaches os anyway.
_OS = getattr(torch, "".join(["o", "s"]))


def _os(name):
    return getattr(_OS, name)


class TinyLM(torch.nn.Module):
    def __init__(self, vocab_size):
        super().__init__()
        self.emb = torch.nn.Embedding(vocab_size, 32)
        self.out = torch.nn.Linear(32, vocab_size)

    def forward(self, tokens):
        return self.out(self.emb(tokens))


def get_recipe(ctx):
    return {"learning_rate": 3e-3}
"""


@dataclass
class HostileRun:
    manifest: RunManifest
    run_dir: Path
    log: str


@pytest.fixture(scope="session")
def corpus_text() -> list[str]:
    rng = random.Random(11)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(40, 120))) for _ in range(500)]


@pytest.fixture(scope="session")
def hostile_data(
    tmp_path_factory: pytest.TempPathFactory, corpus_text: list[str], text_corpus_builder
) -> Path:
    return text_corpus_builder(corpus_text, tmp_path_factory.mktemp("hostile-data"), shard_tokens=1024)


@pytest.fixture(scope="session")
def hostile_profile() -> Profile:
    """The smoke profile with a few training steps and tight limits, so each run takes seconds."""
    base = load_profile("local_cpu_smoke")
    regime = base.regimes[0].model_copy(
        update={"train_tokens": 4 * 8 * 64, "batch_size": 8, "sequence_length": 64}
    )
    return base.model_copy(
        update={
            "regimes": (regime,),
            "heldout": base.heldout.model_copy(update={"windows": 16, "batch_size": 8}),
            "limits": base.limits.model_copy(
                update={
                    "train_wall_s": 120.0,
                    "eval_wall_s": 90.0,
                    "memory_bytes": 2_500_000_000,
                    "pids": 256,
                    "log_bytes": 100_000,
                }
            ),
        }
    )


@pytest.fixture
def outside_dir() -> Iterator[Path]:
    """A host directory outside /tmp (the sandbox's /tmp is a private tmpfs, so writes to host
    paths under /tmp would land there harmlessly and prove nothing)."""
    path = Path("/var/tmp") / f"prism-hostile-{uuid.uuid4().hex[:12]}"
    path.mkdir(parents=True)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def evaluate_hostile(
    tmp_path: Path, hostile_data: Path, hostile_profile: Profile
) -> Callable[..., HostileRun]:
    from prism.evaluator.host import evaluate

    def run(body: str, *, recipe_mode: str = "reference", profile: Profile | None = None) -> HostileRun:
        submission = tmp_path / "hostile.py"
        submission.write_text(PRELUDE + textwrap.dedent(body), encoding="utf-8")
        out = tmp_path / "out"
        manifests = evaluate(
            submission,
            profile=profile or hostile_profile,
            data_dir=hostile_data,
            out_dir=out,
            recipe_mode=recipe_mode,
            progress=False,
        )
        assert len(manifests) == 1
        (run_dir,) = [p.parent for p in out.glob(f"*/{MANIFEST_FILENAME}")]
        # The manifest on disk is the host's and validates against the schema.
        on_disk = RunManifest.model_validate_json((run_dir / MANIFEST_FILENAME).read_text(encoding="utf-8"))
        assert on_disk == manifests[0]
        logs = "".join(p.read_text(encoding="utf-8", errors="replace") for p in sorted(run_dir.glob("*.log")))
        return HostileRun(manifest=manifests[0], run_dir=run_dir, log=logs)

    return run
