"""Scoring is pure: no torch/bittensor, and the result does not depend on input order."""

from __future__ import annotations

import json
import subprocess
import sys

from hypothesis import given, settings
from hypothesis import strategies as st
from prism_test_manifests import PROFILE, PROFILE_VERSION, REGIMES, SEEDS, full_grid, grid, sha

from prism.scoring import ScoringPolicy, SubmissionRecord, compute_weights

BLOCKER = """
import importlib.abc, json, sys

class Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "bittensor"):
            raise ImportError(f"scoring must not import {name}")
        return None

sys.meta_path.insert(0, Blocked())
import prism.scoring
import prism.scoring.competition, prism.scoring.policy, prism.scoring.weights
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "bittensor"))))
"""


def test_scoring_imports_without_torch_or_bittensor() -> None:
    out = subprocess.run([sys.executable, "-c", BLOCKER], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == []


def test_blocker_really_blocks() -> None:
    code = BLOCKER.replace("import prism.scoring\n", "import prism.scoring\nimport torch\n", 1)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "scoring must not import torch" in out.stderr


POLICY = ScoringPolicy(
    profile=PROFILE, profile_version=PROFILE_VERSION, required_regimes=REGIMES, required_seeds=SEEDS
)


def _population() -> list[SubmissionRecord]:
    """Families, versions, copies, same-block commits and training variants in one population."""
    specs = [  # (label, hotkey, block, kind, family, version, reference bpb, submitted bpb)
        ("a", "h1", 5, "full", "A", "A1", 1.30, 1.27),
        ("b", "h2", 5, "architecture_only", "B", "B1", 1.24, None),
        ("c", "h3", 6, "architecture_only", "A", "A2", 1.25, None),
        ("d", "h4", 7, "training_for_arch", "A", "A1", None, 1.26),
        ("e", "h5", 7, "training_for_arch", "A", "A2", None, 1.21),
        ("b", "h6", 8, "architecture_only", "B", "B1", 1.24, None),
        ("f", "h7", 9, "full", "C", "C1", 1.24, 1.20),
        ("g", "h8", 9, "training_for_arch", "B", "B1", None, 1.19),
        ("i", "h3", 9, "architecture_only", "D", "D1", 1.24, None),
    ]
    records = []
    for label, hotkey, block, kind, family, version, ref, sub in specs:
        ids = {"family": family, "version": version}
        runs = []
        if ref is not None:
            runs += full_grid(label, grid((ref, ref + 0.01), (ref - 0.02, ref + 0.01)), **ids)
        if sub is not None:
            runs += full_grid(label, grid((sub, sub + 0.004), (sub, sub - 0.002)), mode="submitted", **ids)
        records.append(
            SubmissionRecord(
                hotkey=hotkey, commit_block=block, zip_sha256=sha(label), kind=kind, family_id=family,
                version_id=version, runs=tuple(runs), training_fingerprint=sha(f"train-{label}"),
                target_architecture_id=family if kind == "training_for_arch" else None,
            )
        )  # fmt: skip
    return records


RECORDS = _population()
UIDS = {f"h{i}": i for i in range(1, 9)}
REFERENCE = compute_weights(RECORDS, POLICY, UIDS, block=100)
LINEAR = POLICY.model_copy(update={"pool_policy": "top_k_linear", "unclaimed_rule": "burn"})
LINEAR_UIDS = {k: v for k, v in UIDS.items() if k != "h2"}  # the leader's owner deregistered
LINEAR_REFERENCE = compute_weights(RECORDS, LINEAR, LINEAR_UIDS, block=100)


def test_population_is_non_trivial() -> None:
    board = REFERENCE.leaderboard
    assert len(board.families) == 4 and len(REFERENCE.weights) == 2
    assert any(v.best for v in board.variants)
    assert len(LINEAR_REFERENCE.weights) >= 4 and 0 in LINEAR_REFERENCE.weights  # ranks paid + burn


@settings(max_examples=40, deadline=None)
@given(st.permutations(range(len(RECORDS))), st.randoms(use_true_random=False))
def test_permuting_records_and_runs_gives_identical_results(order: list[int], rnd) -> None:
    shuffled = []
    for index in order:
        runs = list(RECORDS[index].runs)
        rnd.shuffle(runs)
        shuffled.append(RECORDS[index].model_copy(update={"runs": tuple(runs)}))
    result = compute_weights(shuffled, POLICY, UIDS, block=100)
    assert result.weights == REFERENCE.weights
    assert result.leaderboard == REFERENCE.leaderboard
    assert result.events == REFERENCE.events
    linear = compute_weights(shuffled, LINEAR, LINEAR_UIDS, block=100)
    assert linear.weights == LINEAR_REFERENCE.weights
    assert linear.leaderboard == LINEAR_REFERENCE.leaderboard


def test_duplicate_records_are_merged_whatever_their_order() -> None:
    first = RECORDS[0]
    halves = (
        first.model_copy(update={"runs": first.runs[:3]}),
        first.model_copy(update={"runs": first.runs[3:]}),
    )
    for ordered in (halves, halves[::-1]):
        result = compute_weights([*ordered, *RECORDS[1:]], POLICY, UIDS, block=100)
        assert result.weights == REFERENCE.weights
        assert result.leaderboard == REFERENCE.leaderboard
