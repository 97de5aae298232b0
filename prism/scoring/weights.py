"""Pools -> recipients -> uids -> a normalized weight vector.

The architecture pool pays the leading famil(y/ies): a family's share goes to its owner, and,
under rules with ``owner_share < 1``, is split with the submitter of its canonical version when
that is another hotkey (owner ``owner_share``, improver the rest). The training pool pays the
best variant(s) of the leading family, or of the highest-ranked family that has a qualifying
variant when the leader has none. A recipient whose hotkey is not in the current metagraph
(deregistered) leaves its share unclaimed, as does a pool with nobody to pay. Unclaimed share
follows ``policy.unclaimed_rule``:

* ``redistribute`` (default): spread pro rata over every claimed share (the vector is
  renormalized); when nothing at all is claimed the result is empty and the validator sets no
  weights this epoch;
* ``burn``: the unclaimed share goes to ``policy.burn_uid``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict

from prism.scoring.comparison import Comparison
from prism.scoring.competition import run_competitions
from prism.scoring.paired import EvalRequest
from prism.scoring.policy import ScoringPolicy
from prism.scoring.records import SubmissionRecord
from prism.scoring.standings import FamilyEntry, OwnershipEvent, Standings, VariantEntry, VersionEntry
from prism.scoring.submissions import SubmissionVerdict

PayoutRole = Literal["owner", "improver", "variant"]

#: Shares below this are float noise from 1 - sum(pools), not unclaimed weight.
_EPSILON = 1e-12


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Payout(_Frozen):
    """One recipient's share of one pool, before normalization."""

    pool: str
    hotkey: str
    zip_sha256: str
    uid: int | None
    share: float
    role: PayoutRole = "owner"


class Leaderboard(_Frozen):
    profile_key: str
    rules_version: int
    block: int
    leader_family_id: str | None
    families: tuple[FamilyEntry, ...]
    versions: tuple[VersionEntry, ...]
    variants: tuple[VariantEntry, ...]
    submissions: tuple[SubmissionVerdict, ...]
    payouts: tuple[Payout, ...]
    unclaimed_share: float
    comparisons: tuple[Comparison, ...] = ()


class WeightResult(_Frozen):
    weights: dict[int, float]
    leaderboard: Leaderboard
    events: tuple[OwnershipEvent, ...]

    @property
    def reasons(self) -> dict[tuple[str, str], tuple[str, ...]]:
        """(hotkey, zip_sha256) -> why that submission earns nothing (empty if it scored)."""
        return {(s.hotkey, s.zip_sha256): s.reasons for s in self.leaderboard.submissions}

    @property
    def eval_requests(self) -> tuple[EvalRequest, ...]:
        """Paired held-out evaluations pending comparisons wait for (each once, sorted)."""
        requests = {r for c in self.leaderboard.comparisons for r in c.requests}
        return tuple(sorted(requests, key=lambda r: tuple(str(v) for v in r.model_dump().values())))


def _linear_shares(count: int, top_k: int) -> list[float]:
    """top_k_linear: ranks 1..k get k, k-1, ..., 1 (over min(k, count) ranks), normalized."""
    ranks = min(count, top_k)
    raw = [float(ranks - i) for i in range(ranks)]
    total = math.fsum(raw)
    return [r / total for r in raw]


def _architecture_ranking(standings: Standings) -> list[FamilyEntry]:
    """Leader first (incumbency), then the others by held-out, probe, founding block, owner."""
    leader = [f for f in standings.families if f.leader]
    others = sorted(
        (f for f in standings.families if not f.leader),
        key=lambda f: (f.heldout_bpb, f.probe_bpb, f.founded_block, f.owner_hotkey),
    )
    return leader + others


def _training_ranking(standings: Standings) -> list[VariantEntry]:
    """Qualifying variants of the highest-ranked family that has any (the leader's when it has
    one, so the pool backs the architecture the subnet leads with): best first, then the other
    qualifying ones by improvement."""
    for family in _architecture_ranking(standings):
        pool = [v for v in standings.variants if v.family_id == family.family_id and v.qualifies]
        if pool:
            best = [v for v in pool if v.best]
            others = sorted(
                (v for v in pool if not v.best),
                key=lambda v: (-v.improvement_bpb, v.commit_block, v.hotkey, v.zip_sha256),
            )
            return best + others
    return []


def _rank_shares(count: int, policy: ScoringPolicy) -> list[float]:
    if count == 0:
        return []
    return [1.0] if policy.pool_policy == "winner_take_all" else _linear_shares(count, policy.top_k)


def _architecture_payouts(
    ranking: list[FamilyEntry], policy: ScoringPolicy, hotkey_to_uid: Mapping[str, int]
) -> list[Payout]:
    """Each paid family's share: owner ``owner_share``, the canonical version's submitter the
    rest when that is another hotkey; the owner keeps all of it otherwise."""
    payouts = []
    for family, share in zip(ranking, _rank_shares(len(ranking), policy), strict=False):
        amount = policy.architecture_pool * share
        improver = family.canonical_hotkey
        split = improver is not None and improver != family.owner_hotkey and policy.owner_share < 1.0
        owner_amount = amount * policy.owner_share if split else amount
        payouts.append(Payout(pool="architecture", hotkey=family.owner_hotkey, zip_sha256=family.owner_zip_sha256,
                              uid=hotkey_to_uid.get(family.owner_hotkey), share=owner_amount, role="owner"))  # fmt: skip
        if split and improver is not None:
            payouts.append(Payout(pool="architecture", hotkey=improver, zip_sha256=family.canonical_zip_sha256 or "",
                                  uid=hotkey_to_uid.get(improver), share=amount - owner_amount, role="improver"))  # fmt: skip
    return [p for p in payouts if p.share > 0.0]


def _training_payouts(
    ranking: list[VariantEntry], policy: ScoringPolicy, hotkey_to_uid: Mapping[str, int]
) -> list[Payout]:
    return [
        Payout(pool="training", hotkey=v.hotkey, zip_sha256=v.zip_sha256, uid=hotkey_to_uid.get(v.hotkey),
               share=policy.training_pool * share, role="variant")
        for v, share in zip(ranking, _rank_shares(len(ranking), policy), strict=False)
        if policy.training_pool > 0.0
    ]  # fmt: skip


def _normalize(payouts: list[Payout], unclaimed: float, policy: ScoringPolicy) -> dict[int, float]:
    per_uid: dict[int, list[float]] = {}
    for payout in payouts:
        if payout.uid is not None:
            per_uid.setdefault(payout.uid, []).append(payout.share)
    if policy.unclaimed_rule == "burn" and unclaimed > _EPSILON:
        per_uid.setdefault(policy.burn_uid, []).append(unclaimed)
    totals = {uid: math.fsum(sorted(shares)) for uid, shares in per_uid.items()}
    grand = math.fsum(totals[uid] for uid in sorted(totals))
    if grand <= 0.0:
        return {}
    return {uid: totals[uid] / grand for uid in sorted(totals)}


def compute_weights(
    records: Sequence[SubmissionRecord],
    policy: ScoringPolicy,
    hotkey_to_uid: Mapping[str, int],
    block: int,
) -> WeightResult:
    """Scores, ownership and the normalized weight vector; a pure function of its arguments."""
    standings = run_competitions(records, policy)
    payouts = _architecture_payouts(_architecture_ranking(standings), policy, hotkey_to_uid)
    payouts += _training_payouts(_training_ranking(standings), policy, hotkey_to_uid)
    claimed = math.fsum(p.share for p in payouts if p.uid is not None)
    unclaimed = max(0.0, 1.0 - claimed)
    unclaimed = unclaimed if unclaimed > _EPSILON else 0.0
    submissions = _mark_deregistered(standings.submissions, payouts)
    leaderboard = Leaderboard(
        profile_key=policy.profile_key,
        rules_version=policy.version,
        block=block,
        leader_family_id=standings.leader_family_id,
        families=standings.families,
        versions=standings.versions,
        variants=standings.variants,
        submissions=submissions,
        payouts=tuple(payouts),
        unclaimed_share=unclaimed,
        comparisons=standings.comparisons,
    )
    return WeightResult(
        weights=_normalize(payouts, unclaimed, policy), leaderboard=leaderboard, events=standings.events
    )


def _mark_deregistered(
    submissions: tuple[SubmissionVerdict, ...], payouts: list[Payout]
) -> tuple[SubmissionVerdict, ...]:
    lost = {(p.hotkey, p.zip_sha256) for p in payouts if p.uid is None}
    return tuple(
        s.model_copy(update={"reasons": tuple(sorted({*s.reasons, "owner.deregistered"}))})
        if (s.hotkey, s.zip_sha256) in lost
        else s
        for s in submissions
    )
