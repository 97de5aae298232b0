"""Table tests with literal manifests: runs, gates, both competitions, pools and weights."""

from __future__ import annotations

import math
from typing import Any

import pytest
from prism_test_manifests import PROFILE, PROFILE_VERSION, REGIMES, SEEDS, full_grid, grid, make_manifest, sha

from prism.profiles import load_profile
from prism.scoring import (
    ELIGIBILITY_REASONS,
    ScoringPolicy,
    SubmissionRecord,
    beats,
    compute_weights,
    policy_for_profile,
    rules_at_block,
)
from prism.scoring.reasons import ALL_REASONS

UIDS = {"alice": 1, "bob": 2, "carol": 3, "dave": 4, "erin": 5, "frank": 6}


def policy(**overrides: Any) -> ScoringPolicy:
    return ScoringPolicy(
        profile=PROFILE,
        profile_version=PROFILE_VERSION,
        required_regimes=REGIMES,
        required_seeds=SEEDS,
        **overrides,
    )


def record(
    label: str,
    hotkey: str,
    block: int,
    runs: list,
    *,
    kind: str = "architecture_only",
    family: str | None = "fam",
    version: str | None = "ver",
    **kwargs: Any,
) -> SubmissionRecord:
    return SubmissionRecord(
        hotkey=hotkey,
        commit_block=block,
        zip_sha256=sha(label),
        kind=kind,
        family_id=family,
        version_id=version,
        runs=tuple(runs),
        **kwargs,
    )


def arch(label: str, hotkey: str, block: int, bpb: float, *, family: str, version: str, **kw: Any):
    """An architecture submission whose four reference cells all score ``bpb``."""
    runs = full_grid(label, grid((bpb, bpb), (bpb, bpb)), family=family, version=version, **kw.pop("mk", {}))
    return record(label, hotkey, block, runs, family=family, version=version, **kw)


def reasons_of(result, hotkey: str) -> tuple[str, ...]:
    return next(s.reasons for s in result.leaderboard.submissions if s.hotkey == hotkey)


# --- worked example of docs/scoring.md --------------------------------------------------------


def worked_example() -> list[SubmissionRecord]:
    f1a, f1b = {"family": "F1", "version": "F1.a"}, {"family": "F1", "version": "F1.b"}
    alice_ref = full_grid("alice", grid((1.30, 1.32), (1.20, 1.22)), **f1a)
    alice_sub = full_grid("alice", grid((1.28, 1.29), (1.18, 1.19)), mode="submitted", **f1a)
    bob = full_grid("bob", grid((1.30, 1.32), (1.20, 1.22)), **f1a)
    carol = full_grid("carol", grid((1.298, 1.318), (1.198, 1.218)), family="F2", version="F2.a")
    dave = full_grid("dave", grid((1.29, 1.31), (1.19, 1.21)), **f1b)
    erin = full_grid("erin", grid((1.25, 1.26), (1.15, 1.16)), mode="submitted", **f1b)
    frank = full_grid("frank", grid((1.0, 1.0), (1.0, 1.0)), mode="submitted", **f1b)
    return [
        record("alice", "alice", 100, alice_ref + alice_sub, kind="full", training_fingerprint=sha("t-a"), **f1a),
        record("bob", "bob", 120, bob, **f1a),
        record("carol", "carol", 130, carol, family="F2", version="F2.a"),
        record("dave", "dave", 140, dave, **f1b),
        record(
            "erin", "erin", 150, erin, kind="training_for_arch", target_architecture_id="F1",
            training_fingerprint=sha("t-e"), **f1b,
        ),
        record(
            "frank", "frank", 160, frank, kind="training_for_arch", target_architecture_id="F2",
            training_fingerprint=sha("t-f"), **f1b,
        ),
    ]  # fmt: skip


def test_worked_example_numbers() -> None:
    result = compute_weights(worked_example(), policy(), UIDS, block=200)
    board = result.leaderboard
    families = {f.family_id: f for f in board.families}
    # F1: founded by alice, canonical moved to dave's F1.b (1.25 < 1.26 - max(0.002, 0.002*1.26)).
    assert families["F1"].owner_hotkey == "alice"
    assert families["F1"].canonical_version_id == "F1.b"
    assert families["F1"].heldout_bpb == pytest.approx(1.25)
    assert families["F1"].leader
    # F2 at 1.258 beat the leader's 1.26 by 0.002 < max(0.005, 0.005*1.26) = 0.0063: no lead.
    assert families["F2"].heldout_bpb == pytest.approx(1.258)
    assert not families["F2"].leader
    variants = {v.hotkey: v for v in board.variants}
    stderr = math.sqrt(4 * 0.005**2 / 3) / 2
    assert variants["alice"].improvement_bpb == pytest.approx(0.025)
    assert variants["alice"].margin_bpb == pytest.approx(2.0 * stderr)
    assert variants["alice"].qualifies
    assert variants["erin"].improvement_bpb == pytest.approx(0.045)
    assert variants["erin"].best and not variants["alice"].best
    assert result.weights == pytest.approx({1: 0.6, 5: 0.4})
    assert "copy.version" in reasons_of(result, "bob")
    assert "copy.family" in reasons_of(result, "dave")
    assert reasons_of(result, "frank") == ("training.target_mismatch",)
    kinds = [(e.kind, e.hotkey) for e in result.events]
    assert kinds == [
        ("family_founded", "alice"),
        ("canonical_version", "alice"),
        ("architecture_lead", "alice"),
        ("training_best", "alice"),
        ("family_founded", "carol"),
        ("canonical_version", "carol"),
        ("canonical_version", "dave"),
        ("training_best", "erin"),
    ]


def test_worked_example_unclaimed_rules() -> None:
    without_erin = {k: v for k, v in UIDS.items() if k != "erin"}
    redistributed = compute_weights(worked_example(), policy(), without_erin, block=200)
    assert redistributed.weights == pytest.approx({1: 1.0})
    assert "owner.deregistered" in reasons_of(redistributed, "erin")
    burned = compute_weights(worked_example(), policy(unclaimed_rule="burn"), without_erin, block=200)
    assert burned.weights == pytest.approx({0: 0.4, 1: 0.6})
    assert burned.leaderboard.unclaimed_share == pytest.approx(0.4)


# --- ranking and tie-breaks --------------------------------------------------------------------


def test_better_family_beyond_margin_takes_lead_and_ranks_first() -> None:
    records = [
        arch("a", "alice", 10, 1.30, family="A", version="A1"),
        arch("b", "bob", 11, 1.20, family="B", version="B1"),
        arch("c", "carol", 12, 1.25, family="C", version="C1"),
    ]
    result = compute_weights(records, policy(), UIDS, block=50)
    assert result.leaderboard.leader_family_id == "B"
    assert result.weights == {2: 1.0}  # no training variants: the training share follows the arch pool
    linear = compute_weights(records, policy(pool_policy="top_k_linear", top_k=3), UIDS, block=50)
    # ranks B (1.20), C (1.25), A (1.30) get 3:2:1 of the architecture pool, renormalized.
    assert linear.weights == pytest.approx({2: 3 / 6, 3: 2 / 6, 1: 1 / 6})


def test_near_tie_is_broken_by_probe_bpb() -> None:
    zero = policy(family_margin_bpb=0.0, family_margin_rel=0.0, tie_tolerance_bpb=0.001)
    incumbent = arch("a", "alice", 10, 1.2000, family="A", version="A1", mk={"probe": 1.30})
    better_probe = arch("b", "bob", 11, 1.2004, family="B", version="B1", mk={"probe": 1.25})
    worse_probe = arch("c", "carol", 11, 1.2004, family="C", version="C1", mk={"probe": 1.35})
    assert compute_weights([incumbent, better_probe], zero, UIDS, 20).leaderboard.leader_family_id == "B"
    assert compute_weights([incumbent, worse_probe], zero, UIDS, 20).leaderboard.leader_family_id == "A"


def test_exact_tie_keeps_the_earliest_commit_then_lowest_hotkey() -> None:
    zero = policy(family_margin_bpb=0.0, family_margin_rel=0.0, tie_tolerance_bpb=0.0)
    late = arch("a", "alice", 11, 1.2, family="A", version="A1")
    early = arch("b", "bob", 10, 1.2, family="B", version="B1")
    assert compute_weights([late, early], zero, UIDS, 20).leaderboard.leader_family_id == "B"
    same_block = arch("c", "carol", 10, 1.2, family="C", version="C1")
    assert compute_weights([same_block, early], zero, UIDS, 20).leaderboard.leader_family_id == "B"


def test_beats_is_strict_at_margin() -> None:
    assert beats((1.0, 1.0), (1.1, 1.0), margin=0.05, tolerance=0.0)
    assert not beats((1.06, 1.0), (1.1, 1.0), margin=0.05, tolerance=0.0)


# --- gates and run outcomes ---------------------------------------------------------------------

GATE_CASES = {
    "gate.nonfinite_loss": {"heldout": None, "nonfinite_loss": True},
    "gate.smuggled_weights": {"first_probe_nats": 0.49 * math.log(257)},
    "gate.params_changed_during_eval": {"diagnostics": {"params_changed_during_eval": True}},
    "gate.train_heldout_gap": {"train_heldout_gap_bpb": 0.3},
}


@pytest.mark.parametrize("code", sorted(GATE_CASES))
def test_each_gate_fails_the_cell_and_the_submission(code: str) -> None:
    runs = full_grid("a", grid((1.2, 1.2), (1.2, 1.2)), family="A", version="A1")
    runs[0] = make_manifest("a", regime=runs[0].regime.name, seed=runs[0].seed, family="A", version="A1", **{
        "heldout": 1.2, **GATE_CASES[code]
    })  # fmt: skip
    result = compute_weights([record("a", "alice", 1, runs, family="A", version="A1")], policy(), UIDS, 5)
    assert result.weights == {}
    submission = result.leaderboard.submissions[0]
    assert "cell.failed" in submission.reasons
    assert code in next(v.reasons for v in submission.runs if v.outcome == "failed")


def test_gate_also_caught_from_hashes_and_derived_gap() -> None:
    hashes = {"diagnostics": {"params_sha256_before_eval": sha("x"), "params_sha256_after_eval": sha("y")}}
    for extra, code in (
        (hashes, "gate.params_changed_during_eval"),
        ({"train_bpb": 0.9}, "gate.train_heldout_gap"),
    ):
        runs = full_grid("a", grid((1.2, 1.2), (1.2, 1.2)), family="A", version="A1", **extra)
        result = compute_weights([record("a", "alice", 1, runs, family="A", version="A1")], policy(), UIDS, 5)
        assert code in result.leaderboard.submissions[0].runs[0].reasons


def test_smuggle_threshold_uses_the_tokenizer_vocab() -> None:
    at_threshold = 0.5 * math.log(50257)
    ok = full_grid(
        "a",
        grid((1.2,) * 2, (1.2,) * 2),
        family="A",
        version="A1",
        vocab=50257,
        first_probe_nats=at_threshold,
    )
    bad = full_grid(
        "b",
        grid((1.2,) * 2, (1.2,) * 2),
        family="B",
        version="B1",
        vocab=50257,
        first_probe_nats=at_threshold - 0.01,
    )
    result = compute_weights(
        [record("a", "alice", 1, ok, family="A", version="A1"), record("b", "bob", 2, bad, family="B", version="B1")],
        policy(), UIDS, 5,
    )  # fmt: skip
    assert result.weights == {1: 1.0}
    assert "cell.failed" in reasons_of(result, "bob")


@pytest.mark.parametrize(
    ("kwargs", "code"),
    [
        ({"isolation": "degraded"}, "isolation.degraded"),
        ({"profile": (PROFILE, 2, True)}, "profile.mismatch"),
        ({"profile": ("other", PROFILE_VERSION, True)}, "profile.mismatch"),
        ({"profile": (PROFILE, PROFILE_VERSION, False)}, "profile.not_official"),
        ({"failure": ("sandbox.crashed", "infrastructure")}, "run.infrastructure_failure"),
        ({"heldout": None}, "run.incomplete"),
    ],
)
def test_validator_side_problems_leave_the_cell_open(kwargs: dict, code: str) -> None:
    runs = full_grid("a", grid((1.2, 1.2), (1.2, 1.2)), family="A", version="A1")
    runs[0] = make_manifest(
        "a", regime="large", seed=0, family="A", version="A1", **{"heldout": 1.2, **kwargs}
    )
    result = compute_weights([record("a", "alice", 1, runs, family="A", version="A1")], policy(), UIDS, 5)
    submission = result.leaderboard.submissions[0]
    assert result.weights == {}
    assert submission.reasons == ("cell.missing",)
    assert code in submission.runs[0].reasons and submission.runs[0].outcome == "ignored"
    # redoing the run properly completes the cell
    fixed = [
        *runs,
        make_manifest("a", regime="large", seed=0, family="A", version="A1", heldout=1.2, run_id="z"),
    ]
    result = compute_weights([record("a", "alice", 1, fixed, family="A", version="A1")], policy(), UIDS, 5)
    assert result.weights == {1: 1.0}


def test_miner_failure_cannot_be_washed_out_by_a_retry() -> None:
    runs = full_grid("a", grid((1.2, 1.2), (1.2, 1.2)), family="A", version="A1")
    runs.append(
        make_manifest(
            "a", regime="large", seed=0, family="A", version="A1", failure=("model.oom", "miner"), run_id="0"
        )
    )
    result = compute_weights([record("a", "alice", 1, runs, family="A", version="A1")], policy(), UIDS, 5)
    assert result.weights == {}
    assert "run.miner_failure" in result.leaderboard.submissions[0].runs[0].reasons
    assert result.leaderboard.submissions[0].runs[0].failure_code == "model.oom"


def test_evaluator_reasons_are_honoured_and_waivable() -> None:
    assert "profile.not_official" in ELIGIBILITY_REASONS
    smoke = {"profile": (PROFILE, PROFILE_VERSION, False), "reasons": ("profile.not_official",)}
    runs = full_grid("a", grid((1.2, 1.2), (1.2, 1.2)), family="A", version="A1", **smoke)
    records = [record("a", "alice", 1, runs, family="A", version="A1")]
    assert compute_weights(records, policy(), UIDS, 5).weights == {}
    waived = policy(waived_reasons=frozenset({"profile.not_official"}))
    assert compute_weights(records, waived, UIDS, 5).weights == {1: 1.0}
    unknown = full_grid(
        "b", grid((1.2, 1.2), (1.2, 1.2)), family="B", version="B1", reasons=("gate.future_check",)
    )
    result = compute_weights([record("b", "bob", 1, unknown, family="B", version="B1")], waived, UIDS, 5)
    assert result.weights == {} and "cell.failed" in result.leaderboard.submissions[0].reasons
    assert "run.unknown_ineligibility" in result.leaderboard.submissions[0].runs[0].reasons


def test_missing_regime_means_no_partial_credit() -> None:
    runs = [
        m
        for m in full_grid("a", grid((1.0, 1.0), (1.0, 1.0)), family="A", version="A1")
        if m.regime.name == "small"
    ]
    slow = arch("b", "bob", 2, 1.5, family="B", version="B1")
    result = compute_weights(
        [record("a", "alice", 1, runs, family="A", version="A1"), slow], policy(), UIDS, 5
    )
    assert result.leaderboard.leader_family_id == "B"
    assert reasons_of(result, "alice") == ("cell.missing",)
    assert result.weights == {2: 1.0}


def test_intake_rejection_and_unknown_identity_score_nothing() -> None:
    rejected = arch("a", "alice", 1, 1.0, family="A", version="A1", intake_ok=False)
    unknown = record("b", "bob", 2, [], family=None, version=None)
    result = compute_weights([rejected, unknown], policy(), UIDS, 5)
    assert result.weights == {}
    assert reasons_of(result, "alice") == ("intake.rejected",)
    assert reasons_of(result, "bob") == ("submission.no_family",)


# --- copies, families, versions -----------------------------------------------------------------


def test_exact_copy_submitted_later_earns_nothing() -> None:
    original = arch("same", "alice", 10, 1.3, family="A", version="A1")
    copy = arch("same", "bob", 11, 1.3, family="A", version="A1")
    result = compute_weights([copy, original], policy(), UIDS, 20)
    assert result.weights == {1: 1.0}
    assert reasons_of(result, "bob") == ("copy.exact",)


def test_renamed_copy_in_same_family_earns_nothing() -> None:
    original = arch("a", "alice", 10, 1.3, family="A", version="A1")
    renamed = arch("b", "bob", 11, 1.3, family="A", version="A2")  # other sizes/names, same topology
    result = compute_weights([original, renamed], policy(), UIDS, 20)
    assert result.weights == {1: 1.0}
    assert "copy.family" in reasons_of(result, "bob")
    assert result.leaderboard.families[0].canonical_version_id == "A1"


def test_better_version_becomes_canonical_but_ownership_stays() -> None:
    original = arch("a", "alice", 10, 1.30, family="A", version="A1")
    better = arch("b", "bob", 11, 1.20, family="A", version="A2")
    rival = arch("c", "carol", 12, 1.25, family="C", version="C1")
    result = compute_weights([original, better, rival], policy(), UIDS, 20)
    family = next(f for f in result.leaderboard.families if f.family_id == "A")
    assert (family.owner_hotkey, family.canonical_version_id, family.leader) == ("alice", "A2", True)
    assert result.weights == {1: 1.0}  # C (1.25) would have beaten A1 (1.30) but not the canonical A2
    assert [e.kind for e in result.events if e.hotkey == "bob"] == ["canonical_version"]


def test_family_owner_is_the_first_scored_submission() -> None:
    pending = record("a", "alice", 10, [], family="A", version="A1")
    later = arch("b", "bob", 11, 1.3, family="A", version="A2")
    assert compute_weights([pending, later], policy(), UIDS, 20).weights == {2: 1.0}
    done = arch("a", "alice", 10, 1.31, family="A", version="A1")
    assert compute_weights([done, later], policy(), UIDS, 20).weights == {1: 1.0}


# --- training competition ------------------------------------------------------------------------


def training_setup(variant_small: tuple[float, float], variant_large: tuple[float, float], **kw: Any):
    base = arch("a", "alice", 10, 1.2, family="A", version="A1")
    variant = full_grid("t", grid(variant_small, variant_large), mode="submitted", family="A", version="A1")
    trainer = record(
        "t", "erin", 20, variant, kind="training_for_arch", family="A", version="A1",
        target_architecture_id=kw.pop("target", "A"), training_fingerprint=sha("t"),
    )  # fmt: skip
    return [base, trainer]


def test_training_variant_below_margin_does_not_take_the_lead() -> None:
    # improvement 0.002 on a 1.2 baseline: margin max(0.002, 0.0024, 0) = 0.0024
    result = compute_weights(training_setup((1.198, 1.198), (1.198, 1.198)), policy(), UIDS, 30)
    assert not result.leaderboard.variants[0].qualifies
    assert "training.below_margin" in reasons_of(result, "erin")
    assert result.weights == {1: 1.0}
    # a noisy variant: mean improvement 0.01 but seed spread makes z*stderr larger
    noisy = compute_weights(training_setup((1.17, 1.21), (1.18, 1.2)), policy(), UIDS, 30)
    variant = noisy.leaderboard.variants[0]
    assert variant.improvement_bpb == pytest.approx(0.01)
    assert variant.margin_bpb == pytest.approx(2.0 * math.sqrt((0.02**2 * 2 + 0.01**2 * 2) / 3) / 2)
    assert not variant.qualifies


def test_training_variant_past_margin_wins_training_pool() -> None:
    result = compute_weights(training_setup((1.19, 1.19), (1.19, 1.19)), policy(), UIDS, 30)
    assert result.leaderboard.variants[0].best
    assert result.weights == pytest.approx({1: 0.6, 5: 0.4})


def test_training_pool_falls_to_the_best_ranked_family_with_a_variant() -> None:
    # carol's family B leads the architecture competition but has no training variant; erin's
    # qualifying variant of family A (ranked second) takes the training pool.
    records = training_setup((1.19, 1.19), (1.19, 1.19))
    records.append(arch("b", "carol", 12, 1.1, family="B", version="B1"))
    result = compute_weights(records, policy(), UIDS, 30)
    assert result.leaderboard.leader_family_id == "B"
    assert result.weights == pytest.approx({3: 0.6, 5: 0.4})
    # once the leader has a qualifying variant of its own, the pool follows the leader
    leader_variant = full_grid(
        "bt", grid((1.09, 1.09), (1.09, 1.09)), mode="submitted", family="B", version="B1"
    )
    records.append(
        record("bt", "frank", 25, leader_variant, kind="training_for_arch", family="B", version="B1",
               target_architecture_id="B", training_fingerprint=sha("bt"))
    )  # fmt: skip
    assert compute_weights(records, policy(), UIDS, 30).weights == pytest.approx({3: 0.6, 6: 0.4})


def test_variant_committed_in_the_founding_block_targets_the_family() -> None:
    # Same-block commits are simultaneous: a lower hotkey does not put the variant "before" it.
    base = arch("a", "zed", 10, 1.2, family="A", version="A1")
    variant = full_grid("t", grid((1.19, 1.19), (1.19, 1.19)), mode="submitted", family="A", version="A1")
    trainer = record("t", "erin", 10, variant, kind="training_for_arch", family="A", version="A1",
                     target_architecture_id="A", training_fingerprint=sha("t"))  # fmt: skip
    result = compute_weights([base, trainer], policy(), {**UIDS, "zed": 9}, 30)
    assert reasons_of(result, "erin") == ()
    assert result.weights == pytest.approx({9: 0.6, 5: 0.4})
    late_family = arch("a", "zed", 11, 1.2, family="A", version="A1")
    early = compute_weights([late_family, trainer], policy(), {**UIDS, "zed": 9}, 30)
    assert reasons_of(early, "erin") == ("training.unknown_target",)


def test_later_variant_must_beat_current_best_by_margin() -> None:
    records = training_setup((1.19, 1.19), (1.19, 1.19))
    close = full_grid("u", grid((1.189, 1.189), (1.189, 1.189)), mode="submitted", family="A", version="A1")
    records.append(
        record("u", "frank", 30, close, kind="training_for_arch", family="A", version="A1",
               target_architecture_id="A", training_fingerprint=sha("u"))
    )  # fmt: skip
    result = compute_weights(records, policy(), UIDS, 40)
    assert [v.hotkey for v in result.leaderboard.variants if v.best] == ["erin"]
    assert "training.below_margin" in reasons_of(result, "frank")


def test_training_for_arch_mismatch_and_training_copy_are_rejected() -> None:
    mismatch = compute_weights(training_setup((1.1, 1.1), (1.1, 1.1), target="Z"), policy(), UIDS, 30)
    assert reasons_of(mismatch, "erin") == ("training.target_mismatch",)
    assert mismatch.weights == {1: 1.0}
    records = training_setup((1.1, 1.1), (1.1, 1.1))
    copy_runs = full_grid("t2", grid((1.1, 1.1), (1.1, 1.1)), mode="submitted", family="A", version="A1")
    records.append(
        record("t2", "frank", 25, copy_runs, kind="training_for_arch", family="A", version="A1",
               target_architecture_id="A", training_fingerprint=sha("t"))
    )  # fmt: skip
    assert reasons_of(compute_weights(records, policy(), UIDS, 30), "frank") == ("copy.training",)


# --- pools, unclaimed share, deregistration ----------------------------------------------------


def test_pool_split_and_deregistered_architecture_owner() -> None:
    records = training_setup((1.19, 1.19), (1.19, 1.19))
    split = compute_weights(records, policy(architecture_pool=0.7, training_pool=0.3), UIDS, 30)
    assert split.weights == pytest.approx({1: 0.7, 5: 0.3})
    no_alice = {k: v for k, v in UIDS.items() if k != "alice"}
    dropped = compute_weights(records, policy(), no_alice, 30)
    assert dropped.weights == pytest.approx({5: 1.0})
    assert "owner.deregistered" in reasons_of(dropped, "alice")
    assert compute_weights(
        records, policy(unclaimed_rule="burn", burn_uid=7), no_alice, 30
    ).weights == pytest.approx({7: 0.6, 5: 0.4})


def test_nothing_scored_gives_empty_weights_or_burn() -> None:
    assert compute_weights([], policy(), UIDS, 1).weights == {}
    assert compute_weights([], policy(unclaimed_rule="burn"), UIDS, 1).weights == {0: 1.0}


def test_same_hotkey_in_both_pools_is_summed_and_normalized() -> None:
    records = training_setup((1.19, 1.19), (1.19, 1.19))
    one_uid = dict(UIDS, erin=1)
    assert compute_weights(records, policy(), one_uid, 30).weights == pytest.approx({1: 1.0})


# --- policy as data --------------------------------------------------------------------------------


def test_policy_for_profile_reads_regimes_seeds_and_gates() -> None:
    profile = load_profile("gpu_proxy_eval")
    built = policy_for_profile(profile, top_k=5)
    assert built.required_regimes == ("p20m", "p60m") and built.required_seeds == (0, 1, 2)
    assert built.smuggle_factor == profile.gates.smuggle_factor
    assert built.max_train_heldout_gap_bpb == profile.gates.max_train_heldout_gap_bpb
    assert (built.architecture_pool, built.training_pool, built.top_k) == (0.6, 0.4, 5)
    assert built.version == rules_at_block(0).version == 1  # policy_for_profile defaults to block 0
    assert policy_for_profile(profile, block=10**9).version == rules_at_block(10**9).version == 2
    with pytest.raises(ValueError):
        policy_for_profile(profile, architecture_pool=0.9)
    with pytest.raises(ValueError):
        policy_for_profile(profile, unknown_rule=1)


def test_every_reason_code_used_in_results_is_documented() -> None:
    result = compute_weights(worked_example(), policy(), UIDS, 200)
    used = {r for s in result.leaderboard.submissions for r in s.reasons}
    assert used <= set(ALL_REASONS)


def test_rules_schedule_is_ascending_and_version_1_never_changes() -> None:
    from prism.scoring import RULES_SCHEDULE, RULES_V1, RULES_V2

    blocks = [block for block, _ in RULES_SCHEDULE]
    versions = [rules.version for _, rules in RULES_SCHEDULE]
    assert blocks == sorted(set(blocks)) and versions == list(range(1, len(versions) + 1))
    assert RULES_V1.model_dump() == {
        "version": 1, "architecture_pool": 0.6, "training_pool": 0.4, "pool_policy": "winner_take_all",
        "top_k": 3, "family_margin_bpb": 0.005, "family_margin_rel": 0.005, "version_margin_bpb": 0.002,
        "version_margin_rel": 0.002, "tie_tolerance_bpb": 0.0005, "training_z": 2.0,
        "training_abs_min_delta_bpb": 0.002, "training_rel_min_delta": 0.002, "unclaimed_rule": "redistribute",
        "burn_uid": 0, "owner_share": 1.0, "comparison": "unpaired", "architecture_z": 0.0,
        "training_dedup": "family", "near_duplicates": False, "stack_tolerance_bpb": 0.0,
        "screening_margin_bpb": 0.0, "screening_margin_rel": 0.0,
    }  # fmt: skip
    changed = {k for k, v in RULES_V2.model_dump().items() if RULES_V1.model_dump()[k] != v}
    assert changed == {
        "version",
        "owner_share",
        "comparison",
        "architecture_z",
        "training_dedup",
        "near_duplicates",
        "stack_tolerance_bpb",
        "screening_margin_bpb",
        "screening_margin_rel",
    }


def test_official_runs_of_an_older_evaluator_are_never_scored() -> None:
    """Schema v1 manifests were measured inside a process that ran submission code."""
    current = full_grid("a", grid((1.2, 1.2), (1.2, 1.2)), family="A", version="A1")
    old = [m.model_copy(update={"schema_version": "prism_run_manifest.v1"}) for m in current]
    result = compute_weights([record("a", "alice", 1, old, family="A", version="A1")], policy(), UIDS, 5)
    assert result.weights == {}
    verdicts = result.leaderboard.submissions[0].runs
    assert verdicts and all(
        v.outcome == "ignored" and v.reasons == ("run.outdated_evaluator",) for v in verdicts
    )
    fresh = compute_weights([record("a", "alice", 1, current, family="A", version="A1")], policy(), UIDS, 5)
    assert fresh.weights  # the same numbers from the current evaluator are scored


def test_smuggling_gate_reads_the_early_curve_not_only_the_first_probe() -> None:
    """A submission that answers the first probe uniformly and its smuggled table right after."""
    runs = full_grid("a", grid((1.2, 1.2), (1.2, 1.2)), family="A", version="A1")
    runs[0] = make_manifest(
        "a", regime=runs[0].regime.name, seed=runs[0].seed, family="A", version="A1",
        heldout=1.2, first_probe_nats=math.log(257), early_probe_loss_nats=0.3 * math.log(257),
    )  # fmt: skip
    result = compute_weights([record("a", "alice", 1, runs, family="A", version="A1")], policy(), UIDS, 5)
    assert result.weights == {}
    assert "gate.smuggled_weights" in next(
        v.reasons for v in result.leaderboard.submissions[0].runs if v.outcome == "failed"
    )


def test_a_near_duplicate_family_is_a_version_of_the_earlier_one() -> None:
    """One op swapped (1 edit on a 14-token family) joins the family; a different design does not."""
    from prism.scoring import RULES_V2

    leader_ops = tuple(f"op{i}" for i in range(14))
    near_ops = (*leader_ops[:6], "relu", *leader_ops[7:])
    other_ops = tuple(f"other{i}" for i in range(14))
    rules = policy().model_copy(update={"near_duplicates": True, "owner_share": RULES_V2.owner_share})
    leader = record(
        "a",
        "alice",
        1,
        full_grid("a", grid((1.2, 1.2), (1.2, 1.2)), family="A", version="A1"),
        family="A",
        version="A1",
    )
    near = record(
        "b",
        "bob",
        2,
        full_grid("b", grid((1.0, 1.0), (1.0, 1.0)), family="B", version="B1"),
        family="B",
        version="B1",
    )
    other = record(
        "c",
        "carol",
        3,
        full_grid("c", grid((1.1, 1.1), (1.1, 1.1)), family="C", version="C1"),
        family="C",
        version="C1",
    )
    records = [
        leader.model_copy(update={"family_ops": leader_ops}),
        near.model_copy(update={"family_ops": near_ops}),
        other.model_copy(update={"family_ops": other_ops}),
    ]
    board = compute_weights(records, rules, UIDS, 10).leaderboard
    families = {f.family_id for f in board.families}
    assert families == {"A", "C"}  # B merged into A, C founded its own family
    family_a = next(f for f in board.families if f.family_id == "A")
    assert family_a.owner_hotkey == "alice"  # the earlier family keeps its owner
    # Without the rule (rules v1) the near duplicate founds a family of its own.
    assert {f.family_id for f in compute_weights(records, policy(), UIDS, 10).leaderboard.families} == {
        "A",
        "B",
        "C",
    }


def _on_stack(runs, stack: str):
    return [
        m.model_copy(update={"comparability": m.comparability.model_copy(update={"stack": stack})})
        for m in runs
    ]


def test_runs_from_another_software_stack_need_the_stack_tolerance_on_top_of_the_margin() -> None:
    rules = policy().model_copy(update={"stack_tolerance_bpb": 0.01})
    leader_runs = _on_stack(
        full_grid("a", grid((2.0, 2.0), (2.0, 2.0)), family="A", version="A1"), "torch 2.13.0+cpu"
    )
    # Better than the leader by the family margin (0.01 at 2.0 bpb) plus 0.005: enough on one stack only.
    better = full_grid("b", grid((1.985, 1.985), (1.985, 1.985)), family="B", version="B1")

    def lead(challenger_stack: str) -> str | None:
        records = [
            record("a", "alice", 1, leader_runs, family="A", version="A1"),
            record("b", "bob", 2, _on_stack(better, challenger_stack), family="B", version="B1"),
        ]
        return compute_weights(records, rules, UIDS, 10).leaderboard.leader_family_id

    assert lead("torch 2.13.0+cpu") == "B"
    assert lead("torch 2.14.1+cu128; cuda 12.8") == "A"  # the same gain from another stack is not enough


def test_official_runs_must_carry_the_chain_beacons_seeds() -> None:
    """Seeds derive from the hash of the block after the commitment: every validator derives the
    same ones, and a run trained on other seeds (a lucky init ground offline) is never scored."""
    from prism.beacon import BeaconRef, beacon_block, cell_seeds

    block_hash = "ab" * 32
    rules = policy().model_copy(update={"beacon_seeds": True})

    def beaconed(runs, *, tamper: bool = False):
        out = []
        for m in runs:
            index = rules.required_seeds.index(m.seed)
            seeds = cell_seeds(block_hash, m.submission.zip_sha256, m.regime.name, index)
            ref = BeaconRef(block=beacon_block(1), block_hash=block_hash, seed_index=index)
            train_seed = seeds.train_seed + (1 if tamper else 0)
            dataset = m.dataset.model_copy(update={"heldout_seed": seeds.heldout_seed})
            out.append(
                m.model_copy(
                    update={"seed": train_seed, "nominal_seed": m.seed, "beacon": ref, "dataset": dataset}
                )
            )
        return out

    runs = full_grid("a", grid((1.2, 1.2), (1.2, 1.2)), family="A", version="A1")
    honest = record("a", "alice", 1, beaconed(runs), family="A", version="A1").model_copy(
        update={"beacon_hash": block_hash}
    )
    assert compute_weights([honest], rules, UIDS, 5).weights
    ground = record("a", "alice", 1, beaconed(runs, tamper=True), family="A", version="A1")
    verdicts = compute_weights([ground], rules, UIDS, 5).leaderboard.submissions[0].runs
    assert {v.reasons for v in verdicts} == {("run.beacon_mismatch",)}
    unseeded = record("a", "alice", 1, runs, family="A", version="A1")  # the profile's fixed seeds
    assert {
        v.reasons for v in compute_weights([unseeded], rules, UIDS, 5).leaderboard.submissions[0].runs
    } == {("run.beacon_mismatch",)}
