"""Hostile submissions run end to end through ``prism.evaluator.host.evaluate`` (real bwrap, torch).

Every hostile file starts from the same tiny byte-level model and gets ``os`` the way a real
attacker would: ``getattr(torch, "o" + "s")`` walks past the static gate (which only sees
constant attribute names), so these tests exercise the sandbox, not the gate.
"""

from __future__ import annotations

import itertools
import random
import shutil
import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from prism.manifest import MANIFEST_FILENAME, RunManifest
from prism.profiles import Profile, load_profile

# --import-mode=importlib does not put test folders on sys.path; the helper module needs it.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from attack_helpers import HONEST_BODY, PRELUDE, Twin, source

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


def run_hostile(
    work: Path,
    source: str,
    *,
    data_dir: Path,
    profile: Profile,
    recipe_mode: str = "reference",
    seed: int | None = None,
    heldout_seed: int | None = None,
) -> HostileRun:
    """One submission (``source``: the whole file) through ``evaluate`` into a fresh ``work`` dir."""
    from prism.evaluator.host import evaluate

    work.mkdir(parents=True, exist_ok=True)
    submission = work / "hostile.py"
    submission.write_text(source, encoding="utf-8")
    out = work / "out"
    manifests = evaluate(
        submission,
        profile=profile,
        data_dir=data_dir,
        out_dir=out,
        recipe_mode=recipe_mode,
        seeds=[seed] if seed is not None else None,
        heldout_seed=heldout_seed,
        progress=False,
    )
    assert len(manifests) == 1
    (run_dir,) = [p.parent for p in out.glob(f"*/{MANIFEST_FILENAME}")]
    # The manifest on disk is the host's and validates against the schema.
    on_disk = RunManifest.model_validate_json((run_dir / MANIFEST_FILENAME).read_text(encoding="utf-8"))
    assert on_disk == manifests[0]
    logs = "".join(p.read_text(encoding="utf-8", errors="replace") for p in sorted(run_dir.glob("*.log")))
    return HostileRun(manifest=manifests[0], run_dir=run_dir, log=logs)


@pytest.fixture
def evaluate_hostile(
    tmp_path: Path, hostile_data: Path, hostile_profile: Profile
) -> Callable[..., HostileRun]:
    def run(body: str, *, recipe_mode: str = "reference", profile: Profile | None = None) -> HostileRun:
        return run_hostile(
            tmp_path,
            PRELUDE + textwrap.dedent(body),
            data_dir=hostile_data,
            profile=profile or hostile_profile,
            recipe_mode=recipe_mode,
        )

    return run


@pytest.fixture(scope="session")
def attack_profile(hostile_profile: Profile) -> Profile:
    """The hostile profile with 32 training steps instead of 4: TinyLM then learns enough for
    its seed-to-seed noise to be small next to what an attack gains (a step costs milliseconds;
    a run's time is start-up), and the compute calibration gets its two distinct points
    (4 and 16 steps), so the compute cap is live."""
    regime = hostile_profile.regimes[0]
    steps = 128
    return hostile_profile.model_copy(
        update={
            "regimes": (
                regime.model_copy(
                    update={"train_tokens": steps * regime.batch_size * regime.sequence_length}
                ),
            )
        }
    )


@pytest.fixture(scope="session")
def without_program_check(attack_profile: Profile) -> Profile:
    """The attack profile with the program check off, for tests of the checks behind it (the
    replay, the eval compute budget): with it on, the program check refuses most stateful
    attacks first (identity.program_mismatch)."""
    heldout = attack_profile.heldout.model_copy(update={"program_windows": 0})
    return attack_profile.model_copy(update={"heldout": heldout})


@pytest.fixture(scope="session")
def attack_run(
    tmp_path_factory: pytest.TempPathFactory, hostile_data: Path, attack_profile: Profile
) -> Callable[..., HostileRun]:
    """Session-wide runner for the attack corpus: ``attack_run(source, seed=..., ...)``."""
    counter = itertools.count()

    def run(
        text: str,
        *,
        profile: Profile | None = None,
        seed: int | None = None,
        heldout_seed: int | None = None,
        recipe_mode: str = "reference",
    ) -> HostileRun:
        work = tmp_path_factory.mktemp(f"attack-{next(counter)}")
        return run_hostile(
            work, text, data_dir=hostile_data, profile=profile or attack_profile, recipe_mode=recipe_mode,
            seed=seed, heldout_seed=heldout_seed,
        )  # fmt: skip

    return run


def measure_twin(attack_run: Callable[..., HostileRun], body: str, **kwargs: object) -> Twin:
    """An honest submission at the profile's seed and at the next seed (the noise sample)."""
    runs = [attack_run(source(body), seed=seed, **kwargs) for seed in (1337, 1338)]
    for run in runs:
        assert run.manifest.status.state == "succeeded", run.log[-3000:]
    first, second = (run.manifest.metrics.heldout_bpb for run in runs)
    assert first is not None and second is not None
    compute = runs[0].manifest.compute
    return Twin(
        bpb=first,
        other_seed_bpb=second,
        expected_compute_s=compute.expected_s if compute else None,
        family_id=runs[0].manifest.submission.family_id,
    )


@pytest.fixture(scope="session")
def tinylm_twin(attack_run: Callable[..., HostileRun]) -> Twin:
    """Honest TinyLM, reference recipe: the twin of every attack that trains TinyLM unchanged."""
    return measure_twin(attack_run, HONEST_BODY)
