"""The validator's chain stages: one view of the chain per step, beacons, and weights."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from prism.beacon import beacon_block
from prism.chain import Chain, ChainError, ChainRejected, ChainTimeout, Commitment, Metagraph, RateLimited
from prism.chain.weights import FallbackRule, conform_weights, weights_version_key
from prism.errors import OperatorError
from prism.scoring import WeightResult
from prism.store import Store
from prism.validator.state import LoopState

logger = logging.getLogger(__name__)

# After a set_weights timeout the extrinsic may still land: wait this many blocks before the chain's
# LastUpdate decides whether to send again.
TIMEOUT_SETTLE_BLOCKS = 3


@dataclass(frozen=True)
class ChainView:
    block: int
    metagraph: Metagraph
    commitments: dict[str, Commitment]


def sync(chain: Chain) -> ChainView:
    """One metagraph read (neurons, LastUpdate, hyperparameters) and one commitments read per step;
    every later stage of the step uses this view."""
    metagraph = chain.metagraph()
    return ChainView(block=metagraph.block, metagraph=metagraph, commitments=chain.commitments())


def refresh_beacons(store: Store, chain: Chain, view: ChainView) -> int:
    """Read the beacon block hash of every admitted submission whose beacon block now exists.

    The hash of a block after the commitment fixes the submission's training seeds and held-out
    windows (``prism.beacon``): unknown to the miner when it committed, the same for every
    validator. Returns how many were learnt this step.
    """
    learnt = 0
    for zip_sha256, commit_block in store.awaiting_beacon():
        block = beacon_block(commit_block)
        if block > view.block:
            continue
        try:
            block_hash = chain.block_hash(block)
        except ChainError as exc:
            logger.warning("cannot read the hash of beacon block %d yet (%s)", block, exc)
            break
        store.set_beacon(zip_sha256, block_hash=block_hash)
        learnt += 1
    return learnt


def weights_due(view: ChainView, hotkey: str, state: LoopState) -> bool:
    """Once per tempo and never inside the weights rate limit, judged by the chain's ``LastUpdate`` in
    this step's metagraph (so a restart, a timed-out call that landed anyway, or a reused state
    directory cannot fool it), and not while backing off after a refusal."""
    if state.weights_retry_block is not None and view.block < state.weights_retry_block:
        return False
    params = view.metagraph.hyperparams
    since = view.metagraph.blocks_since_last_update(hotkey)
    return since is None or since >= max(params.tempo, params.weights_rate_limit, 1)


def set_weights(chain: Chain, wallet: Any, result: WeightResult, store: Store, view: ChainView,
                state: LoopState, fallback: FallbackRule = "owner") -> dict[str, Any]:  # fmt: skip
    """Fit the scored weights to the subnet's rules (``prism.chain.weights``) and set them. A refusal
    backs off (a tempo; the rate limit's window when rate-limited); a timeout is re-judged by the
    chain's ``LastUpdate`` a few blocks later. Timeouts and connection errors propagate."""
    conformed = conform_weights(dict(result.weights), view.metagraph, fallback=fallback)
    if not conformed.weights:
        return {"set": 0, "reason": conformed.note or "nothing scored"}
    version = weights_version_key(view.metagraph.hyperparams)
    params = view.metagraph.hyperparams
    try:
        block = chain.set_weights(wallet, conformed.weights, version)
    except RateLimited as exc:
        state.weights_retry_block = view.block + max(params.weights_rate_limit, 1)
        logger.warning(
            "set_weights rate-limited (%s); not retrying before block %d", exc, state.weights_retry_block
        )
        return {"set": 0, "reason": exc.code}
    except ChainTimeout:
        state.weights_retry_block = view.block + TIMEOUT_SETTLE_BLOCKS
        raise
    except (ChainRejected, OperatorError) as exc:  # a verdict of the chain (or our own setup)
        state.weights_retry_block = view.block + max(params.tempo, 1)
        logger.warning("set_weights rejected by the chain (%s); backing off until block %d (one tempo)",
                       exc, state.weights_retry_block)  # fmt: skip
        return {"set": 0, "reason": exc.code, "retry_block": state.weights_retry_block}
    state.weights_retry_block = None
    store.record_weights(block, conformed.weights, profile_key=result.leaderboard.profile_key,
                         rules_version=result.leaderboard.rules_version)  # fmt: skip
    state.last_weights_block = block
    state.last_weights_step = state.step
    logger.info("weights set at block %d (%s, version_key %d, %s): %s", block, conformed.rule, version,
                "commit-reveal" if params.commit_reveal else "plain", conformed.note or len(conformed.weights))  # fmt: skip
    return {"set": 1, "block": block, "uids": len(conformed.weights), "rule": conformed.rule}
