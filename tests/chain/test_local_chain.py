"""LocalChain: a real SQLite file, real wallets, real processes sharing it."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from prism.chain.base import Chain
from prism.chain.commitments import format_commitment
from prism.chain.errors import BlockUnavailable, NotPermitted, NotRegistered, RateLimited, SubnetMissing
from prism.chain.local import LocalChain, SubnetParams
from prism.chain.wallets import create_wallet, hotkey_ss58
from prism.errors import OperatorError


class ManualClock:
    """Wall time the test moves by hand, so block numbers are exact."""

    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance_blocks(self, blocks: int, block_time_s: float = 1.0) -> None:
        self.now += blocks * block_time_s


@pytest.fixture(scope="module")
def wallets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("wallets")
    return {name: create_wallet(name, "default", root) for name in ("v1", "v2", "v3", "m1", "m2", "m3")}


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def chain(tmp_path: Path, clock: ManualClock) -> LocalChain:
    params = SubnetParams(netuid=3, tempo=10, weights_rate_limit=5, commitment_rate_limit=4)
    return LocalChain.create(tmp_path / "chain.db", params, block_time_s=1.0, clock=clock)


def test_local_chain_satisfies_the_protocol(chain: LocalChain) -> None:
    assert isinstance(chain, Chain)
    assert chain.tempo() == 10 and chain.weights_rate_limit() == 5


def test_missing_file_and_missing_subnet_are_operator_errors(tmp_path: Path, chain: LocalChain) -> None:
    with pytest.raises(SubnetMissing, match="prism chain create"):
        LocalChain(tmp_path / "nope.db", 3)
    with pytest.raises(SubnetMissing):
        LocalChain(chain.path, 4)
    with pytest.raises(OperatorError) as info:
        LocalChain.create(chain.path, SubnetParams(netuid=3))
    assert info.value.code == "chain.subnet_exists"
    # A second subnet in the same file shares the block clock.
    other = LocalChain.create(chain.path, SubnetParams(netuid=4, tempo=99))
    assert other.tempo() == 99 and other.genesis_time == chain.genesis_time


def test_block_clock_follows_wall_time(chain: LocalChain, clock: ManualClock) -> None:
    assert chain.block() == 0
    clock.advance_blocks(7)
    assert chain.block() == 7
    clock.now += 0.5
    assert chain.block() == 7


def test_registration_assigns_uids_and_updates_stake(chain: LocalChain, wallets: dict[str, Any]) -> None:
    assert chain.register_wallet(wallets["v1"], stake=500.0, validator_permit=True) == 0
    assert chain.register_wallet(wallets["m1"]) == 1
    # Registering again keeps the uid and updates stake and permit.
    assert chain.register_wallet(wallets["m1"], stake=3.0) == 1
    assert chain.add_stake(hotkey_ss58(wallets["m1"]), 2.0) == 5.0
    graph = chain.metagraph()
    assert [n.uid for n in graph.neurons] == [0, 1]
    v1, m1 = graph.neurons
    assert (v1.stake, v1.validator_permit, m1.stake, m1.validator_permit) == (500.0, True, 5.0, False)
    assert m1.coldkey == wallets["m1"].coldkeypub.ss58_address
    with pytest.raises(OperatorError) as info:
        chain.register(hotkey_ss58(wallets["m1"]), "5OtherColdkey", stake=1.0)
    assert info.value.code == "chain.hotkey_owned"
    with pytest.raises(NotRegistered):
        chain.add_stake("5Unknown", 1.0)


def test_commitments_keep_history_and_honour_the_rate_limit(
    chain: LocalChain, clock: ManualClock, wallets: dict[str, Any]
) -> None:
    miner = wallets["m1"]
    with pytest.raises(NotRegistered):
        chain.commit(miner, format_commitment("a" * 64))
    chain.register_wallet(miner)
    clock.advance_blocks(2)
    assert chain.commit(miner, format_commitment("a" * 64)) == 2
    clock.advance_blocks(3)
    with pytest.raises(RateLimited) as info:
        chain.commit(miner, format_commitment("b" * 64))
    assert info.value.retry_after_blocks == 1 and info.value.code == "chain.rate_limited"
    clock.advance_blocks(1)
    assert chain.commit(miner, format_commitment("b" * 64)) == 6
    latest = chain.commitments()[hotkey_ss58(miner)]
    assert (latest.data, latest.block) == (format_commitment("b" * 64), 6)
    assert [c.block for c in chain.commitment_history(hotkey_ss58(miner))] == [2, 6]
    with pytest.raises(OperatorError):
        chain.commit(miner, "x" * 200)


def test_serve_axon_publishes_the_endpoint(chain: LocalChain, wallets: dict[str, Any]) -> None:
    chain.register_wallet(wallets["m1"])
    assert chain.metagraph().neurons[0].axon is None
    chain.serve_axon(wallets["m1"], "127.0.0.1", 8091)
    axon = chain.metagraph().neurons[0].axon
    assert axon is not None and axon.url == "http://127.0.0.1:8091"
    with pytest.raises(ValueError):
        chain.serve_axon(wallets["m1"], "127.0.0.1", 70000)


def test_weights_need_a_permit_respect_the_rate_limit_and_drive_incentive(
    chain: LocalChain, clock: ManualClock, wallets: dict[str, Any]
) -> None:
    v1, v2, v3 = (wallets[name] for name in ("v1", "v2", "v3"))
    chain.register_wallet(v1, stake=600.0, validator_permit=True)  # uid 0
    chain.register_wallet(v2, stake=300.0, validator_permit=True)  # uid 1
    chain.register_wallet(v3, stake=100.0)  # uid 2, no permit
    m1 = chain.register_wallet(wallets["m1"])  # uid 3
    m2 = chain.register_wallet(wallets["m2"])  # uid 4
    with pytest.raises(NotPermitted):
        chain.set_weights(v3, {m1: 1.0}, version_key=1)
    with pytest.raises(OperatorError) as info:
        chain.set_weights(v1, {42: 1.0}, version_key=1)
    assert info.value.code == "chain.bad_weights"
    with pytest.raises(OperatorError):
        chain.set_weights(v1, {m1: -1.0}, version_key=1)

    clock.advance_blocks(1)
    assert chain.set_weights(v1, {m1: 3.0, m2: 1.0}, version_key=7) == 1
    assert chain.set_weights(v2, {m1: 1.0, m2: 3.0}, version_key=7) == 1
    assert chain.weights()[hotkey_ss58(v1)].weights == {m1: 0.75, m2: 0.25}
    assert chain.blocks_since_last_update(hotkey_ss58(v1)) == 0
    assert chain.blocks_since_last_update(hotkey_ss58(v3)) is None
    graph = chain.metagraph()  # LastUpdate travels with the metagraph, like on the real chain
    assert (
        graph.neuron(hotkey_ss58(v1)).last_update == 1
        and graph.blocks_since_last_update(hotkey_ss58(v1)) == 0
    )
    assert graph.hyperparams.tempo == 10 and graph.hyperparams.weights_rate_limit == 5
    assert graph.hyperparams.weights_version_key == 0 and graph.owner_hotkey is None
    clock.advance_blocks(4)
    with pytest.raises(RateLimited) as limited:
        chain.set_weights(v1, {m1: 1.0}, version_key=7)
    assert limited.value.retry_after_blocks == 1

    # Consensus: c_m1 = 0.75 (v1 alone holds 60% > 50%), c_m2 = 0.25.
    # ranks: m1 = 600*0.75 + 300*0.25 = 525; m2 = 600*0.25 + 300*0.25 = 225; total 750.
    incentives = chain.incentives()
    assert incentives[m1] == pytest.approx(525 / 750)
    assert incentives[m2] == pytest.approx(225 / 750)
    assert incentives[0] == incentives[1] == incentives[2] == 0.0

    state = chain.state()
    json.dumps(state)  # plain data for `prism chain show --json`
    assert {n["uid"]: n["incentive"] for n in state["neurons"]}[m1] == pytest.approx(0.7)


def test_concurrent_processes_register_without_uid_collisions(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    LocalChain.create(path, SubnetParams(netuid=1), block_time_s=0.2)
    script = textwrap.dedent(
        """
        import sys
        from prism.chain.local import LocalChain
        chain = LocalChain(sys.argv[1], 1)
        for i in range(15):
            chain.register(f"hotkey-{sys.argv[2]}-{i}", f"coldkey-{sys.argv[2]}")
        """
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", script, str(path), tag], stderr=subprocess.PIPE)
        for tag in "ab"
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err.decode()
    graph = LocalChain(path, 1).metagraph()
    assert [n.uid for n in graph.neurons] == list(range(30))
    assert len({n.hotkey for n in graph.neurons}) == 30


def test_subnet_capacity_is_enforced(tmp_path: Path) -> None:
    chain = LocalChain.create(tmp_path / "small.db", SubnetParams(netuid=1, max_uids=2))
    chain.register("h1", "c")
    chain.register("h2", "c")
    with pytest.raises(OperatorError) as info:
        chain.register("h3", "c")
    assert info.value.code == "chain.subnet_full"


def test_block_hashes_are_unpredictable_chained_and_shared(tmp_path: Path, clock: ManualClock) -> None:
    path = tmp_path / "hashes.db"
    chain = LocalChain.create(path, SubnetParams(netuid=1), block_time_s=1.0, clock=clock)
    with pytest.raises(BlockUnavailable) as future:
        chain.block_hash(1)  # the chain is at block 0: block 1 has no hash yet
    assert future.value.code == "chain.block_unavailable"
    clock.advance_blocks(5)
    late = chain.block_hash(5)
    assert late.startswith("0x") and len(late) == 66 and chain.block_hash(5) == late
    assert len({chain.block_hash(b) for b in range(6)}) == 6
    # H(b) = sha256(seed || b || H(b-1)), the seed made with the file.
    import hashlib
    import sqlite3

    with sqlite3.connect(path) as conn:
        seed = bytes.fromhex(conn.execute("SELECT value FROM meta WHERE key='block_hash_seed'").fetchone()[0])
    expected = hashlib.sha256(
        seed + (5).to_bytes(8, "big") + bytes.fromhex(chain.block_hash(4)[2:])
    ).hexdigest()
    assert late == "0x" + expected
    # Another process opening the same file sees the same hashes; another chain file does not.
    script = "import sys; from prism.chain.local import LocalChain; print(LocalChain(sys.argv[1], 1).block_hash(3))"
    other = subprocess.run(
        [sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=60
    )
    assert other.returncode == 0, other.stderr
    assert other.stdout.strip() == chain.block_hash(3)
    twin = LocalChain.create(tmp_path / "twin.db", SubnetParams(netuid=1), block_time_s=1.0, clock=clock)
    clock.advance_blocks(3)
    assert twin.block_hash(3) != chain.block_hash(3)


def test_a_chain_file_from_before_block_hashes_gets_a_seed(tmp_path: Path, clock: ManualClock) -> None:
    import sqlite3

    path = tmp_path / "old.db"
    LocalChain.create(path, SubnetParams(netuid=1), block_time_s=1.0, clock=clock).close()
    with sqlite3.connect(path) as conn:  # what a file made by an earlier PRISM looks like
        conn.execute("DELETE FROM meta WHERE key='block_hash_seed'")
        conn.execute("DROP TABLE block_hashes")
    clock.advance_blocks(2)
    chain = LocalChain(path, 1, clock=clock)
    first = chain.block_hash(2)
    assert LocalChain(path, 1, clock=clock).block_hash(2) == first
