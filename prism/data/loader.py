"""Read prepared shards for training and held-out evaluation (numpy only, no torch).

Windows are ``T + 1`` consecutive tokens of one shard (inputs ``[:-1]``, targets ``[1:]``); a
window never spans two shards. Gathering is one fancy-indexing call per shard touched, so a
batch costs a handful of numpy operations whatever its size. ``target_bytes`` is the sum of the
stored UTF-8 byte lengths of the target tokens: the denominator of bits-per-byte.

Training: each epoch lays a grid of disjoint windows over every shard (the grid's phase is
drawn per epoch, so later epochs see shifted windows), shuffles all windows with
``np.random.default_rng([seed, epoch])`` and deals consecutive groups of ``B * world_size``
windows to the ranks: rank ``r`` takes the ``r``-th block of ``B``. Ranks therefore never share
a window within an epoch, and the stream is a pure function of (data, seed, rank, world size).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from prism.data.errors import DataError, SplitTooSmall
from prism.data.manifest import DataManifest
from prism.data.shards import HEADER_SIZE, read_shard_header, verify_data_dir

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Batch:
    tokens: np.ndarray  # int64 (B, T + 1)
    target_bytes: int  # UTF-8 bytes covered by tokens[:, 1:]
    window_bytes: np.ndarray  # int64 (B,), per-window share of target_bytes


class _MappedShard:
    """Memory-mapped token ids and byte lengths of one verified shard."""

    def __init__(self, path: Path) -> None:
        header = read_shard_header(path)
        self.path = path
        self.size = header.tokens
        self.tokens = np.memmap(
            path, dtype=header.dtype, mode="r", offset=HEADER_SIZE, shape=(header.tokens,)
        )
        self.lengths = np.memmap(
            path,
            dtype=np.uint8,
            mode="r",
            offset=HEADER_SIZE + header.tokens * header.itemsize,
            shape=(header.tokens,),
        )


class _SplitWindows:
    """All shards of one split, and the vectorized gather of windows from them."""

    def __init__(
        self,
        data_dir: Path,
        split: str,
        *,
        expected_tokenizer_fingerprint: str | None,
        check_hashes: bool,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.manifest: DataManifest = verify_data_dir(
            self.data_dir,
            check_hashes=check_hashes,
            splits=(split,),
            expected_tokenizer_fingerprint=expected_tokenizer_fingerprint,
        )
        info = self.manifest.splits.get(split)
        if info is None or not info.shards:
            raise SplitTooSmall(f"{self.data_dir} has no tokens in split {split!r}")
        self.split = split
        self.shards = [_MappedShard(self.data_dir / entry.name) for entry in info.shards]
        self.sizes = np.array([s.size for s in self.shards], dtype=np.int64)

    def gather(
        self, shard_ids: np.ndarray, offsets: np.ndarray, seq_len: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Windows ``shard[offset : offset + T + 1]`` as int64 (N, T+1) and target bytes (N,)."""
        n = shard_ids.size
        tokens = np.empty((n, seq_len + 1), dtype=np.int64)
        window_bytes = np.empty(n, dtype=np.int64)
        span = np.arange(seq_len + 1, dtype=np.int64)
        for shard_id in np.unique(shard_ids):
            rows = np.flatnonzero(shard_ids == shard_id)
            index = offsets[rows, None] + span  # (rows, T+1)
            shard = self.shards[int(shard_id)]
            tokens[rows] = shard.tokens[index]
            window_bytes[rows] = shard.lengths[index[:, 1:]].sum(axis=1, dtype=np.int64)
        return tokens, window_bytes


def _check_window_args(seq_len: int, count: int, what: str) -> None:
    if seq_len < 1:
        raise DataError(f"seq_len must be >= 1, got {seq_len}", code="data.bad_option")
    if count < 1:
        raise DataError(f"{what} must be >= 1, got {count}", code="data.bad_option")


class TrainLoader:
    """Endless, deterministic ``Batch`` stream of one rank (see the module docstring)."""

    def __init__(
        self,
        data_dir: Path,
        *,
        split: str = "train",
        batch_size: int,
        seq_len: int,
        rank: int = 0,
        world_size: int = 1,
        seed: int,
        expected_tokenizer_fingerprint: str | None = None,
        check_hashes: bool = True,
        start_step: int = 0,
    ) -> None:
        _check_window_args(seq_len, batch_size, "batch_size")
        if not 0 <= rank < world_size:
            raise DataError(f"rank {rank} outside world size {world_size}", code="data.bad_option")
        self.windows = _SplitWindows(
            data_dir,
            split,
            expected_tokenizer_fingerprint=expected_tokenizer_fingerprint,
            check_hashes=check_hashes,
        )
        self.manifest = self.windows.manifest
        self.batch_size = batch_size
        self.seq_len = seq_len
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.start_step = start_step
        global_batch = batch_size * world_size
        # Phase 0 gives the fewest windows any epoch can have; every epoch must fill one step.
        min_windows = int((self.windows.sizes // (seq_len + 1)).sum())
        if min_windows < global_batch:
            raise SplitTooSmall(
                f"split {split!r} of {data_dir} has {int(self.windows.sizes.sum())} tokens: "
                f"{min_windows} windows of {seq_len + 1} tokens, fewer than one global batch "
                f"({batch_size} x {world_size} ranks)"
            )

    def _epoch_windows(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """Shuffled (shard id, offset) of every disjoint window of this epoch's grid."""
        rng = np.random.default_rng([self.seed, epoch])
        width = self.seq_len + 1
        phase = int(rng.integers(0, width)) if epoch > 0 else 0
        counts = ((self.windows.sizes - phase) // width).clip(min=0)
        # The phase must not leave an epoch without a full global batch.
        if counts.sum() < self.batch_size * self.world_size:
            phase, counts = 0, (self.windows.sizes // width)
        # int32 shard ids: the official slice has ~17 M windows per epoch at T=512, per rank.
        shard_ids = np.repeat(np.arange(counts.size, dtype=np.int32), counts)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        within = np.arange(shard_ids.size) - np.repeat(starts, counts)
        offsets = phase + within * width
        order = rng.permutation(shard_ids.size)
        return shard_ids[order], offsets[order]

    def steps_per_epoch(self, epoch: int = 0) -> int:
        shard_ids, _ = self._epoch_windows(epoch)
        return shard_ids.size // (self.batch_size * self.world_size)

    def __iter__(self) -> Iterator[Batch]:
        step = 0
        epoch = 0
        global_batch = self.batch_size * self.world_size
        while True:
            shard_ids, offsets = self._epoch_windows(epoch)
            steps = shard_ids.size // global_batch
            if step + steps <= self.start_step:  # resume: skip whole epochs without gathering
                step += steps
                epoch += 1
                continue
            for local in range(max(0, self.start_step - step), steps):
                begin = local * global_batch + self.rank * self.batch_size
                rows = slice(begin, begin + self.batch_size)
                tokens, window_bytes = self.windows.gather(shard_ids[rows], offsets[rows], self.seq_len)
                yield Batch(tokens=tokens, target_bytes=int(window_bytes.sum()), window_bytes=window_bytes)
            step += steps
            epoch += 1


def heldout_windows(
    data_dir: Path,
    *,
    split: str = "val",
    n_windows: int,
    seq_len: int,
    seed: int,
    expected_tokenizer_fingerprint: str | None = None,
    check_hashes: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """``n_windows`` distinct, non-overlapping held-out windows chosen by ``seed``.

    Returns tokens int64 (N, T+1) and the UTF-8 bytes covered by each window's targets (N,).
    Windows come from the disjoint grid of the split (no two overlap, so no text is counted
    twice); each validator draws its own set by using its own seed.
    """
    _check_window_args(seq_len, n_windows, "n_windows")
    windows = _SplitWindows(
        data_dir,
        split,
        expected_tokenizer_fingerprint=expected_tokenizer_fingerprint,
        check_hashes=check_hashes,
    )
    width = seq_len + 1
    counts = windows.sizes // width
    available = int(counts.sum())
    if available < n_windows:
        raise SplitTooSmall(
            f"split {split!r} of {data_dir} holds {int(windows.sizes.sum())} tokens = {available} disjoint "
            f"windows of {width} tokens; {n_windows} were asked for"
        )
    rng = np.random.default_rng([seed, 0x5EED])
    chosen = np.sort(rng.choice(available, size=n_windows, replace=False))
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    shard_ids = np.searchsorted(starts, chosen, side="right") - 1
    # side="right" maps an index to the last shard starting at or before it, which skips
    # shards too short to hold a window (they share their start with the next shard).
    offsets = (chosen - starts[shard_ids]) * width
    tokens, window_bytes = windows.gather(shard_ids, offsets, seq_len)
    return tokens, window_bytes
