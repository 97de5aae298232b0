"""Data-plane benchmark: prepare throughput, loader throughput vs. what training consumes.

    python benchmarks/bench_data.py [--workers 2] [--train-steps 20] [--out-dir /tmp/prism-bench-data]

Prints one JSON object. Uses ../shared/data/offline-english-fallback/ (parquet) when present,
else the offline docstring corpus. Targets (issue 3): loader >= 50x the tokens/s a tiny model
trains on (2-layer GPT, B=16, T=64, CPU), and prepare >= 2M GPT-2 tokens/s on 2 cores.
Not a test: numbers depend on the machine and its load (recorded in docs/data.md).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

from prism.data.loader import TrainLoader, heldout_windows
from prism.data.prepare import prepare_dataset
from prism.data.sources import LocalFileSource, OfflineDocstringSource
from prism.data.tokenizers import get_tokenizer

FALLBACK = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "offline-english-fallback"


def bench_tokenizer_only(texts: list[str], workers: int) -> float:
    """Pure tokenization rate (tokens/s) of tiktoken over the same texts, one process."""
    tok = get_tokenizer("gpt2")
    started = time.perf_counter()
    total = sum(a.size for a in tok.encode_batch(texts))
    return total / (time.perf_counter() - started)


def bench_prepare(out_dir: Path, workers: int) -> tuple[dict, Path]:
    if FALLBACK.is_dir():
        source = LocalFileSource(FALLBACK, fmt="parquet")
        label = "offline-english-fallback (parquet, 11 MB)"
    else:
        source = OfflineDocstringSource(workers=workers)
        label = "offline docstring corpus"
    docs = list(source.documents())  # read once so prepare times tokenization, not parquet I/O
    texts = [d.text for d in docs]
    text_bytes = sum(len(t.encode("utf-8")) for t in texts)

    class InMemory:
        info = source.info

        def documents(self, skip: int = 0):
            return iter(docs[skip:])

    target = out_dir / "gpt2"
    shutil.rmtree(target, ignore_errors=True)
    get_tokenizer("gpt2")  # build the vocabulary outside the timed region
    started = time.perf_counter()
    manifest = prepare_dataset(InMemory(), "gpt2", target, workers=workers, shard_tokens=1 << 20)
    elapsed = time.perf_counter() - started
    tokens = sum(info.tokens for info in manifest.splits.values())
    return {
        "corpus": label,
        "text_bytes": text_bytes,
        "gpt2_tokens": tokens,
        "bytes_per_token": round(text_bytes / tokens, 3),
        "workers": workers,
        "prepare_seconds": round(elapsed, 2),
        "prepare_tokens_per_s": round(tokens / elapsed),
        "tokenizer_only_tokens_per_s_1_process": round(bench_tokenizer_only(texts[:200], 1)),
    }, target


def bench_loader(data_dir: Path, batch_size: int, seq_len: int, batches: int) -> float:
    loader = TrainLoader(data_dir, batch_size=batch_size, seq_len=seq_len, seed=0)
    it = iter(loader)
    next(it)
    started = time.perf_counter()
    n = sum(b.tokens[:, 1:].size for b in itertools.islice(it, batches))
    return n / (time.perf_counter() - started)


def bench_training(vocab_size: int, batch_size: int, seq_len: int, steps: int) -> tuple[float, int]:
    """Tokens/s a 2-layer tiny GPT consumes in training on this CPU (forward, backward, AdamW)."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    d_model = 128

    class TinyGPT(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(vocab_size, d_model)
            self.pos = nn.Parameter(torch.zeros(seq_len, d_model))
            layer = nn.TransformerEncoderLayer(
                d_model, 4, 4 * d_model, dropout=0.0, batch_first=True, norm_first=True
            )
            self.blocks = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
            self.head = nn.Linear(d_model, vocab_size, bias=False)
            self.mask = nn.Transformer.generate_square_subsequent_mask(seq_len)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.embed(x) + self.pos[: x.shape[1]]
            return self.head(self.blocks(h, mask=self.mask, is_causal=True))

    model = TinyGPT()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batch = torch.randint(0, vocab_size, (batch_size, seq_len + 1))

    def step() -> None:
        logits = model(batch[:, :-1])
        loss = nn.functional.cross_entropy(logits.reshape(-1, vocab_size), batch[:, 1:].reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(3):
        step()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    elapsed = time.perf_counter() - started
    return batch_size * seq_len * steps / elapsed, sum(p.numel() for p in model.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--train-steps", type=int, default=20)
    parser.add_argument("--loader-batches", type=int, default=2000)
    parser.add_argument("--out-dir", type=Path, default=None)
    args = parser.parse_args()
    out_dir = args.out_dir or Path(tempfile.mkdtemp(prefix="prism-bench-data-"))
    out_dir.mkdir(parents=True, exist_ok=True)

    prepare, data_dir = bench_prepare(out_dir, args.workers)
    loader_small = bench_loader(data_dir, 16, 64, args.loader_batches)
    loader_large = bench_loader(data_dir, 32, 1024, max(20, args.loader_batches // 50))
    started = time.perf_counter()
    heldout_windows(data_dir, n_windows=64, seq_len=1024, seed=4242)
    heldout_s = time.perf_counter() - started
    # The byte vocabulary is what CPU training (local_cpu_smoke) uses; the GPT-2 one is shown too.
    byte_tps, byte_params = bench_training(get_tokenizer("byte").vocab_size, 16, 64, args.train_steps)
    gpt2_tps, gpt2_params = bench_training(
        get_tokenizer("gpt2").vocab_size, 16, 64, max(3, args.train_steps // 4)
    )
    report = {
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "load_avg_1m": os.getloadavg()[0],
        },
        "prepare": prepare,
        "loader_tokens_per_s": {"B16_T64": round(loader_small), "B32_T1024": round(loader_large)},
        "heldout_windows_64x1025_seconds": round(heldout_s, 4),
        "tiny_gpt_training_cpu": {
            "B": 16,
            "T": 64,
            "byte_vocab": {"params": byte_params, "tokens_per_s": round(byte_tps)},
            "gpt2_vocab": {"params": gpt2_params, "tokens_per_s": round(gpt2_tps)},
        },
        "loader_vs_training_ratio": {
            "byte_vocab": round(loader_small / byte_tps, 1),
            "gpt2_vocab": round(loader_small / gpt2_tps, 1),
        },
        "targets": {"loader_vs_training_ratio": 50, "prepare_tokens_per_s": 2_000_000},
    }
    print(json.dumps(report, indent=2))
    if args.out_dir is None:
        shutil.rmtree(out_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
