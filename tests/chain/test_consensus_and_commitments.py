"""Pure parts of the chain stage: the incentive rule and the commitment payload, with literal tables."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from prism.chain import consensus
from prism.chain.commitments import format_commitment, parse_commitment

SHA = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"


@pytest.mark.parametrize(
    ("column", "total", "expected"),
    [
        ([(0.2, 1.0), (0.6, 1.0)], 2.0, 0.2),  # a tie in stake is not a strict majority for 0.6
        ([(0.2, 1.0), (0.6, 2.0)], 3.0, 0.6),
        ([(0.1, 1.0), (0.5, 1.0), (0.9, 1.0)], 3.0, 0.5),
        ([(0.7, 5.0)], 5.0, 0.7),
        ([(0.0, 1.0), (0.0, 1.0)], 2.0, 0.0),
    ],
)
def test_stake_weighted_median(column: list[tuple[float, float]], total: float, expected: float) -> None:
    assert consensus.stake_weighted_median(column, total) == expected


def test_incentives_clip_an_outlier_validator() -> None:
    # Two honest validators (stake 40 + 40) agree on uid 10; a third (stake 20) pumps uid 11.
    weights = {0: {10: 1.0}, 1: {10: 1.0}, 2: {11: 1.0}}
    stakes = {0: 40.0, 1: 40.0, 2: 20.0}
    assert consensus.incentives(weights, stakes) == {10: 1.0, 11: 0.0}


def test_incentives_split_by_consensus() -> None:
    weights = {0: {10: 0.5, 11: 0.5}, 1: {10: 0.5, 11: 0.5}}
    assert consensus.incentives(weights, {0: 1.0, 1: 3.0}) == {10: 0.5, 11: 0.5}


def test_incentives_ignore_validators_without_stake_and_handle_nobody() -> None:
    assert consensus.incentives({}, {}) == {}
    assert consensus.incentives({0: {10: 1.0}}, {0: 0.0}) == {}
    assert consensus.incentives({0: {10: 0.0}}, {0: 1.0}) == {10: 0.0}


@given(
    st.dictionaries(
        st.integers(0, 5),
        st.dictionaries(st.integers(10, 15), st.floats(0, 10, allow_nan=False), min_size=1),
        min_size=1,
    ),
    st.lists(st.floats(0.1, 100), min_size=6, max_size=6),
)
def test_incentives_are_a_distribution(weights: dict[int, dict[int, float]], stake_list: list[float]) -> None:
    stakes = dict(enumerate(stake_list))
    result = consensus.incentives(weights, stakes)
    assert all(value >= 0 for value in result.values())
    total = sum(result.values())
    assert total == pytest.approx(1.0) or total == 0.0


def test_normalize_refuses_bad_weights() -> None:
    assert consensus.normalize({1: 1.0, 2: 3.0}) == {1: 0.25, 2: 0.75}
    with pytest.raises(ValueError):
        consensus.normalize({1: float("nan")})
    with pytest.raises(ValueError):
        consensus.normalize({1: -0.1})


def test_commitment_round_trip_and_lenient_parsing() -> None:
    text = format_commitment(SHA.upper())
    assert text == f"prism:v1:{SHA}" and len(text.encode()) == 73
    assert parse_commitment(text).sha256 == SHA
    assert parse_commitment(f"  PRISM:V1:0x{SHA.upper()}\n").sha256 == SHA
    assert parse_commitment(f"prism:v1:{SHA}:reserved-for-later").sha256 == SHA
    with pytest.raises(ValueError):
        format_commitment("not-a-hash")


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (None, "commitment.empty"),
        ("", "commitment.empty"),
        ("hello world", "commitment.not_prism"),
        (f"other:v1:{SHA}", "commitment.not_prism"),
        (f"prism:v9:{SHA}", "commitment.unsupported_version"),
        ("prism:v1:abc", "commitment.malformed"),
        ("prism:v1:" + "g" * 64, "commitment.malformed"),
        ("0x" + "ff" * 40, "commitment.not_prism"),
    ],
)
def test_garbage_commitments_are_typed_results(data: str | None, code: str) -> None:
    parsed = parse_commitment(data)
    assert not parsed.ok and parsed.sha256 is None and parsed.error_code == code


@given(st.text(max_size=200))
def test_parse_never_raises(data: str) -> None:
    parsed = parse_commitment(data)
    assert parsed.ok != (parsed.error_code is not None)
