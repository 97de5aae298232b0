"""Architecture identity without torch: depth folding and the near-duplicate rule.

A family is identified by its **family ops**: the canonical op tokens of the model's forward
(``prism.evaluator.graph``), with repeated blocks folded (``collapse_repeats``) so depth does not
count. Each token is ``op(label, ...)``: the canonical op and, for each input, the op that
produced it (or ``tok``, ``param``, ``const``). Two families can therefore be compared as token
sequences, here without importing torch, so the scoring code can call it.

**Near-duplicate rule.** ``family_distance`` is the edit distance between two family-op sequences
(insert, delete or substitute one token, cost 1 each). A new family is a *version* of a known
family when the distance is at most ``near_duplicate_threshold(n)`` for the longer length ``n``:
``min(NEAR_DUPLICATE_MAX_EDITS, floor(NEAR_DUPLICATE_FRACTION * n))``. One changed op typically
costs two edits (its own token and the label in its consumer's token), so the threshold lets a
single inserted, removed or swapped op through, and no more. ``nearest_family`` returns the
closest known family within the threshold (ties: the smaller distance, then the family id that
sorts first), or None.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from prism.errors import MinerFault

#: Most edits a near duplicate may differ by.
NEAR_DUPLICATE_MAX_EDITS = 2
#: ... and at most this fraction of the longer sequence's tokens (short graphs tolerate less).
NEAR_DUPLICATE_FRACTION = 0.1
#: Longest token sequence ``collapse_repeats`` accepts (it is quadratic per fold).
MAX_FAMILY_OPS = 8_192


class FamilyTooLarge(MinerFault):
    default_code = "graph.too_large"


def near_duplicate_threshold(length: int) -> int:
    """Largest edit distance at which two families of (longer) length ``length`` are one."""
    return min(NEAR_DUPLICATE_MAX_EDITS, int(NEAR_DUPLICATE_FRACTION * length))


def family_distance(first: Sequence[str], second: Sequence[str], limit: int | None = None) -> int:
    """Edit distance between two token sequences; with ``limit``, anything above is ``limit + 1``.

    Ukkonen's banded dynamic programme: only cells within ``limit`` of the diagonal are
    computed, so the cost is ``O(n * limit)``.
    """
    a, b = list(first), list(second)
    bound = max(len(a), len(b)) if limit is None else limit
    if abs(len(a) - len(b)) > bound:
        return bound + 1
    far = bound + 1
    previous = {j: j for j in range(min(len(b), bound) + 1)}
    for i in range(1, len(a) + 1):
        current: dict[int, int] = {}
        low, high = max(0, i - bound), min(len(b), i + bound)
        for j in range(low, high + 1):
            if j == 0:
                current[j] = i
                continue
            substitute = previous.get(j - 1, far) + (a[i - 1] != b[j - 1])
            current[j] = min(substitute, previous.get(j, far) + 1, current.get(j - 1, far) + 1)
        previous = current
        if min(previous.values(), default=far) > bound:
            return far
    return min(previous.get(len(b), far), far)


def nearest_family(family_ops: Sequence[str], known: Mapping[str, Sequence[str]]) -> str | None:
    """The known family ``family_ops`` is a near duplicate of, or None (see module doc)."""
    best: tuple[int, str] | None = None
    for family_id, ops in known.items():
        threshold = near_duplicate_threshold(max(len(family_ops), len(ops)))
        distance = family_distance(family_ops, ops, threshold)
        if distance <= threshold and (best is None or (distance, family_id) < best):
            best = (distance, family_id)
    return None if best is None else best[1]


# ---------------------------------------------------------------------------------------------
# Depth normalization


def collapse_repeats(sequence: Sequence[str]) -> list[str]:
    """Fold consecutive copies of a block of tokens into one copy, repeatedly, until none is left.

    Each round lists every tandem repeat (a run of ``k >= 2`` adjacent copies of a length-``p``
    block) and folds them *largest first*: by tokens covered (``k * p``; ties: shorter period,
    then leftmost), skipping any run that overlaps one already chosen in this round. Folding the
    biggest run first means that in ``E B^n H`` (an embedding, ``n`` identical layers, a head)
    the layer stack is folded to one layer before anything that straddles a layer boundary, so
    every depth ``n >= 1`` reaches the same result. The result contains no two adjacent equal
    blocks. Folding squares is not confluent in general, so this is a heuristic: random-sequence
    checks find ``E B^n H`` pairs that disagree about once in 10^4, all with ``E`` or ``H`` made
    of fragments of ``B``; real layer stacks are not like that.
    """
    if len(sequence) > MAX_FAMILY_OPS:
        raise FamilyTooLarge(
            f"the forward executes {len(sequence)} canonical ops at the canonical context "
            f"(limit {MAX_FAMILY_OPS})",
            code="graph.too_large",
        )
    codes: dict[str, int] = {}
    array = np.array([codes.setdefault(op, len(codes)) for op in sequence], dtype=np.int64)
    names = {code: op for op, code in codes.items()}
    while True:
        runs = _disjoint_largest_runs(array)
        if not runs:
            break
        # Right to left, so the starts of the runs still to fold stay valid.
        for start, period, copies in sorted(runs, reverse=True):
            array = np.concatenate((array[: start + period], array[start + copies * period :]))
    return [names[int(code)] for code in array]


def _tandem_runs(array: np.ndarray) -> list[tuple[int, int, int]]:
    """Every maximal run of repeats as (start, period, copies)."""
    runs: list[tuple[int, int, int]] = []
    for period in range(1, len(array) // 2 + 1):
        equal = array[:-period] == array[period:]
        if not equal.any():
            continue
        # A stretch of m consecutive equalities at distance p is ``m + p`` ops with period p.
        edges = np.diff(np.concatenate(([0], equal.astype(np.int8), [0])))
        starts = np.flatnonzero(edges == 1)
        lengths = np.flatnonzero(edges == -1) - starts
        for start, length in zip(starts.tolist(), lengths.tolist(), strict=True):
            if length >= period:
                runs.append((start, period, (length + period) // period))
    return runs


def _disjoint_largest_runs(array: np.ndarray) -> list[tuple[int, int, int]]:
    """The runs to fold this round: largest coverage first, none overlapping another."""
    ranked = sorted(_tandem_runs(array), key=lambda run: (-run[1] * run[2], run[1], run[0]))
    taken = np.zeros(len(array), dtype=bool)
    chosen: list[tuple[int, int, int]] = []
    for start, period, copies in ranked:
        end = start + period * copies
        if taken[start:end].any():
            continue
        taken[start:end] = True
        chosen.append((start, period, copies))
    return chosen


__all__ = [
    "MAX_FAMILY_OPS",
    "NEAR_DUPLICATE_FRACTION",
    "NEAR_DUPLICATE_MAX_EDITS",
    "FamilyTooLarge",
    "collapse_repeats",
    "family_distance",
    "near_duplicate_threshold",
    "nearest_family",
]
