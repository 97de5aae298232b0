"""Rules v2 in detail: paired comparisons (pending, stale, requests, statistics), the reward
split between owner and improver, and recipe deduplication across families."""

from __future__ import annotations

import math
from typing import Any

import pytest
from prism_test_manifests import (
    PROFILE,
    PROFILE_VERSION,
    REGIMES,
    SEEDS,
    default_run_id,
    full_grid,
    grid,
    paired,
    sha,
)

from prism.scoring import (
    RULES_V1,
    RULES_V2,
    CompetitionRules,
    ModelEval,
    PairedCell,
    PairedMeasurement,
    ScoringPolicy,
    SubmissionRecord,
    compute_weights,
)
from prism.scoring.paired import RunSet, WindowIndex, paired_estimate, stratified_stderr

UIDS = {"alice": 1, "bob": 2, "carol": 3, "dave": 4, "erin": 5, "frank": 6}
BASE = grid((1.30, 1.32), (1.20, 1.22))


def make_policy(rules: CompetitionRules = RULES_V2, **overrides: Any) -> ScoringPolicy:
    fields = {**rules.model_dump(), **overrides}
    return ScoringPolicy(
        profile=PROFILE,
        profile_version=PROFILE_VERSION,
        required_regimes=REGIMES,
        required_seeds=SEEDS,
        **fields,
    )


def shifted(values: dict, delta: float) -> dict:
    return {cell: bpb + delta for cell, bpb in values.items()}


def arch(label: str, hotkey: str, block: int, values: dict, family: str, version: str, **kw: Any):
    return SubmissionRecord(
        hotkey=hotkey, commit_block=block, zip_sha256=sha(label), kind="architecture_only", family_id=family,
        version_id=version, runs=tuple(full_grid(label, values, family=family, version=version, **kw.pop("mk", {}))),
        **kw,
    )  # fmt: skip


def vs(challenger: str, mine: dict, incumbent: str, theirs: dict, **kw: Any) -> tuple[PairedMeasurement, ...]:
    """A reference-vs-reference measurement on the challenger's windows."""
    return (
        paired(
            challenger, "reference", {(challenger, "reference"): mine, (incumbent, "reference"): theirs}, **kw
        ),
    )


def reasons_of(result, hotkey: str) -> tuple[str, ...]:
    return next(s.reasons for s in result.leaderboard.submissions if s.hotkey == hotkey)


# --- pending, stale and requested measurements -----------------------------------------------


def test_without_a_paired_measurement_the_incumbent_keeps_its_place_and_the_evaluation_is_requested() -> None:
    better = shifted(BASE, -0.01)
    records = [arch("a", "alice", 10, BASE, "A", "A1"), arch("b", "bob", 11, better, "A", "A2")]
    result = compute_weights(records, make_policy(), UIDS, 20)
    family = result.leaderboard.families[0]
    assert (family.canonical_version_id, family.canonical_hotkey) == ("A1", "alice")
    assert reasons_of(result, "bob") == ("comparison.pending",)
    assert result.weights == {1: 1.0}
    (comparison,) = result.leaderboard.comparisons
    assert comparison.state == "pending" and comparison.difference_bpb is None
    wanted = {(r.regime, r.seed, r.run_id, r.model_zip_sha256, r.model_run_id) for r in result.eval_requests}
    cells = [(regime, seed) for regime in sorted(REGIMES) for seed in SEEDS]
    expected = {(g, s, default_run_id("b", "reference", g, s), sha(z), default_run_id(z, "reference", g, s))
                for g, s in cells for z in ("a", "b")}  # fmt: skip
    assert wanted == expected  # alice's weights (and bob's own) on bob's windows
    # the validator measures them: bob's version becomes canonical, and he shares the reward
    records[1] = records[1].model_copy(update={"paired": vs("b", better, "a", BASE)})
    done = compute_weights(records, make_policy(), UIDS, 20)
    assert done.leaderboard.families[0].canonical_hotkey == "bob"
    assert done.weights == pytest.approx({1: 0.5, 2: 0.5})
    assert done.eval_requests == ()


def test_a_measurement_of_other_runs_or_another_profile_does_not_count() -> None:
    better = shifted(BASE, -0.01)
    good = vs("b", better, "a", BASE)[0]
    cells = list(good.cells)
    stale_evals = tuple(
        e.model_copy(update={"run_id": e.run_id + "-old"}) if e.zip_sha256 == sha("a") else e
        for e in cells[0].evals
    )
    stale = good.model_copy(
        update={"cells": (cells[0].model_copy(update={"evals": stale_evals}), *cells[1:])}
    )
    other_profile = good.model_copy(update={"profile_key": "other@1"})
    for measurement in (stale, other_profile):
        records = [
            arch("a", "alice", 10, BASE, "A", "A1"),
            arch("b", "bob", 11, better, "A", "A2", paired=(measurement,)),
        ]
        result = compute_weights(records, make_policy(), UIDS, 20)
        assert reasons_of(result, "bob") == ("comparison.pending",)
        assert result.weights == {1: 1.0}
    # v1 ignores measurements altogether and compares the two submissions' own means
    records = [arch("a", "alice", 10, BASE, "A", "A1"), arch("b", "bob", 11, better, "A", "A2")]
    v1 = compute_weights(records, make_policy(RULES_V1), UIDS, 20)
    assert v1.leaderboard.families[0].canonical_hotkey == "bob" and v1.weights == {1: 1.0}
    assert not v1.leaderboard.comparisons[0].paired


def test_the_paired_difference_decides_not_the_unpaired_means() -> None:
    # bob's own runs read 0.01 better than alice's, but on bob's windows alice's weights score
    # only 0.001 worse than bob's: the windows were easy, not the version better
    better = shifted(BASE, -0.01)
    records = [
        arch("a", "alice", 10, BASE, "A", "A1"),
        arch("b", "bob", 11, better, "A", "A2", paired=vs("b", better, "a", shifted(better, 0.001))),
    ]
    result = compute_weights(records, make_policy(), UIDS, 20)
    (comparison,) = result.leaderboard.comparisons
    assert comparison.paired and comparison.difference_bpb == pytest.approx(0.001)
    assert not comparison.challenger_wins and reasons_of(result, "bob") == ("version.below_margin",)


def test_the_margin_grows_with_the_window_noise() -> None:
    # a 0.004 paired gain passes the 0.0026 version margin when the windows agree, not when the
    # per-window spread (0.01 per cell -> window stderr 0.005) makes 2 * stderr = 0.01
    better = shifted(BASE, -0.004)
    for spread, wins in ((0.001, True), (0.01, False)):
        records = [
            arch("a", "alice", 10, BASE, "A", "A1"),
            arch("b", "bob", 11, better, "A", "A2", paired=vs("b", better, "a", BASE, spread=spread)),
        ]
        (comparison,) = compute_weights(records, make_policy(), UIDS, 20).leaderboard.comparisons
        assert comparison.window_stderr_bpb == pytest.approx(spread / 2)
        assert comparison.required_bpb == pytest.approx(max(0.002 * 1.26, 2 * spread / 2))
        assert comparison.challenger_wins is wins


def test_paired_estimate_is_a_bytes_weighted_ratio_with_its_standard_error() -> None:
    # one cell, three windows of unequal length; incumbent minus challenger, in bits per byte
    inc, ch, nbytes = (300.0, 500.0, 100.0), (280.0, 490.0, 95.0), (400, 600, 200)
    cell = PairedCell(regime="small", seed=0, run_id="c-run", window_bytes=nbytes, evals=(
        ModelEval(zip_sha256=sha("c"), recipe_mode="reference", run_id="c-run", nats=ch),
        ModelEval(zip_sha256=sha("i"), recipe_mode="reference", run_id="i-run", nats=inc),
    ))  # fmt: skip
    measurement = PairedMeasurement(
        profile_key="p@1", zip_sha256=sha("c"), recipe_mode="reference", cells=(cell,)
    )
    challenger = RunSet(sha("c"), "reference", ("c-run",))
    coefs = {RunSet(sha("i"), "reference", ("i-run",)): 1.0, challenger: -1.0}
    estimate = paired_estimate(WindowIndex([measurement], "p@1", sha("c")), challenger, [("small", 0)], coefs)
    deltas = [(i - c) / math.log(2) for i, c in zip(inc, ch, strict=True)]
    d = sum(deltas) / sum(nbytes)
    var = 3 / 2 * sum((x - d * b) ** 2 for x, b in zip(deltas, nbytes, strict=True)) / sum(nbytes) ** 2
    assert not isinstance(estimate, list)
    assert estimate.difference_bpb == pytest.approx(d)
    assert estimate.window_stderr_bpb == pytest.approx(math.sqrt(var))
    assert estimate.stderr_bpb == pytest.approx(math.sqrt(var))  # one seed: no seed term


def test_seed_stderr_treats_regimes_as_fixed_effects() -> None:
    # a real gain on the small budget only is not noise; the seeds agree within each regime
    assert stratified_stderr([0.02, 0.02, 0.0, 0.0], ["s", "s", "l", "l"]) == 0.0
    assert stratified_stderr([0.03, 0.01, 0.0, 0.0], ["s", "s", "l", "l"]) == pytest.approx(0.01 / 2)


def test_two_measurements_of_one_run_are_merged_in_any_order() -> None:
    better = shifted(BASE, -0.01)
    full = vs("b", better, "a", BASE)[0]
    own = full.model_copy(update={"cells": tuple(
        c.model_copy(update={"evals": tuple(e for e in c.evals if e.zip_sha256 == sha("b"))}) for c in full.cells
    )})  # fmt: skip
    theirs = full.model_copy(update={"cells": tuple(
        c.model_copy(update={"evals": tuple(e for e in c.evals if e.zip_sha256 == sha("a"))}) for c in full.cells
    )})  # fmt: skip
    results = []
    for measurements in ((own, theirs), (theirs, own), (full,)):
        records = [
            arch("a", "alice", 10, BASE, "A", "A1"),
            arch("b", "bob", 11, better, "A", "A2", paired=measurements),
        ]
        results.append(compute_weights(records, make_policy(), UIDS, 20))
    assert results[0].leaderboard == results[1].leaderboard == results[2].leaderboard
    assert results[0].leaderboard.families[0].canonical_hotkey == "bob"


def test_a_lead_change_is_paired_against_the_leaders_canonical_version() -> None:
    rival = shifted(BASE, -0.05)
    records = [arch("a", "alice", 10, BASE, "A", "A1"), arch("c", "carol", 12, rival, "C", "C1")]
    pending = compute_weights(records, make_policy(), UIDS, 20)
    assert pending.leaderboard.leader_family_id == "A" and reasons_of(pending, "carol") == (
        "comparison.pending",
    )
    records[1] = records[1].model_copy(update={"paired": vs("c", rival, "a", BASE)})
    result = compute_weights(records, make_policy(), UIDS, 20)
    assert result.leaderboard.leader_family_id == "C" and result.weights == {3: 1.0}
    leader = next(f for f in result.leaderboard.families if f.leader)
    assert leader.lead_difference_bpb == pytest.approx(0.05)
    assert [e.kind for e in result.events if e.hotkey == "carol"][-1] == "architecture_lead"


# --- the reward split ---------------------------------------------------------------------------


def test_owner_and_improver_split_and_a_superseded_improver_earns_nothing() -> None:
    b, c = shifted(BASE, -0.01), shifted(BASE, -0.02)
    records = [
        arch("a", "alice", 10, BASE, "A", "A1"),
        arch("b", "bob", 11, b, "A", "A2", paired=vs("b", b, "a", BASE)),
        arch("c", "carol", 12, c, "A", "A3", paired=vs("c", c, "b", b)),
    ]
    result = compute_weights(records, make_policy(), UIDS, 20)
    assert result.weights == pytest.approx({1: 0.5, 3: 0.5})
    assert reasons_of(result, "bob") == ("version.superseded",)
    roles = {(p.hotkey, p.role): p.share for p in result.leaderboard.payouts}
    assert roles == pytest.approx({("alice", "owner"): 0.3, ("carol", "improver"): 0.3})
    # the owner's own better version keeps the whole reward
    mine = arch(
        "a2", "alice", 13, shifted(BASE, -0.03), "A", "A4", paired=vs("a2", shifted(BASE, -0.03), "c", c)
    )
    result = compute_weights([*records, mine], make_policy(), UIDS, 20)
    assert result.weights == {1: 1.0}
    assert reasons_of(result, "carol") == ("version.superseded",)
    # other splits are rules data
    split = compute_weights(records, make_policy(owner_share=0.25), UIDS, 20)
    assert split.weights == pytest.approx({1: 0.25, 3: 0.75})


# --- training: paired qualification and replacement --------------------------------------------


def variant(
    label: str, hotkey: str, block: int, values: dict, *, family: str = "A", version: str = "A1", **kw: Any
):
    runs = full_grid(label, values, mode="submitted", family=family, version=version, **kw.pop("mk", {}))
    return SubmissionRecord(
        hotkey=hotkey, commit_block=block, zip_sha256=sha(label), kind="training_for_arch", family_id=family,
        version_id=version, target_architecture_id=family, runs=tuple(runs),
        training_fingerprint=kw.pop("fingerprint", sha(f"train-{label}")), **kw,
    )  # fmt: skip


def on_windows(label: str, models: dict[tuple[str, str], dict]) -> tuple[PairedMeasurement, ...]:
    return (paired(label, "submitted", models),)


def test_training_qualification_is_pending_until_the_baseline_is_measured_on_the_variants_windows() -> None:
    mine = shifted(BASE, -0.01)
    records = [arch("a", "alice", 10, BASE, "A", "A1"), variant("t", "erin", 20, mine)]
    result = compute_weights(records, make_policy(), UIDS, 30)
    (entry,) = result.leaderboard.variants
    assert entry.pending and not entry.qualifies and reasons_of(result, "erin") == ("comparison.pending",)
    assert result.weights == {1: 1.0}  # the unclaimed training pool is redistributed
    records[1] = records[1].model_copy(
        update={"paired": on_windows("t", {("t", "submitted"): mine, ("a", "reference"): BASE})}
    )
    result = compute_weights(records, make_policy(), UIDS, 30)
    (entry,) = result.leaderboard.variants
    assert entry.qualifies and entry.best and entry.improvement_bpb == pytest.approx(0.01)
    assert result.weights == pytest.approx({1: 0.6, 5: 0.4})


def test_a_new_training_best_is_paired_against_the_current_best_on_the_challengers_windows() -> None:
    first, second = shifted(BASE, -0.01), shifted(BASE, -0.02)
    over_base = {label: on_windows(label, {(label, "submitted"): v, ("a", "reference"): BASE})
                 for label, v in (("t", first), ("u", second))}  # fmt: skip
    records = [
        arch("a", "alice", 10, BASE, "A", "A1"),
        variant("t", "erin", 20, first, paired=over_base["t"]),
        variant("u", "frank", 21, second, paired=over_base["u"]),
    ]
    result = compute_weights(records, make_policy(), UIDS, 30)
    assert reasons_of(result, "frank") == ("comparison.pending",)
    # same version, same baseline: the baseline terms cancel, only erin's weights are missing
    assert {(r.model_zip_sha256, r.model_recipe_mode) for r in result.eval_requests} == {
        (sha("t"), "submitted")
    }
    records[2] = records[2].model_copy(update={"paired": on_windows("u", {
        ("u", "submitted"): second, ("a", "reference"): BASE, ("t", "submitted"): first,
    })})  # fmt: skip
    result = compute_weights(records, make_policy(), UIDS, 30)
    best = next(c for c in result.leaderboard.comparisons if c.kind == "training_best")
    assert best.difference_bpb == pytest.approx(0.01) and best.challenger_wins
    assert result.weights == pytest.approx({1: 0.6, 6: 0.4})


# --- recipe deduplication across families ------------------------------------------------------


def two_families(**copy: Any) -> list[SubmissionRecord]:
    mine, theirs = shifted(BASE, -0.01), shifted(BASE, -0.03)
    rival = shifted(BASE, -0.02)
    return [
        arch("a", "alice", 10, BASE, "A", "A1"),
        variant("t", "erin", 20, mine, fingerprint=sha("recipe"),
                paired=on_windows("t", {("t", "submitted"): mine, ("a", "reference"): BASE}), mk=copy.pop("mk_t", {})),
        arch("c", "carol", 30, rival, "C", "C1", paired=vs("c", rival, "a", BASE)),
        variant("u", "frank", 40, theirs, family="C", version="C1", fingerprint=copy.pop("fingerprint", sha("recipe")),
                paired=on_windows("u", {("u", "submitted"): theirs, ("c", "reference"): rival}), **copy),
    ]  # fmt: skip


def test_a_recipe_copied_onto_another_family_is_a_copy_under_v2_only() -> None:
    v2 = compute_weights(two_families(), make_policy(), UIDS, 50)
    assert v2.leaderboard.leader_family_id == "C"
    assert reasons_of(v2, "frank") == ("copy.training",)
    assert v2.weights == pytest.approx({3: 0.6, 5: 0.4})  # the pool falls to erin's original on A
    v1 = compute_weights(two_families(), make_policy(RULES_V1), UIDS, 50)
    assert reasons_of(v1, "frank") == ()
    assert v1.weights == pytest.approx({3: 0.6, 6: 0.4})


def test_the_normalised_recipe_fingerprint_and_the_declared_recipe_find_copies() -> None:
    # intake's normalised fingerprint: different code bytes, same recipe
    renamed = [r.model_copy(update={"recipe_fingerprint": sha("normalised")}) if r.hotkey in ("erin", "frank") else r
               for r in two_families(fingerprint=sha("renamed file"))]  # fmt: skip
    assert reasons_of(compute_weights(renamed, make_policy(), UIDS, 50), "frank") == ("copy.training",)
    # no hooks at all: the declared recipe is the whole training recipe, whatever the code says
    no_hooks = {"recipe": {"learning_rate": 0.002, "batch_size": 16}, "hooks": {"train_step": False}}
    declared = two_families(fingerprint=sha("other code"), mk_t=no_hooks, mk=no_hooks)
    assert reasons_of(compute_weights(declared, make_policy(), UIDS, 50), "frank") == ("copy.training",)
    # ...but not when a hook runs code the declared recipe does not describe
    hooked = {"recipe": no_hooks["recipe"], "hooks": {"train_step": True}}
    code = two_families(fingerprint=sha("other code"), mk_t=hooked, mk=hooked)
    assert reasons_of(compute_weights(code, make_policy(), UIDS, 50), "frank") == ()


def test_under_v2_a_failed_variant_does_not_claim_its_recipe() -> None:
    failed_runs = full_grid(
        "t0", BASE, mode="submitted", family="A", version="A1", failure=("eval.crash", "miner")
    )
    failed = variant("t0", "erin", 15, BASE).model_copy(
        update={"runs": tuple(failed_runs), "training_fingerprint": sha("recipe")}
    )
    records = [*two_families()[:2], failed]
    # erin's corrected resubmission (block 20) carries the same training code as her failed one
    v2 = compute_weights(records, make_policy(), UIDS, 50)
    assert by_zip(v2, "t0") == ("cell.failed",) and by_zip(v2, "t") == ()
    assert [v.zip_sha256 for v in v2.leaderboard.variants if v.best] == [sha("t")]
    v1 = compute_weights(records, make_policy(RULES_V1), UIDS, 50)
    assert by_zip(v1, "t") == ("copy.training",)  # v1: the failed one claimed it first
    assert not any(v.best for v in v1.leaderboard.variants)


def by_zip(result, label: str) -> tuple[str, ...]:
    return next(s.reasons for s in result.leaderboard.submissions if s.zip_sha256 == sha(label))


def _with_failed_model(measurement: PairedMeasurement, zip_sha256: str) -> PairedMeasurement:
    """The same measurement, except that ``zip_sha256``'s re-measurement failed in the first cell."""
    first, *rest = measurement.cells
    evals = tuple(
        ModelEval(zip_sha256=e.zip_sha256, recipe_mode=e.recipe_mode, run_id=e.run_id, failure_code="eval.crashed")
        if e.zip_sha256 == zip_sha256 else e
        for e in first.evals
    )  # fmt: skip
    return measurement.model_copy(update={"cells": (first.model_copy(update={"evals": evals}), *rest)})


def test_an_incumbent_whose_weights_fail_on_the_challengers_windows_forfeits() -> None:
    # a time bomb: alice's model measured fine once and now crashes; bob's own numbers are worse,
    # yet alice cannot hold the family by refusing to be measured again
    worse = shifted(BASE, 0.01)
    (measurement,) = vs("b", worse, "a", BASE)
    records = [
        arch("a", "alice", 10, BASE, "A", "A1"),
        arch("b", "bob", 11, worse, "A", "A2", paired=(_with_failed_model(measurement, sha("a")),)),
    ]
    result = compute_weights(records, make_policy(), UIDS, 20)
    (comparison,) = result.leaderboard.comparisons
    assert comparison.state == "decided" and comparison.challenger_wins
    assert result.leaderboard.families[0].canonical_hotkey == "bob"
    assert result.eval_requests == ()
    # the same failure on the challenger's side of a contrast loses it for the challenger
    records[1] = arch("b", "bob", 11, shifted(BASE, -0.05), "A", "A2",
                      paired=(_with_failed_model(vs("b", shifted(BASE, -0.05), "a", BASE)[0], sha("b")),))  # fmt: skip
    (comparison,) = compute_weights(records, make_policy(), UIDS, 20).leaderboard.comparisons
    assert comparison.state == "decided" and not comparison.challenger_wins
