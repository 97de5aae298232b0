"""The economics example of docs/scoring.md section 6 (loaded as ``prism_test_economics``).

A leader (alice, family F1) with her recipe, a no-op fork of it (mallory), an in-family
improver (dave), a family whose lead comes from one lucky seed (lucy) and alice's recipe copied
onto that family (trent); every comparison the example needs is measured on the challenger's
windows.
"""

from __future__ import annotations

from typing import Any

from prism_test_manifests import PROFILE, PROFILE_VERSION, REGIMES, SEEDS, full_grid, grid, paired, sha

from prism.scoring import CompetitionRules, ScoringPolicy, SubmissionRecord

UIDS = {"alice": 1, "dave": 4, "mallory": 7, "lucy": 8, "trent": 9}

ALICE_REF = grid((1.30, 1.32), (1.20, 1.22))  # F1.a, mean 1.26
ALICE_SUB = grid((1.28, 1.29), (1.18, 1.19))  # alice's recipe on F1.a, mean 1.235
DAVE_REF = grid((1.29, 1.31), (1.19, 1.21))  # F1.b, 0.01 better in every cell, mean 1.25
LUCKY_REF = grid((1.255, 1.311), (1.189, 1.211))  # F2.a: one lucky seed, mean 1.2415
STEADY_REF = grid((1.2815, 1.3015), (1.1815, 1.2015))  # the same mean gain in every cell
ALICE_RECIPE = sha("alice's train.py")


def make_policy(rules: CompetitionRules, **overrides: Any) -> ScoringPolicy:
    fields = {**rules.model_dump(), **overrides}
    return ScoringPolicy(
        profile=PROFILE,
        profile_version=PROFILE_VERSION,
        required_regimes=REGIMES,
        required_seeds=SEEDS,
        **fields,
    )


def record(label: str, block: int, runs: list, family: str, version: str, **kw: Any) -> SubmissionRecord:
    return SubmissionRecord(
        hotkey=kw.pop("hotkey", label), commit_block=block, zip_sha256=sha(label),
        kind=kw.pop("kind", "architecture_only"), family_id=family, version_id=version, runs=tuple(runs), **kw,
    )  # fmt: skip


def economics(lucky_ref: dict = LUCKY_REF) -> list[SubmissionRecord]:
    f1a, f1b, f2a = ("F1", "F1.a"), ("F1", "F1.b"), ("F2", "F2.a")
    ids = {"family": "F1", "version": "F1.a"}
    alice_runs = full_grid("alice", ALICE_REF, **ids) + full_grid("alice", ALICE_SUB, mode="submitted", **ids)
    mallory_runs = full_grid("mallory", ALICE_REF, **ids) + full_grid(
        "mallory", ALICE_SUB, mode="submitted", **ids
    )
    trent_sub = {cell: bpb - 0.02 for cell, bpb in lucky_ref.items()}
    return [
        record("alice", 100, alice_runs, *f1a, kind="full", training_fingerprint=ALICE_RECIPE,
               paired=(paired("alice", "submitted", {("alice", "submitted"): ALICE_SUB, ("alice", "reference"): ALICE_REF}),)),
        # no-op fork: another zip, but canonical identity gives it alice's family and version;
        # its training files are alice's, byte for byte
        record("mallory", 110, mallory_runs, *f1a, kind="full", training_fingerprint=ALICE_RECIPE),
        # in-family improver: a better version of alice's family
        record("dave", 120, full_grid("dave", DAVE_REF, family="F1", version="F1.b"), *f1b,
               paired=(paired("dave", "reference", {("dave", "reference"): DAVE_REF, ("alice", "reference"): ALICE_REF}),)),
        # a new family whose lead over F1 comes from one lucky seed
        record("lucy", 130, full_grid("lucy", lucky_ref, family="F2", version="F2.a"), *f2a,
               paired=(paired("lucy", "reference", {("lucy", "reference"): lucky_ref, ("dave", "reference"): DAVE_REF}),)),
        # alice's recipe copied byte for byte onto lucy's family
        record("trent", 140, full_grid("trent", trent_sub, mode="submitted", family="F2", version="F2.a"), *f2a,
               kind="training_for_arch", target_architecture_id="F2", training_fingerprint=ALICE_RECIPE,
               paired=(paired("trent", "submitted", {("trent", "submitted"): trent_sub, ("lucy", "reference"): lucky_ref}),)),
    ]  # fmt: skip
