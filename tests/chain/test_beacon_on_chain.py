"""A miner cannot know its runs' seeds when it commits: they come from a later block's hash.

On the embedded chain: the commitment lands in block b; the beacon block b + 2 does not exist
yet, so its hash (and with it every seed) cannot be read; once it exists every reader gets the
same hash and the same seeds, and another chain's later blocks give other seeds for the same
commitment.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from prism.beacon import BEACON_DELAY_BLOCKS, beacon_block, cell_seeds
from prism.chain.commitments import format_commitment
from prism.chain.errors import BlockUnavailable
from prism.chain.local import LocalChain, SubnetParams
from prism.chain.wallets import create_wallet

ZIP = "ab" * 32


def _chain(tmp_path: Path, name: str, now: list[float]) -> tuple[LocalChain, object]:
    chain = LocalChain.create(tmp_path / f"{name}.sqlite3", SubnetParams(netuid=1, commitment_rate_limit=0),
                              block_time_s=1.0, clock=lambda: now[0])  # fmt: skip
    wallet = create_wallet(f"miner-{name}", "default", tmp_path / "wallets")
    chain.register_wallet(wallet)
    return chain, wallet


def test_seeds_depend_on_a_block_after_the_commitment(tmp_path: Path) -> None:
    now = [1000.0]
    chain, wallet = _chain(tmp_path, "a", now)
    landed = chain.commit(wallet, format_commitment(ZIP))
    assert next(iter(chain.commitments().values())).block == landed
    with pytest.raises(BlockUnavailable):  # at commit time the beacon block does not exist
        chain.block_hash(beacon_block(landed))
    now[0] += BEACON_DELAY_BLOCKS
    beacon = chain.block_hash(beacon_block(landed))
    reader = LocalChain(tmp_path / "a.sqlite3", 1, clock=lambda: now[0])  # another validator's view
    assert reader.block_hash(beacon_block(landed)) == beacon
    seeds = [cell_seeds(beacon, ZIP, "p20m", i) for i in range(3)]
    assert len({(s.train_seed, s.heldout_seed) for s in seeds}) == 3  # one pair per seed index
    # the same commitment on another chain: other later blocks, other seeds
    other_now = [1000.0]
    other, other_wallet = _chain(tmp_path, "b", other_now)
    other_landed = other.commit(other_wallet, format_commitment(ZIP))
    other_now[0] += BEACON_DELAY_BLOCKS
    other_beacon = other.block_hash(beacon_block(other_landed))
    assert other_beacon != beacon
    assert cell_seeds(other_beacon, ZIP, "p20m", 0) != seeds[0]
