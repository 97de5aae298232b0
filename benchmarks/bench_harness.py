"""Harness overhead benchmark: the runner's training loop against a bare PyTorch loop.

Both loops train the same model (examples/gpt at the local_cpu_smoke regime, identical init) on
the same batches in the same process with the same thread count. The harness loop is
``prism.evaluator.loop.train_loop`` as the runner calls it in the reference recipe: the online
probe taken from the update's own loss (no second forward), lr schedule, grad clip, deferred
finiteness checks, probe.jsonl writes, strict deterministic algorithms. The bare loop is
forward, cross-entropy, backward, clip, AdamW step. Runs alternate (bare, harness, ...) so
machine load hits both alike; the best of N repeats is compared (the median ratio is printed too).

Also measured: the training feed's throughput (batches the host streams over a Unix socket to a
separate reading process) against what the loop consumes, so the feed's cost is known too.

    python benchmarks/bench_harness.py [--steps 60] [--repeats 4] [--threads 1]

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from prism.data import TrainLoader, ensure_offline_corpus
from prism.evaluator.context import ContextValues, make_context
from prism.evaluator.interface import TrainingRecipe
from prism.evaluator.loading import load_submission_modules
from prism.evaluator.loop import Dist, LoopHooks, LoopParts, ProbeWriter, make_harness_optimizer, train_loop
from prism.evaluator.recipe import plan_training
from prism.profiles import load_profile
from prism.submission import load_submission_bytes, pack_directory

ROOT = Path(__file__).resolve().parents[1]


def _batches(data_dir: Path, batch: int, seq_len: int, steps: int) -> list[tuple[np.ndarray, np.ndarray]]:
    loader = iter(TrainLoader(data_dir, batch_size=batch, seq_len=seq_len, seed=1, check_hashes=False))
    return [(b.tokens, np.asarray(b.window_bytes)) for b in (next(loader) for _ in range(steps))]


def _fresh_model(build, ctx) -> torch.nn.Module:
    torch.manual_seed(0)
    return build(ctx).train()


def bare_loop(model: torch.nn.Module, batches, lr: float, vocab: int) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
    start = time.perf_counter()
    for tokens, _ in batches:
        tokens = torch.from_numpy(tokens)
        x, y = tokens[:, :-1], tokens[:, 1:]
        loss = F.cross_entropy(model(x).reshape(-1, vocab), y.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    float(loss.detach())  # as the harness, read the last loss
    return time.perf_counter() - start


def harness_loop(model: torch.nn.Module, batches, regime, lr_window, ctx, out: Path) -> float:
    plan = plan_training(TrainingRecipe(learning_rate=1e-3), regime, lr_window=lr_window, recipe_mode="reference", world_size=1, custom_optimizer=False)
    plan = plan.model_copy(update={"total_steps": len(batches)})
    parts = LoopParts(
        model=model, train_model=model, optimizer=make_harness_optimizer(model, plan.recipe), hooks=LoopHooks(inference={}),
        ctx=ctx, plan=plan, harness_schedule=True, probe=ProbeWriter(out / "probe.jsonl", Dist()), probe_from_train_loss=True,
        probe_every=1, probe_fraction=0.25, device=torch.device("cpu"),
    )  # fmt: skip
    torch.use_deterministic_algorithms(True)
    start = time.perf_counter()
    train_loop(parts, iter(batches), flush_every=50)
    elapsed = time.perf_counter() - start
    torch.use_deterministic_algorithms(False)
    return elapsed


FEED_READER = """
import sys, time
from prism.evaluator.feed_client import FeedClient
from prism.evaluator.interface import TrainingRecipe
client = FeedClient(sys.argv[1]); client.hello(0, 1)
plan = client.plan(TrainingRecipe(), custom_optimizer=False)
start = time.perf_counter(); n = sum(1 for _ in client.batches(plan))
print(n / (time.perf_counter() - start))
"""


def feed_throughput(data_dir: Path, regime, lr_window, steps: int) -> float:
    """Batches per second the host's feed delivers to a separate process (its reader side only)."""
    from prism.evaluator.feed import TrainingFeed
    from prism.evaluator.train_phase import host_batches

    def make_plan(declared, custom):
        plan = plan_training(declared, regime, lr_window=lr_window, recipe_mode="reference", world_size=1, custom_optimizer=False)
        return plan.model_copy(update={"total_steps": steps})

    with tempfile.TemporaryDirectory(prefix="bench-feed-") as tmp:
        feed = TrainingFeed(Path(tmp), world_size=1, deadline=time.monotonic() + 600, make_plan=make_plan,
                            batches=lambda plan, rank: host_batches(data_dir, plan, rank, seed=1), vocab_size=257)  # fmt: skip
        with feed:
            out = subprocess.run([sys.executable, "-c", FEED_READER, str(feed.path)], capture_output=True, text=True, check=True)
    return float(out.stdout.strip())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    profile = load_profile("local_cpu_smoke")
    regime = profile.regimes[0]
    data_dir = Path.home() / ".cache" / "prism" / "data" / "offline-byte"
    ensure_offline_corpus(data_dir, tokenizer="byte")
    values = ContextValues(vocab_size=257, sequence_length=regime.sequence_length, max_layers=regime.max_layers, max_parameters=regime.max_parameters, seed=1)
    zip_bytes = pack_directory(ROOT / "examples" / "gpt")
    with tempfile.TemporaryDirectory() as tmp:
        submission = load_submission_bytes(zip_bytes, filename="gpt.zip")
        submission.write_to(Path(tmp) / "s")
        loaded = load_submission_modules(Path(tmp) / "s", submission.architecture_entrypoint, submission.training_entrypoint)
        ctx = make_context(values)
        build = loaded.architecture.build_model
        batches = _batches(data_dir, regime.batch_size, regime.sequence_length, args.steps)
        bare_loop(_fresh_model(build, ctx), batches[:5], 1e-3, 257)  # warm-up (allocator, kernels)
        bare, harness = [], []
        for repeat in range(args.repeats):
            order = ("bare", "harness") if repeat % 2 == 0 else ("harness", "bare")
            for which in order:
                if which == "bare":
                    bare.append(bare_loop(_fresh_model(build, ctx), batches, 1e-3, 257))
                else:
                    harness.append(harness_loop(_fresh_model(build, ctx), batches, regime, profile.lr_window, ctx, Path(tmp)))
        params = sum(p.numel() for p in _fresh_model(build, ctx).parameters())
    feed_bps = feed_throughput(data_dir, regime, profile.lr_window, steps=2000)
    tokens = args.steps * regime.batch_size * regime.sequence_length
    bare_tps, harness_tps = tokens / min(bare), tokens / min(harness)
    print(json.dumps({
        "model": "examples/gpt @ local_cpu_smoke", "parameters": params, "threads": args.threads, "steps": args.steps,
        "batch": [regime.batch_size, regime.sequence_length], "probe_source": "train_loss",
        "bare_tokens_per_s": round(bare_tps, 1), "harness_tokens_per_s": round(harness_tps, 1),
        "harness_over_bare": round(harness_tps / bare_tps, 3),
        "harness_over_bare_median": round(statistics.median(bare) / statistics.median(harness), 3),
        "bare_s": [round(x, 3) for x in bare], "harness_s": [round(x, 3) for x in harness],
        "feed_batches_per_s": round(feed_bps, 1), "loop_steps_per_s": round(args.steps / min(harness), 1),
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
