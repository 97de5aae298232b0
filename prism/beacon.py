"""Randomness that decides scores comes from the chain (pure; no torch, no bittensor).

A submission's training seeds and held-out windows derive from a **beacon**: the hash of the
block ``BEACON_DELAY_BLOCKS`` after the block its commitment landed in, combined with the ZIP's
sha256, the regime and the seed index. Every validator reads the same block hash, so every
validator derives the same seeds; the miner cannot know them when it commits (the beacon block
does not exist yet), so it cannot grind a lucky initialisation or tune on the windows offline.

    seeds = cell_seeds(block_hash, zip_sha256, regime="p20m", seed_index=0)
    seeds.train_seed, seeds.heldout_seed     # 31-bit integers

``prism eval`` on a miner's machine keeps its explicit seeds (the profile's, or ``--seed``).
"""

from __future__ import annotations

import hashlib
import re

from pydantic import BaseModel, ConfigDict, Field

BEACON_SCHEME = "prism-beacon-v1"
#: The beacon block is this many blocks after the commitment's block (one block is ~12 s).
BEACON_DELAY_BLOCKS = 2
_HASH = re.compile(r"^(0x)?[0-9a-fA-F]{64}$")


class CellSeeds(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    train_seed: int = Field(ge=0)
    heldout_seed: int = Field(ge=0)


class BeaconRef(BaseModel):
    """Which block's hash a run's seeds came from (recorded in the run manifest)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    scheme: str = BEACON_SCHEME
    block: int = Field(ge=0)
    block_hash: str
    seed_index: int = Field(ge=0)


def beacon_block(commit_block: int) -> int:
    return commit_block + BEACON_DELAY_BLOCKS


def _normalise(block_hash: str) -> str:
    if not _HASH.match(block_hash):
        raise ValueError(f"not a 32-byte block hash: {block_hash!r}")
    return block_hash.lower().removeprefix("0x")


def cell_seeds(block_hash: str, zip_sha256: str, regime: str, seed_index: int) -> CellSeeds:
    """The training and held-out seeds of one regime x seed-index cell of one submission."""
    digest = hashlib.sha256(
        f"{BEACON_SCHEME}|{_normalise(block_hash)}|{zip_sha256}|{regime}|{seed_index}".encode()
    ).digest()
    return CellSeeds(
        train_seed=int.from_bytes(digest[:4], "big") & 0x7FFFFFFF,
        heldout_seed=int.from_bytes(digest[4:8], "big") & 0x7FFFFFFF,
    )


__all__ = ["BEACON_DELAY_BLOCKS", "BEACON_SCHEME", "BeaconRef", "CellSeeds", "beacon_block", "cell_seeds"]
