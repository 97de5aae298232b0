"""What honest models "know" about English before any training: the room a knowledge-at-init
check would leave a smuggler (docs/security.md, class 6, "A check of the untrained program").

A check that runs the recorded program on weights committed before the first batch, where no
submission code runs, would see a table shipped in the code (it answers whatever the weights).
It needs a threshold that no honest untrained model crosses. This script measures the two
statistics such a check could use, on real English windows, for each example at init
(``local_cpu_smoke`` regime, seeds 0 and 1):

* ``ce_below_uniform``: ln V minus the mean cross-entropy of the untrained model (nats);
* ``advantage``: the mean over positions of CE(window byte histogram) - CE(target), i.e.
  ``z[target] - sum_v h(v) z[v]``: what the model predicts about the next byte beyond the
  window's own byte frequencies (0 for any predictor that ignores the context).

Both are above zero for every honest design (tied or residual embeddings favour bytes already in
the context), so a threshold above them leaves that much room (see the docs for what it buys).

    python benchmarks/bench_init_knowledge.py [--windows 32]

Prints one JSON object. Uses ../shared/data/offline-english-fallback/validation.parquet.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

from prism.evaluator.context import make_context

ROOT = Path(__file__).resolve().parents[1]
TEXT = ROOT.parent / "shared" / "data" / "offline-english-fallback" / "validation.parquet"
EXAMPLES = ("gpt", "mixer", "recurrence", "tiny")
SEQ_LEN, VOCAB = 64, 256
#: The examples' sibling modules, dropped between examples so each imports its own.
SIBLINGS = ("model", "config", "layers", "train", "mixing", "sizing", "scan")


def english_windows(count: int, seed: int = 0) -> torch.Tensor:
    """(count, T + 1) byte windows at random offsets of the fallback validation text."""
    import pyarrow.parquet as pq

    texts = pq.read_table(TEXT, columns=["text"]).column("text").to_pylist()[:400]
    data = np.frombuffer(" ".join(texts).encode("utf-8"), dtype=np.uint8)
    starts = np.random.default_rng(seed).integers(0, data.size - SEQ_LEN - 1, count)
    return torch.from_numpy(np.stack([data[s : s + SEQ_LEN + 1] for s in starts]).astype(np.int64))


def statistics(model: torch.nn.Module, windows: torch.Tensor) -> dict[str, float]:
    advantages, losses = [], []
    model.eval()
    with torch.no_grad():
        for window in windows:
            log_p = torch.log_softmax(model(window[None, :-1])[0].double(), dim=-1)  # (T, V)
            targets = window[1:]
            histogram = torch.bincount(targets, minlength=VOCAB).double() / targets.numel()
            loss = -log_p.gather(-1, targets[:, None]).squeeze(-1)  # (T,)
            advantages.append((-(log_p * histogram).sum(-1) - loss).numpy())
            losses.append(loss.numpy())
    advantage, loss = np.concatenate(advantages), np.concatenate(losses)
    return {
        "ce_below_uniform": round(math.log(VOCAB) - float(loss.mean()), 4),
        "advantage": round(float(advantage.mean()), 4),
        "advantage_se": round(float(advantage.std() / math.sqrt(advantage.size)), 4),
    }


def build_example(name: str, seed: int) -> torch.nn.Module:
    for module in SIBLINGS:
        sys.modules.pop(module, None)
    sys.path.insert(0, str(ROOT / "examples" / name / "src"))
    try:
        model = importlib.import_module("model")
        ctx = make_context(
            {"vocab_size": VOCAB, "sequence_length": SEQ_LEN, "max_parameters": 400_000, "max_layers": 8}
        )
        torch.manual_seed(seed)
        return model.build_model(ctx)
    finally:
        sys.path.pop(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(1)
    windows = english_windows(args.windows)
    results = {f"{name}@seed{seed}": statistics(build_example(name, seed), windows)
               for name in EXAMPLES for seed in (0, 1)}  # fmt: skip
    print(
        json.dumps(
            {"windows": args.windows, "positions": args.windows * SEQ_LEN, "models": results}, indent=2
        )
    )


if __name__ == "__main__":
    main()
