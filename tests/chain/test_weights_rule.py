"""The rules a validator's weight vector is fitted to before it goes on chain (prism.chain.weights)."""

from __future__ import annotations

import pytest

from prism import __version__
from prism.chain.base import Metagraph, Neuron, SubnetHyperparams
from prism.chain.weights import (
    PAD_FRACTION,
    PRISM_WEIGHTS_VERSION,
    conform_weights,
    version_as_int,
    weights_version_key,
)


def graph(*, owner: str | None = "hk-owner", min_allowed: int = 0, uids: int = 5) -> Metagraph:
    neurons = [Neuron(uid=0, hotkey="hk-owner", coldkey="ck", stake=1.0, validator_permit=False)]
    neurons += [
        Neuron(uid=u, hotkey=f"hk-{u}", coldkey="ck", stake=1.0, validator_permit=u == 1)
        for u in range(1, uids)
    ]
    params = SubnetHyperparams(tempo=20, weights_rate_limit=5, min_allowed_weights=min_allowed)
    return Metagraph(netuid=1, block=100, neurons=neurons, hyperparams=params, owner_hotkey=owner)


def test_scored_weights_pass_through_without_zeros_or_strangers() -> None:
    out = conform_weights({2: 0.7, 3: 0.3, 4: 0.0, 42: 1.0}, graph(), fallback="owner")
    assert (out.rule, out.weights, out.padded) == ("scored", {2: 0.7, 3: 0.3}, ())


def test_nothing_qualifies_burns_to_the_owner_or_skips() -> None:
    burn = conform_weights({}, graph(), fallback="owner")
    assert (burn.rule, burn.weights) == ("owner", {0: 1.0}) and "owner's uid 0" in burn.note
    skip = conform_weights({2: 0.0}, graph(), fallback="skip")
    assert (skip.rule, skip.weights) == ("skip", {})
    orphan = conform_weights({}, graph(owner="hk-gone"), fallback="owner")
    assert orphan.weights == {} and "no uid" in orphan.note


def test_short_vectors_are_padded_to_min_allowed_weights_owner_first() -> None:
    out = conform_weights({3: 0.5}, graph(min_allowed=3), fallback="owner")
    assert set(out.weights) == {3, 0, 1} and out.padded == (0, 1)
    assert out.weights[0] == out.weights[1] == pytest.approx(0.5 * PAD_FRACTION)
    # 2 u16 steps of the largest weight: the SDK's quantization keeps them nonzero.
    assert round(out.weights[0] / 0.5 * 65535) == 2
    impossible = conform_weights({}, graph(min_allowed=9, uids=3), fallback="owner")
    assert len(impossible.weights) == 3  # every uid there is; the chain will refuse (logged)


def test_version_key_is_the_higher_of_ours_and_the_subnets(caplog: pytest.LogCaptureFixture) -> None:
    assert version_as_int("1.2.3") == 10203 and version_as_int("0.1.0rc1") == 100
    assert version_as_int(__version__) == PRISM_WEIGHTS_VERSION
    params = SubnetHyperparams(tempo=1, weights_rate_limit=1, weights_version_key=0)
    assert weights_version_key(params) == PRISM_WEIGHTS_VERSION
    newer = params.model_copy(update={"weights_version_key": PRISM_WEIGHTS_VERSION + 5})
    assert weights_version_key(newer) == PRISM_WEIGHTS_VERSION + 5
    assert "upgrade PRISM" in caplog.text
