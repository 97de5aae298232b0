"""Scoring is pure: no torch/bittensor, and the result does not depend on input order."""

from __future__ import annotations

import json
import subprocess
import sys

from hypothesis import given, settings
from hypothesis import strategies as st
from prism_test_manifests import PROFILE, PROFILE_VERSION, REGIMES, SEEDS, full_grid, grid, paired, sha

from prism.scoring import RULES_V2, ScoringPolicy, SubmissionRecord, compute_weights

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


# --- the same under rules v2, with paired measurements ------------------------------------------

V2 = ScoringPolicy(
    **RULES_V2.model_dump(),
    profile=PROFILE,
    profile_version=PROFILE_VERSION,
    required_regimes=REGIMES,
    required_seeds=SEEDS,
)
LABELS = {r.zip_sha256: label for label in "abcdefgi" for r in RECORDS if r.zip_sha256 == sha(label)}


def _cells(record: SubmissionRecord, mode: str) -> dict[tuple[str, int], float]:
    return {
        (m.regime.name, m.seed): m.metrics.heldout_bpb or 0.0 for m in record.runs if m.recipe_mode == mode
    }


def _jitter(challenger: str, model: str) -> float:
    """A deterministic per-pair shift: paired numbers differ from each side's own means."""
    return (int(sha(challenger + model)[:4], 16) % 7 - 3) * 0.0007


def _with_measurements(records: list[SubmissionRecord]) -> list[SubmissionRecord]:
    """Every other model measured on the windows of most records; a few stay unmeasured."""
    out = []
    for index, record in enumerate(records):
        label = LABELS[record.zip_sha256]
        measurements = []
        for mode in ("reference", "submitted"):
            if index % 4 == 3 or not _cells(record, mode):
                continue
            models = {
                (LABELS[other.zip_sha256], other_mode): {
                    cell: bpb + (0.0 if other is record else _jitter(label, LABELS[other.zip_sha256]))
                    for cell, bpb in _cells(other, other_mode).items()
                }
                for other in records
                for other_mode in ("reference", "submitted")
                if _cells(other, other_mode)
            }
            measurements.append(paired(label, mode, models))
        out.append(record.model_copy(update={"paired": tuple(measurements)}))
    return out


V2_RECORDS = _with_measurements(RECORDS)
V2_REFERENCE = compute_weights(V2_RECORDS, V2, UIDS, block=100)
V2_LINEAR = V2.model_copy(update={"pool_policy": "top_k_linear", "unclaimed_rule": "burn", "top_k": 4})
V2_LINEAR_REFERENCE = compute_weights(V2_RECORDS, V2_LINEAR, LINEAR_UIDS, block=100)


def test_v2_population_is_non_trivial() -> None:
    board = V2_REFERENCE.leaderboard
    states = {c.state for c in board.comparisons}
    assert states == {"decided", "pending"} and V2_REFERENCE.eval_requests
    assert any(c.paired and c.challenger_wins for c in board.comparisons)
    assert any(p.role == "improver" for p in V2_LINEAR_REFERENCE.leaderboard.payouts)


@settings(max_examples=30, deadline=None)
@given(st.permutations(range(len(V2_RECORDS))), st.randoms(use_true_random=False))
def test_v2_permuting_records_runs_and_measurements_gives_identical_results(order: list[int], rnd) -> None:
    shuffled = []
    for index in order:
        record = V2_RECORDS[index]
        runs = list(record.runs)
        rnd.shuffle(runs)
        measurements = []
        for m in record.paired:
            cells = [
                c.model_copy(update={"evals": tuple(rnd.sample(c.evals, len(c.evals)))}) for c in m.cells
            ]
            rnd.shuffle(cells)
            measurements.append(m.model_copy(update={"cells": tuple(cells)}))
        rnd.shuffle(measurements)
        shuffled.append(record.model_copy(update={"runs": tuple(runs), "paired": tuple(measurements)}))
    result = compute_weights(shuffled, V2, UIDS, block=100)
    assert result.weights == V2_REFERENCE.weights
    assert result.leaderboard == V2_REFERENCE.leaderboard
    assert result.events == V2_REFERENCE.events
    assert result.eval_requests == V2_REFERENCE.eval_requests
    linear = compute_weights(shuffled, V2_LINEAR, LINEAR_UIDS, block=100)
    assert linear.weights == V2_LINEAR_REFERENCE.weights
    assert linear.leaderboard == V2_LINEAR_REFERENCE.leaderboard
