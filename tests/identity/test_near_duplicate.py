"""The near-duplicate rule (prism.identity): torch-free, deterministic, as documented."""

from __future__ import annotations

import subprocess
import sys

from hypothesis import given, settings
from hypothesis import strategies as st

from prism.identity import (
    NEAR_DUPLICATE_FRACTION,
    NEAR_DUPLICATE_MAX_EDITS,
    family_distance,
    near_duplicate_threshold,
    nearest_family,
)


def levenshtein(a: list[str], b: list[str]) -> int:
    """Full dynamic programme, the reference for the banded version."""
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        previous, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (x != y))
    return row[-1]


tokens = st.lists(st.sampled_from(["mm(-1,param)", "gelu(-1)", "add(*,-1)", "sdpa(-3,-2,-1)"]), max_size=18)


@settings(max_examples=200, deadline=None)
@given(tokens, tokens, st.integers(min_value=0, max_value=5))
def test_banded_distance_matches_the_full_edit_distance(a, b, limit):
    exact = levenshtein(a, b)
    assert family_distance(a, b) == exact
    assert family_distance(a, b, limit) == min(exact, limit + 1)
    assert family_distance(b, a, limit) == family_distance(a, b, limit)


def test_threshold_is_two_edits_and_at_most_a_tenth_of_the_tokens():
    assert (NEAR_DUPLICATE_MAX_EDITS, NEAR_DUPLICATE_FRACTION) == (2, 0.1)
    assert [near_duplicate_threshold(n) for n in (0, 9, 10, 14, 19, 20, 500)] == [0, 0, 1, 1, 1, 2, 2]


def _layer(i: int) -> list[str]:
    return [f"op{i}(-1)", "mm(-1,param)", "add(*,-1)"]


BASE = [token for i in range(8) for token in _layer(i)]  # 24 tokens: threshold 2


def test_nearest_family_accepts_up_to_the_threshold_and_no_more():
    known = {"fam-a": BASE}
    two = [*BASE[:3], "relu(-1)", *BASE[4:6], "tanh(-1)", *BASE[7:]]
    three = [*two[:10], "silu(-1)", *two[11:]]
    assert nearest_family(BASE, known) == "fam-a"
    assert family_distance(two, BASE) == 2 and nearest_family(two, known) == "fam-a"
    assert family_distance(three, BASE) == 3 and nearest_family(three, known) is None
    assert nearest_family(BASE, {}) is None


def test_short_graphs_need_an_exact_match():
    short = ["embedding(param,tok)", "mm(-1,param)"]
    assert near_duplicate_threshold(len(short)) == 0
    assert nearest_family(["embedding(param,tok)", "relu(-1)"], {"fam-s": short}) is None
    assert nearest_family(short, {"fam-s": short}) == "fam-s"


def test_ties_go_to_the_smaller_distance_then_the_first_family_id():
    one_edit = [*BASE[:-1], "x(-1)"]
    known = {"fam-z": BASE, "fam-b": one_edit, "fam-a": one_edit}
    assert nearest_family(BASE, known) == "fam-z"  # distance 0 beats 1
    assert nearest_family(one_edit, {"fam-z": BASE, "fam-b": BASE}) == "fam-b"


def test_identity_module_imports_without_torch():
    code = "import sys, prism.identity; print(sorted(m for m in ('torch', 'bittensor') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
