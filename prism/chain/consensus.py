"""The local chain's incentive rule: a simplified Yuma consensus.

For every miner uid ``j`` and every validator ``v`` with a permit and a weight vector ``w_v``
(normalized to sum 1) and stake ``s_v`` (``S`` = total stake of those validators):

* consensus ``c_j`` = the stake-weighted median of ``w_vj``: the largest value ``x`` among the
  ``w_vj`` (or 0) that validators holding strictly more than half of ``S`` weight at least ``x``;
* rank ``r_j = sum_v s_v * min(w_vj, c_j)`` (weights above consensus are clipped, so a lone
  validator cannot pump a miner);
* incentive ``I_j = r_j / sum_k r_k`` (all zeros when nobody earns).

Real Yuma also keeps bonds, EMA and dividends; PRISM's local chain only needs to show who earns.
"""

from __future__ import annotations

import math


def normalize(weights: dict[int, float]) -> dict[int, float]:
    """Weights scaled to sum 1; negative or non-finite values are refused, all-zero stays zero."""
    for uid, value in weights.items():
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"weight for uid {uid} must be finite and >= 0, got {value}")
    total = sum(weights.values())
    if total <= 0:
        return {uid: 0.0 for uid in weights}
    return {uid: value / total for uid, value in weights.items()}


def stake_weighted_median(values_and_stakes: list[tuple[float, float]], total_stake: float) -> float:
    """Largest value supported (>=) by strictly more than half of ``total_stake``."""
    best = 0.0
    for candidate, _ in values_and_stakes:
        support = sum(stake for value, stake in values_and_stakes if value >= candidate)
        if support > total_stake / 2 and candidate > best:
            best = candidate
    return best


def incentives(
    weights_by_validator: dict[int, dict[int, float]], stakes: dict[int, float]
) -> dict[int, float]:
    """Incentive per uid from each validator's latest weights and its stake."""
    validators = [v for v in weights_by_validator if stakes.get(v, 0.0) > 0]
    total_stake = sum(stakes[v] for v in validators)
    uids = sorted({uid for v in validators for uid in weights_by_validator[v]})
    if not validators or not uids:
        return {}
    normalized = {v: normalize(weights_by_validator[v]) for v in validators}
    ranks: dict[int, float] = {}
    for uid in uids:
        column = [(normalized[v].get(uid, 0.0), stakes[v]) for v in validators]
        consensus = stake_weighted_median(column, total_stake)
        ranks[uid] = sum(stake * min(value, consensus) for value, stake in column)
    total_rank = sum(ranks.values())
    if total_rank <= 0:
        return {uid: 0.0 for uid in uids}
    return {uid: rank / total_rank for uid, rank in ranks.items()}
