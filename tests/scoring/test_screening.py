"""Screening as a table: first cell against the leader's same cell, by the versioned margin."""

from __future__ import annotations

import pytest
from prism_test_manifests import PROFILE, PROFILE_VERSION, REGIMES, SEEDS, full_grid, grid, make_manifest, sha

from prism.scoring import ScoringPolicy, SubmissionRecord, compute_weights
from prism.scoring.screening import behind_leader, screening_margin

UIDS = {"alice": 1, "bob": 2, "carol": 3}
RULES = ScoringPolicy(
    profile=PROFILE, profile_version=PROFILE_VERSION, required_regimes=REGIMES, required_seeds=SEEDS,
    screening_regime="small", screening_seed=0, screening_margin_bpb=0.05, screening_margin_rel=0.02,
)  # fmt: skip


@pytest.mark.parametrize(
    ("candidate", "leader", "screened"),
    [
        (1.00, 1.00, False),  # level with the leader
        (0.90, 1.00, False),  # better
        (1.049, 1.00, False),  # behind, inside max(0.05, 0.02 * 1.00) = 0.05
        (1.051, 1.00, True),  # just past it
        (3.569, 3.50, False),  # at 3.5 bpb the relative margin decides: 0.07
        (3.571, 3.50, True),
    ],
)
def test_the_rule(candidate: float, leader: float, screened: bool) -> None:
    assert behind_leader(candidate, leader, RULES) is screened
    assert screening_margin(3.5, RULES) == pytest.approx(0.07)


def _record(label: str, hotkey: str, block: int, runs, family: str) -> SubmissionRecord:
    return SubmissionRecord(hotkey=hotkey, commit_block=block, zip_sha256=sha(label), kind="architecture_only",
                            family_id=family, version_id=family + "1", runs=tuple(runs))  # fmt: skip


def test_a_far_behind_first_cell_is_screened_out_whether_or_not_its_other_cells_ran() -> None:
    leader = _record(
        "a", "alice", 1, full_grid("a", grid((1.0, 1.0), (1.0, 1.0)), family="A", version="A1"), "A"
    )
    # Bob's first cell (small, seed 0) is 0.2 behind; his other cells are far better.
    everything = full_grid(
        "b",
        {("small", 0): 1.2, ("small", 1): 0.7, ("large", 0): 0.7, ("large", 1): 0.7},
        family="B",
        version="B1",
    )
    only_first = [m for m in everything if (m.regime.name, m.seed) == ("small", 0)]
    close = full_grid("c", grid((1.03, 0.9), (0.9, 0.9)), family="C", version="C1")
    for bob_runs in (everything, only_first):  # a validator that skipped the rest agrees with one that ran it
        records = [leader, _record("b", "bob", 2, bob_runs, "B"), _record("c", "carol", 3, close, "C")]
        board = compute_weights(records, RULES, UIDS, 10).leaderboard
        verdicts = {s.hotkey: s for s in board.submissions}
        assert "screen.behind_leader" in verdicts["bob"].reasons
        assert "screen.behind_leader" not in verdicts["carol"].reasons  # within the margin: evaluated
        assert board.leader_family_id == "C"  # carol beat the leader; bob took part in nothing
        assert {f.family_id for f in board.families} == {"A", "C"}


def test_without_an_earlier_leader_nothing_is_screened() -> None:
    first = _record(
        "b", "bob", 2, full_grid("b", grid((3.0, 3.0), (3.0, 3.0)), family="B", version="B1"), "B"
    )
    board = compute_weights([first], RULES, UIDS, 10).leaderboard
    assert board.leader_family_id == "B" and not board.submissions[0].reasons


def test_screening_is_off_in_rules_version_1() -> None:
    v1 = RULES.model_copy(update={"screening_margin_bpb": 0.0, "screening_margin_rel": 0.0})
    leader = _record(
        "a", "alice", 1, full_grid("a", grid((1.0, 1.0), (1.0, 1.0)), family="A", version="A1"), "A"
    )
    behind = _record(
        "b",
        "bob",
        2,
        [make_manifest("b", regime="small", seed=0, heldout=2.0, family="B", version="B1")],
        "B",
    )
    board = compute_weights([leader, behind], v1, UIDS, 10).leaderboard
    assert "screen.behind_leader" not in next(s for s in board.submissions if s.hotkey == "bob").reasons
