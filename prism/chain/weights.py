"""Fit a validator's weight vector to the subnet's rules before it goes on chain.

Two rules, both read from the metagraph of the same loop step:

* **Nothing qualifies** (no scored uid with a positive weight): with ``fallback="owner"`` (the
  default) all weight goes to the subnet owner's uid, which burns this validator's share of
  miner emission instead of handing it to anyone; with ``fallback="skip"`` no weights are set
  (the validator then looks inactive to the chain). When the owner's hotkey holds no uid on the
  subnet, nothing is set either, and the reason is logged.
* **MinAllowedWeights**: a vector with fewer nonzero entries than the subnet's
  ``min_allowed_weights`` is refused by the chain. It is padded, owner's uid first and then the
  lowest registered uids, each with the smallest weight that survives bittensor's u16
  quantization (2/65535 of the largest weight), so almost no emission moves.

The weights ``version_key`` is ``max(PRISM's own, the subnet's WeightsVersionKey)``: the chain
refuses any key below its ``WeightsVersionKey``.
"""

from __future__ import annotations

import logging
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict

from prism import __version__
from prism.chain.base import Metagraph, SubnetHyperparams

logger = logging.getLogger(__name__)

FallbackRule = Literal["owner", "skip"]
# Padding weight relative to the largest one: 2 u16 steps, never rounded to zero by the SDK.
PAD_FRACTION = 2 / 65535


def version_as_int(version: str) -> int:
    """``"1.2.3"`` -> 10203 (major * 10000 + minor * 100 + patch); suffixes (``rc1``) are ignored."""
    parts = [
        int(match.group()) if (match := re.match(r"\d+", part)) else 0 for part in version.split(".")[:3]
    ]
    major, minor, patch = [*parts, 0, 0, 0][:3]
    return major * 10_000 + minor * 100 + patch


PRISM_WEIGHTS_VERSION = version_as_int(__version__)


def weights_version_key(hyperparams: SubnetHyperparams, ours: int = PRISM_WEIGHTS_VERSION) -> int:
    """The version_key to send: ours, or the subnet's required key when that is higher."""
    if hyperparams.weights_version_key > ours:
        logger.warning(
            "the subnet requires weights version %d, above this PRISM's %d: upgrade PRISM",
            hyperparams.weights_version_key,
            ours,
        )
    return max(ours, hyperparams.weights_version_key)


class ConformedWeights(BaseModel):
    """The vector to send, and which rule produced it (``scored``, ``owner`` or ``skip``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    weights: dict[int, float]
    rule: Literal["scored", "owner", "skip"]
    note: str = ""
    padded: tuple[int, ...] = ()


def conform_weights(
    scored: dict[int, float], metagraph: Metagraph, *, fallback: FallbackRule
) -> ConformedWeights:
    """Apply the no-qualifier rule and the MinAllowedWeights padding (see the module docstring)."""
    registered = {n.uid for n in metagraph.neurons}
    weights = {uid: float(w) for uid, w in scored.items() if w > 0 and uid in registered}
    if weights:
        return _padded(weights, metagraph, "scored")
    if fallback == "skip":
        return ConformedWeights(weights={}, rule="skip", note="nothing qualifies (--weights.fallback skip)")
    owner = metagraph.owner_uid
    if owner is None:
        return ConformedWeights(
            weights={}, rule="skip", note="nothing qualifies and the subnet owner's hotkey has no uid"
        )
    return _padded(
        {owner: 1.0}, metagraph, "owner", note=f"nothing qualifies: burn to the owner's uid {owner}"
    )


def _padded(
    weights: dict[int, float], metagraph: Metagraph, rule: Literal["scored", "owner"], note: str = ""
) -> ConformedWeights:
    missing = metagraph.hyperparams.min_allowed_weights - len(weights)
    if missing <= 0:
        return ConformedWeights(weights=weights, rule=rule, note=note)
    order = [metagraph.owner_uid] if metagraph.owner_uid is not None else []
    order += sorted(n.uid for n in metagraph.neurons)
    extra = [uid for uid in dict.fromkeys(order) if uid not in weights][:missing]
    floor = max(weights.values()) * PAD_FRACTION
    padded = {**weights, **{uid: floor for uid in extra}}
    if len(extra) < missing:
        logger.warning(
            "the subnet wants %d weights but has only %d uids: the chain will refuse this vector",
            metagraph.hyperparams.min_allowed_weights,
            len(padded),
        )
    note = f"{note}; " if note else ""
    note += f"padded to min_allowed_weights={metagraph.hyperparams.min_allowed_weights}"
    return ConformedWeights(weights=padded, rule=rule, note=note, padded=tuple(extra))
