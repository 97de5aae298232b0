"""BittensorChain against a fake at the SDK edge (no public chain is reachable here).

The fake mimics the shapes of bittensor 11.3.0's blocking client (``bt.Subtensor``): namespaces
``subnets`` / ``hyperparameters`` / ``epochs``, ``execute(intent, wallet)`` and
``submit_call(call, wallet, signer=...)`` returning ``ExtrinsicResult``. It records what it was
asked and injects failures (chain errors, connection errors, hangs).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import bittensor as bt
import pytest

from prism.chain.base import Chain
from prism.chain.bittensor_chain import BittensorChain, parse_axon_endpoint
from prism.chain.commitments import format_commitment
from prism.chain.errors import (
    ChainError,
    ChainRejected,
    ChainTimeout,
    ChainUnavailable,
    NotRegistered,
    RateLimited,
    SubnetMissing,
)
from prism.chain.wallets import create_wallet
from prism.errors import OperatorError

NETUID = 11
SHA = "ab" * 32


@dataclass
class _Namespace:
    owner: FakeSubtensor
    name: str

    def __getattr__(self, method: str) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            return self.owner.answer(f"{self.name}.{method}", args, kwargs)

        return call


@dataclass
class FakeSubtensor:
    """Answers reads from ``responses`` and records every call; ``failures`` injects errors."""

    responses: dict[str, Any] = field(default_factory=dict)
    failures: dict[str, BaseException] = field(default_factory=dict)
    hang: set[str] = field(default_factory=set)
    calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        for name in ("subnets", "hyperparameters", "epochs"):
            setattr(self, name, _Namespace(self, name))

    def answer(self, what: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        self.calls.append((what, args, kwargs))
        if what in self.hang:
            self.release.wait(10)
        if what in self.failures:
            raise self.failures[what]
        return self.responses[what]

    @property
    def block(self) -> int:
        return self.answer("block", (), {})

    def execute(self, intent: Any, wallet: Any, **kwargs: Any) -> Any:
        return self.answer("execute", (intent, wallet), kwargs)

    def submit_call(self, call: Any, wallet: Any, **kwargs: Any) -> Any:
        return self.answer("submit_call", (call, wallet), kwargs)


def _sdk_neuron(
    uid: int, hotkey: str, *, stake: float, permit: bool, axon: str | None, incentive: float = 0.0
) -> Any:
    return SimpleNamespace(
        uid=uid,
        hotkey=hotkey,
        coldkey=f"cold-{hotkey}",
        total_stake=bt.tao(stake),
        validator_permit=permit,
        axon=axon,
        incentive=incentive,
    )


@pytest.fixture(scope="module")
def wallet(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return create_wallet("val", "default", tmp_path_factory.mktemp("wallets"))


@pytest.fixture
def fake() -> FakeSubtensor:
    graph = SimpleNamespace(
        block=1234,
        neurons=[
            _sdk_neuron(0, "hk-validator", stake=2000.0, permit=True, axon=None, incentive=0.0),
            _sdk_neuron(1, "hk-miner", stake=1.5, permit=False, axon="10.0.0.2:8091", incentive=0.75),
            _sdk_neuron(2, "hk-v6", stake=0.0, permit=False, axon="[2001:db8::1]:9000", incentive=0.25),
        ],
    )
    commitments = {
        "hk-miner": SimpleNamespace(value=format_commitment(SHA), block=1200),
        "hk-sealed": SimpleNamespace(value=None, block=1100),  # timelocked, not readable yet
        "hk-junk": SimpleNamespace(value="hello", block=900),
    }
    return FakeSubtensor(
        responses={
            "block": 1234,
            "subnets.metagraph": graph,
            "subnets.commitments": commitments,
            "subnets.info": SimpleNamespace(netuid=NETUID, tempo=360, burn=bt.tao(0), neuron_count=3),
            "hyperparameters.weights_rate_limit": 100,
            "epochs.blocks_since_last_update": 42,
            "execute": bt.ExtrinsicResult(success=True, message="ok"),
            "submit_call": bt.ExtrinsicResult(success=True, message="ok"),
        }
    )


def make_chain(fake: FakeSubtensor, **kwargs: Any) -> BittensorChain:
    return BittensorChain(NETUID, network="test", client=fake, **kwargs)


def test_reads_are_shaped_into_prism_types(fake: FakeSubtensor) -> None:
    chain = make_chain(fake)
    assert isinstance(chain, Chain)
    assert chain.block() == 1234 and chain.tempo() == 360 and chain.weights_rate_limit() == 100
    graph = chain.metagraph()
    assert graph.block == 1234 and graph.netuid == NETUID
    validator, miner, v6 = graph.neurons
    assert (validator.stake, validator.validator_permit, validator.axon) == (2000.0, True, None)
    assert miner.axon is not None and miner.axon.url == "http://10.0.0.2:8091" and miner.stake == 1.5
    assert v6.axon is not None and v6.axon.url == "http://[2001:db8::1]:9000"
    assert chain.incentives() == {0: 0.0, 1: 0.75, 2: 0.25}
    # commitments=False keeps the metagraph read cheap; commitments come from their own read.
    assert ("subnets.metagraph", (NETUID,), {"commitments": False}) in fake.calls
    commitments = chain.commitments()
    assert set(commitments) == {"hk-miner", "hk-junk"}  # the sealed one is skipped
    assert commitments["hk-miner"].block == 1200
    assert chain.blocks_since_last_update("hk-miner") == 42
    assert ("epochs.blocks_since_last_update", (NETUID, 1), {}) in fake.calls
    assert chain.blocks_since_last_update("hk-unknown") is None


def test_writes_build_the_right_intents_and_calls(fake: FakeSubtensor, wallet: Any) -> None:
    chain = make_chain(fake)
    chain.serve_axon(wallet, "10.0.0.2", 8091)
    chain.set_weights(wallet, {1: 0.75, 2: 0.25}, version_key=5)
    assert chain.commit(wallet, format_commitment(SHA)) == 1234  # no extrinsic id: the current block
    fake.responses["execute"] = bt.ExtrinsicResult(success=True, message="ok", extrinsic_id="1240-3")
    assert chain.set_weights(wallet, {1: 1.0}, version_key=5) == 1240  # the block it was included in
    executes = [c for c in fake.calls if c[0] == "execute"]
    serve, weights = executes[0][1][0], executes[1][1][0]
    assert isinstance(serve, bt.ServeAxon) and (serve.netuid, serve.ip, serve.port) == (
        NETUID,
        "10.0.0.2",
        8091,
    )
    assert isinstance(weights, bt.SetWeights)
    assert weights.netuid == NETUID and weights.version_key == 5
    assert dict(zip(weights.uids, weights.weights, strict=True)) == {1: 0.75, 2: 0.25}
    assert executes[0][1][1] is wallet
    (submit,) = [c for c in fake.calls if c[0] == "submit_call"]
    call, kwargs = submit[1][0], submit[2]
    assert (call.module, call.function) == ("Commitments", "set_commitment")
    assert call.params == {"netuid": NETUID, "info": {"fields": [{"Raw73": format_commitment(SHA).encode()}]}}
    assert kwargs == {"signer": "hotkey"}
    with pytest.raises(ChainRejected):
        chain.commit(wallet, "x" * 129)


@pytest.mark.parametrize(
    ("error", "expected", "code"),
    [
        (
            bt.ChainError("Setting weights too fast", name="SettingWeightsTooFast"),
            RateLimited,
            "chain.rate_limited",
        ),
        (
            bt.ChainError("hotkey not registered", name="HotKeyNotRegisteredInSubNet"),
            NotRegistered,
            "chain.not_registered",
        ),
        (bt.ChainError("Transaction priority is too low"), RateLimited, "chain.rate_limited"),
        (bt.ChainError("bad origin", name="BadOrigin"), ChainRejected, "chain.rejected"),
        (bt.RpcConnectionError("socket closed"), ChainUnavailable, "chain.unavailable"),
        (ConnectionRefusedError("refused"), ChainUnavailable, "chain.unavailable"),
        (RuntimeError("surprise"), ChainError, "chain.error"),
    ],
)
def test_sdk_errors_map_to_typed_errors(
    fake: FakeSubtensor, wallet: Any, error: BaseException, expected: type, code: str
) -> None:
    fake.failures["execute"] = error
    with pytest.raises(expected) as info:
        make_chain(fake).set_weights(wallet, {1: 1.0}, version_key=1)
    assert info.value.code == code


def test_failed_extrinsic_result_raises_typed_error(fake: FakeSubtensor, wallet: Any) -> None:
    rate_limited = bt.ChainError("CommitmentSetRateLimitExceeded: rate limit", name=None)
    fake.responses["submit_call"] = bt.ExtrinsicResult(success=False, message="failed", error=rate_limited)
    with pytest.raises(RateLimited):
        make_chain(fake).commit(wallet, format_commitment(SHA))
    fake.responses["execute"] = bt.ExtrinsicResult(success=False, message="Invalid Transaction")
    with pytest.raises(ChainRejected):
        make_chain(fake).serve_axon(wallet, "10.0.0.2", 8091)


def test_hung_call_times_out(fake: FakeSubtensor) -> None:
    fake.hang.add("subnets.metagraph")
    chain = make_chain(fake, read_timeout_s=0.2)
    try:
        with pytest.raises(ChainTimeout) as info:
            chain.metagraph()
        assert info.value.code == "chain.timeout" and info.value.fault == "infrastructure"
    finally:
        fake.release.set()
        chain.close()


def test_missing_subnet_is_an_operator_error(fake: FakeSubtensor) -> None:
    fake.responses["subnets.metagraph"] = None
    with pytest.raises(SubnetMissing):
        make_chain(fake).metagraph()


@pytest.mark.parametrize(
    ("endpoint", "expected"),
    [
        ("1.2.3.4:8091", "http://1.2.3.4:8091"),
        ("[::1]:80", "http://[::1]:80"),
        (None, None),
        ("", None),
        ("0.0.0.0:8091", None),
        ("not-an-ip:80", None),
        ("1.2.3.4:0", None),
    ],
)
def test_axon_endpoint_parsing(endpoint: str | None, expected: str | None) -> None:
    axon = parse_axon_endpoint(endpoint)
    assert (axon.url if axon else None) == expected


def test_default_client_is_a_cold_subtensor() -> None:
    # Construction must not touch the network (nothing is reachable here).
    chain = BittensorChain(NETUID, network="test")
    assert "Subtensor" in repr(chain._client) and "cold" in repr(chain._client)
    assert BittensorChain(NETUID, endpoint="ws://127.0.0.1:9944").network == "ws://127.0.0.1:9944"
    with pytest.raises(OperatorError) as unknown:
        BittensorChain(NETUID, network="moon")
    assert unknown.value.code == "config.invalid"
