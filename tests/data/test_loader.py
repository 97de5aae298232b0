"""Loader: (B, T+1) windows, target bytes for bpb, determinism, disjoint ranks, held-out draws."""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from prism.data.errors import SplitTooSmall
from prism.data.loader import TrainLoader, heldout_windows
from prism.data.prepare import prepare_dataset
from prism.data.sources import LocalFileSource
from prism.data.tokenizers import get_tokenizer

REPO = Path(__file__).resolve().parents[2]


def _window_keys(tokens: np.ndarray) -> set[bytes]:
    return {row.tobytes() for row in tokens}


@pytest.fixture(scope="module")
def random_dir(tmp_path_factory: pytest.TempPathFactory, write_parquet) -> Path:
    """Random letters: any two windows of 30+ bytes at different places differ in content, so
    disjointness can be checked on the tokens themselves."""
    rng = np.random.default_rng(0)
    letters = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz ", dtype=np.uint8)
    rows = [
        {"id": f"r{i}", "text": bytes(rng.choice(letters, size=int(rng.integers(200, 900)))).decode()}
        for i in range(600)
    ]
    root = tmp_path_factory.mktemp("random")
    source = LocalFileSource(write_parquet(root / "r.parquet", rows), fmt="parquet")
    prepare_dataset(source, "byte", root / "out", shard_tokens=16384)
    return root / "out"


def test_batches_have_the_promised_shape_and_bytes(byte_dir: Path, corpus_rows) -> None:
    batch = next(iter(TrainLoader(byte_dir, batch_size=8, seq_len=32, seed=3)))
    assert batch.tokens.shape == (8, 33) and batch.tokens.dtype == np.int64
    # Byte tokenizer: every non-EOS target covers exactly one byte.
    assert batch.target_bytes == int(np.count_nonzero(batch.tokens[:, 1:] != 256))
    assert batch.window_bytes.sum() == batch.target_bytes
    texts = [str(r["text"]).encode() for r in corpus_rows]
    for row in batch.tokens:  # every window is real, contiguous corpus text (compared as bytes:
        # a window edge may cut a multi-byte character)
        pieces = [bytes(p[p != 256].astype(np.uint8)) for p in np.split(row, np.flatnonzero(row == 256))]
        assert all(any(piece in text for text in texts) for piece in pieces if piece)


def test_gpt2_target_bytes_match_the_token_bytes(tmp_path: Path, corpus_rows, write_parquet) -> None:
    source = LocalFileSource(write_parquet(tmp_path / "r.parquet", corpus_rows[:120]), fmt="parquet")
    prepare_dataset(source, "gpt2", tmp_path / "gpt2", shard_tokens=4096)
    tok = get_tokenizer("gpt2")
    loader = TrainLoader(
        tmp_path / "gpt2", batch_size=4, seq_len=24, seed=0, expected_tokenizer_fingerprint=tok.fingerprint
    )
    batch = next(iter(loader))
    encoding = tok._encoding  # tiktoken's own byte table, an independent route to the lengths
    expected = [
        sum(len(encoding.decode_single_token_bytes(int(t))) for t in row[1:] if t != tok.eos_id)
        for row in batch.tokens
    ]
    assert batch.window_bytes.tolist() == expected


def test_stream_is_deterministic_per_seed(byte_dir: Path) -> None:
    def first(seed: int, n: int = 5) -> list[np.ndarray]:
        return [
            b.tokens for b in itertools.islice(TrainLoader(byte_dir, batch_size=4, seq_len=16, seed=seed), n)
        ]

    a, b, c = first(1), first(1), first(2)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def test_ranks_get_disjoint_windows_covering_the_epoch(random_dir: Path) -> None:
    kwargs = dict(batch_size=4, seq_len=64, seed=11, world_size=2)
    loaders = [TrainLoader(random_dir, rank=r, **kwargs) for r in range(2)]
    steps = loaders[0].steps_per_epoch()
    assert steps > 10
    per_rank = [np.concatenate([b.tokens for b in itertools.islice(iter(ld), steps)]) for ld in loaders]
    keys = [_window_keys(t) for t in per_rank]
    assert len(keys[0]) == steps * 4 and len(keys[1]) == steps * 4  # no window twice in an epoch
    assert not keys[0] & keys[1]
    # The epoch ends and the stream goes on with a new shuffle (and a shifted window grid).
    after = list(itertools.islice(iter(loaders[0]), steps + 3))[steps:]
    assert len(after) == 3 and after[0].tokens.shape == (4, 65)


def test_start_step_resumes_the_same_stream(byte_dir: Path) -> None:
    kwargs = dict(batch_size=4, seq_len=64, seed=5)
    loader = TrainLoader(byte_dir, **kwargs)
    steps = loader.steps_per_epoch()
    full = [b.tokens for b in itertools.islice(loader, steps + 4)]
    resumed = [b.tokens for b in itertools.islice(TrainLoader(byte_dir, start_step=steps + 1, **kwargs), 3)]
    assert all(np.array_equal(x, y) for x, y in zip(full[steps + 1 :], resumed, strict=True))


def test_heldout_windows_are_seeded_distinct_and_bounded(random_dir: Path) -> None:
    tokens, nbytes = heldout_windows(random_dir, n_windows=16, seq_len=32, seed=4242)
    again, _ = heldout_windows(random_dir, n_windows=16, seq_len=32, seed=4242)
    other, _ = heldout_windows(random_dir, n_windows=16, seq_len=32, seed=7)
    assert tokens.shape == (16, 33) and tokens.dtype == np.int64 and nbytes.shape == (16,)
    assert np.array_equal(tokens, again) and not np.array_equal(tokens, other)
    assert len(_window_keys(tokens)) == 16
    assert nbytes.tolist() == [int(np.count_nonzero(row[1:] != 256)) for row in tokens]
    train = TrainLoader(random_dir, batch_size=64, seq_len=32, seed=0)
    train_keys = _window_keys(np.concatenate([b.tokens for b in itertools.islice(train, 20)]))
    assert not _window_keys(tokens) & train_keys  # held-out text never appears in training windows


def test_too_little_data_is_a_clear_error(byte_dir: Path) -> None:
    with pytest.raises(SplitTooSmall, match="disjoint windows"):
        heldout_windows(byte_dir, n_windows=10_000, seq_len=512, seed=0)
    with pytest.raises(SplitTooSmall, match="fewer than one global batch"):
        TrainLoader(byte_dir, batch_size=4096, seq_len=256, seed=0)
    with pytest.raises(SplitTooSmall):
        TrainLoader(byte_dir, split="nonexistent", batch_size=1, seq_len=4, seed=0)


def test_data_package_does_not_import_torch() -> None:
    code = "import sys, prism.data, prism.data.loader; assert 'torch' not in sys.modules, 'torch imported'"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert done.returncode == 0, done.stderr
