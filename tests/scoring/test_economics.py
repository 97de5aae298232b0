"""The economics of docs/scoring.md section 6: who earns what under rules v1 and v2.

A no-op fork, an in-family improver, a recipe copied onto a fork and a lucky seed, recomputed
through the real ``compute_weights``; and a no-op fork earns nothing under every pool policy.
"""

from __future__ import annotations

import math

import pytest
from prism_test_economics import (
    ALICE_RECIPE,
    ALICE_REF,
    ALICE_SUB,
    DAVE_REF,
    STEADY_REF,
    UIDS,
    economics,
    make_policy,
    record,
)
from prism_test_manifests import full_grid, paired, sha

from prism.scoring import RULES_V1, RULES_V2, CompetitionRules, SubmissionRecord, compute_weights


def reasons_of(result, hotkey: str) -> tuple[str, ...]:
    return next(s.reasons for s in result.leaderboard.submissions if s.hotkey == hotkey)


def test_rules_v1_pay_the_lucky_seed_and_the_copied_recipe() -> None:
    result = compute_weights(economics(), make_policy(RULES_V1), UIDS, block=200)
    assert result.leaderboard.leader_family_id == "F2"  # 1.25 - 1.2415 = 0.0085 > 0.00625 + 0.0005
    assert result.weights == pytest.approx({8: 0.6, 9: 0.4})  # lucy and trent take everything
    assert "copy.family" in reasons_of(result, "dave")  # the honest improver earns nothing
    assert reasons_of(result, "mallory") == ("copy.training", "copy.version")


def test_rules_v2_pay_the_owner_the_improver_and_the_original_recipe() -> None:
    result = compute_weights(economics(), make_policy(RULES_V2), UIDS, block=200)
    board = result.leaderboard
    families = {f.family_id: f for f in board.families}
    f1 = families["F1"]
    assert f1.leader and f1.owner_hotkey == "alice"
    assert (f1.canonical_hotkey, f1.canonical_version_id) == ("dave", "F1.b")
    # dave's F1.b over alice's F1.a, on dave's windows: 0.01 in every cell, window stderr 0.001 per cell
    assert f1.canonical_difference_bpb == pytest.approx(0.01)
    assert f1.canonical_stderr_bpb == pytest.approx(0.0005)
    # lucy's F2 vs the leader on lucy's windows: mean 0.0085, but the seeds disagree
    seed_se = math.sqrt(0.018**2 + 0.001**2) / 2
    assert families["F2"].lead_difference_bpb == pytest.approx(0.0085)
    assert families["F2"].lead_stderr_bpb == pytest.approx(seed_se)
    lead = next(c for c in board.comparisons if c.kind == "architecture_lead")
    assert lead.required_bpb == pytest.approx(2 * seed_se) and not lead.challenger_wins
    # alice's recipe: paired improvement 0.025, stderr from the seed spread within each regime
    variant = next(v for v in board.variants if v.hotkey == "alice")
    assert variant.paired and variant.best and not variant.pending
    assert variant.improvement_bpb == pytest.approx(0.025)
    # per regime: seeds differ by 0.01, s^2 / n = (2 * 0.005^2) / 2; two regimes: sqrt(sum) / 2
    assert variant.stderr_bpb == pytest.approx(math.sqrt(2 * 0.005**2) / 2)
    assert variant.margin_bpb == pytest.approx(2 * variant.stderr_bpb)
    assert (variant.baseline_bpb, variant.variant_bpb) == (pytest.approx(1.26), pytest.approx(1.235))
    assert result.weights == pytest.approx({1: 0.7, 4: 0.3})
    assert reasons_of(result, "mallory") == ("copy.training", "copy.version")
    assert reasons_of(result, "trent") == ("copy.training",)
    assert reasons_of(result, "dave") == ()
    assert result.eval_requests == ()


def test_rules_v2_a_steady_gain_of_the_same_size_takes_the_lead() -> None:
    result = compute_weights(economics(STEADY_REF), make_policy(RULES_V2), UIDS, block=200)
    assert result.leaderboard.leader_family_id == "F2"  # 0.0085 > max(0.00625, 2 * 0.0005) + 0.0005
    # lucy owns F2 and holds its canonical version; trent's copied recipe still earns nothing, so
    # the training pool falls to the next family with a qualifying variant: alice's, on F1
    assert result.weights == pytest.approx({8: 0.6, 1: 0.4})
    assert reasons_of(result, "trent") == ("copy.training",)


def test_rules_v2_other_pool_policies() -> None:
    linear = compute_weights(economics(), make_policy(RULES_V2, pool_policy="top_k_linear"), UIDS, block=200)
    # F1 first (2/3 of 0.6, split 0.2/0.2), F2 second (1/3 of 0.6), alice's variant 0.4
    assert linear.weights == pytest.approx({1: 0.6, 4: 0.2, 8: 0.2})
    no_dave = {k: v for k, v in UIDS.items() if k != "dave"}
    burned = compute_weights(economics(), make_policy(RULES_V2, unclaimed_rule="burn"), no_dave, block=200)
    assert burned.weights == pytest.approx({0: 0.3, 1: 0.7})
    assert compute_weights(economics(), make_policy(RULES_V2), no_dave, block=200).weights == pytest.approx(
        {1: 1.0}
    )


# --- a no-op fork earns nothing, whatever the pool policy ------------------------------------


POLICIES = [
    {"pool_policy": pool, "unclaimed_rule": rule, "top_k": k}
    for pool in ("winner_take_all", "top_k_linear")
    for rule in ("redistribute", "burn")
    for k in (1, 3, 5)
]


def fork_population() -> list[SubmissionRecord]:
    """The leader (alice), a rival family (bob), an in-family improver (dave) and three no-op
    forks of the leader: the same version, an equally good other version, the same recipe."""
    ids = {"family": "F1", "version": "F1.a"}
    alice = full_grid("alice", ALICE_REF, **ids) + full_grid("alice", ALICE_SUB, mode="submitted", **ids)
    bob_ref = {cell: bpb + 0.02 for cell, bpb in ALICE_REF.items()}
    bob_sub = {cell: bpb - 0.02 for cell, bpb in bob_ref.items()}
    bob = full_grid("bob", bob_ref, family="F3", version="F3.a") + full_grid(
        "bob", bob_sub, mode="submitted", family="F3", version="F3.a"
    )
    same = full_grid("fork1", ALICE_REF, **ids) + full_grid("fork1", ALICE_SUB, mode="submitted", **ids)
    other = full_grid("fork2", ALICE_REF, family="F1", version="F1.x")
    recipe = full_grid("fork3", ALICE_SUB, mode="submitted", **ids)
    return [
        record("alice", 100, alice, "F1", "F1.a", kind="full", training_fingerprint=ALICE_RECIPE,
               paired=(paired("alice", "submitted", {("alice", "submitted"): ALICE_SUB, ("alice", "reference"): ALICE_REF}),)),
        record("bob", 101, bob, "F3", "F3.a", kind="full", training_fingerprint=sha("bob's train.py"),
               paired=(paired("bob", "submitted", {("bob", "submitted"): bob_sub, ("bob", "reference"): bob_ref}),
                       paired("bob", "reference", {("bob", "reference"): bob_ref, ("alice", "reference"): ALICE_REF}))),
        record("dave", 120, full_grid("dave", DAVE_REF, family="F1", version="F1.b"), "F1", "F1.b",
               paired=(paired("dave", "reference", {("dave", "reference"): DAVE_REF, ("alice", "reference"): ALICE_REF}),)),
        record("fork1", 130, same, "F1", "F1.a", hotkey="mallory", kind="full", training_fingerprint=ALICE_RECIPE),
        record("fork2", 131, other, "F1", "F1.x", hotkey="mallory",
               paired=(paired("fork2", "reference", {("fork2", "reference"): ALICE_REF, ("dave", "reference"): DAVE_REF}),)),
        record("fork3", 132, recipe, "F1", "F1.a", hotkey="mallory", kind="training_for_arch",
               target_architecture_id="F1", training_fingerprint=ALICE_RECIPE),
    ]  # fmt: skip


@pytest.mark.parametrize("rules", [RULES_V1, RULES_V2], ids=["v1", "v2"])
@pytest.mark.parametrize("pools", POLICIES, ids=lambda p: "-".join(str(v) for v in p.values()))
@pytest.mark.parametrize("registered", ["all", "no_alice", "no_dave"])
def test_a_noop_fork_earns_nothing_under_every_pool_policy(
    rules: CompetitionRules, pools: dict, registered: str
) -> None:
    uids = {"alice": 1, "bob": 2, "dave": 4, "mallory": 7}
    uids = {k: v for k, v in uids.items() if k != registered.removeprefix("no_")}
    result = compute_weights(fork_population(), make_policy(rules, **pools), uids, block=200)
    # (alice deregistered under v1 winner_take_all: nothing is claimed and no weights are set)
    assert result.weights or (registered == "no_alice" and pools["unclaimed_rule"] == "redistribute")
    assert 7 not in result.weights
    assert all(p.hotkey != "mallory" for p in result.leaderboard.payouts)
    assert not result.weights or math.isclose(sum(result.weights.values()), 1.0)
    forks = {s.zip_sha256: s.reasons for s in result.leaderboard.submissions if s.hotkey == "mallory"}
    assert all(forks.values())  # each fork is told why
    if rules.owner_share < 1.0 and registered != "no_dave":
        assert 4 in result.weights  # ...while the in-family improver is paid
