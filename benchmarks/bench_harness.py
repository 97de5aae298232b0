"""Harness overhead benchmark: the runner's training loop against a bare PyTorch loop.

Both loops train the same model (examples/gpt at the local_cpu_smoke regime, identical init) on
the same batches in the same process with the same thread count. The harness loop is
``prism.evaluator.runner.train_loop`` as the runner calls it in reference mode: online probe on
a quarter of every batch (eval-mode forward through the inference path), lr schedule, grad clip,
deferred finiteness checks and probe.jsonl writes. The bare loop is forward, cross-entropy,
backward, clip, AdamW step. Runs alternate (bare, harness, bare, harness, ...) so machine load
hits both alike; the best of N repeats of each is compared (the median ratio is printed too).

Also measured: cold start from the ZIP bytes to the end of the first training step, in process,
excluding the torch import (intake, write-out, import, build, recipe, optimizer, data loader).

    python benchmarks/bench_harness.py [--steps 40] [--repeats 3] [--threads 1]

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from prism.data import TrainLoader, ensure_offline_corpus
from prism.evaluator import runner
from prism.evaluator.context import ContextValues, make_context
from prism.evaluator.interface import TrainingRecipe
from prism.evaluator.loading import load_submission_modules
from prism.profiles import load_profile
from prism.submission import load_submission_bytes, pack_directory

ROOT = Path(__file__).resolve().parents[1]


def _batches(data_dir: Path, batch: int, seq_len: int, steps: int) -> list[runner.TrainBatch]:
    loader = iter(TrainLoader(data_dir, batch_size=batch, seq_len=seq_len, seed=1, check_hashes=False))
    out = []
    for _ in range(steps):
        b = next(loader)
        out.append(runner.TrainBatch(tokens=torch.from_numpy(b.tokens), window_bytes=b.window_bytes))
    return out


def _fresh_model(build, ctx) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build(ctx)
    model.train()
    return model


def bare_loop(model: torch.nn.Module, batches: list[runner.TrainBatch], lr: float, vocab: int) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
    start = time.perf_counter()
    for batch in batches:
        x, y = batch.tokens[:, :-1], batch.tokens[:, 1:]
        loss = F.cross_entropy(model(x).reshape(-1, vocab), y.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    float(loss.detach())  # as the harness, read the last loss
    return time.perf_counter() - start


def harness_loop(model, batches, recipe: TrainingRecipe, ctx, probe_fraction: float, out: Path) -> float:
    opt = runner.make_harness_optimizer(model, recipe)
    probe = runner.ProbeWriter(out / "probe.jsonl", runner.Dist())
    start = time.perf_counter()
    runner.train_loop(
        model=model,
        train_model=model,
        optimizer=opt,
        scheduler=None,
        batches=iter(batches),
        hooks=runner.LoopHooks(inference={}),
        ctx=ctx,
        recipe=recipe,
        harness_schedule=True,
        total_steps=len(batches),
        start_step=0,
        global_batch=recipe.batch_size,
        probe_every=1,
        probe_fraction=probe_fraction,
        probe=probe,
        flush_every=50,
    )
    return time.perf_counter() - start


def cold_start(
    zip_bytes: bytes, data_dir: Path, ctx_values: ContextValues, recipe_batch: int
) -> dict[str, float]:
    """ZIP bytes -> first training step done, in process (torch already imported)."""
    t0 = time.perf_counter()
    submission = load_submission_bytes(zip_bytes, filename="gpt.zip")
    t_intake = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        submission.write_to(Path(tmp) / "s")
        loaded = load_submission_modules(
            Path(tmp) / "s", submission.architecture_entrypoint, submission.training_entrypoint
        )
        ctx = make_context(ctx_values)
        model, _, _ = runner.build_checked_model(loaded.architecture.build_model, ctx)
        recipe = loaded.architecture.get_recipe(ctx)
        opt = runner.make_harness_optimizer(model, recipe)
        t_build = time.perf_counter()
        loader = iter(
            TrainLoader(
                data_dir, batch_size=recipe_batch, seq_len=ctx.sequence_length, seed=1, check_hashes=False
            )
        )
        tokens = torch.from_numpy(next(loader).tokens)
        loss = F.cross_entropy(model(tokens[:, :-1]).reshape(-1, ctx.vocab_size), tokens[:, 1:].reshape(-1))
        loss.backward()
        opt.step()
        t_step = time.perf_counter()
    for name in ("model", "train", "config", "layers"):
        sys.modules.pop(name, None)
    return {
        "intake_s": t_intake - t0,
        "import_build_s": t_build - t_intake,
        "first_step_s": t_step - t_build,
        "total_s": t_step - t0,
    }


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
    values = ContextValues(
        vocab_size=257,
        sequence_length=regime.sequence_length,
        max_layers=regime.max_layers,
        max_parameters=regime.max_parameters,
        seed=1,
    )
    zip_bytes = pack_directory(ROOT / "examples" / "gpt")
    cold = [cold_start(zip_bytes, data_dir, values, regime.batch_size) for _ in range(args.repeats)]

    with tempfile.TemporaryDirectory() as tmp:
        submission = load_submission_bytes(zip_bytes, filename="gpt.zip")
        submission.write_to(Path(tmp) / "s")
        loaded = load_submission_modules(
            Path(tmp) / "s", submission.architecture_entrypoint, submission.training_entrypoint
        )
        ctx = make_context(values)
        build = loaded.architecture.build_model
        recipe = TrainingRecipe(
            learning_rate=1e-3,
            batch_size=regime.batch_size,
            weight_decay=0.1,
            betas=(0.9, 0.95),
            grad_clip=1.0,
        )
        batches = _batches(data_dir, regime.batch_size, regime.sequence_length, args.steps)
        bare_loop(_fresh_model(build, ctx), batches[:5], 1e-3, 257)  # warm-up (allocator, kernels)
        bare, harness = [], []
        for repeat in range(args.repeats):
            # Alternate which loop goes first so drifting machine load does not favour either.
            order = ("bare", "harness") if repeat % 2 == 0 else ("harness", "bare")
            for which in order:
                if which == "bare":
                    bare.append(bare_loop(_fresh_model(build, ctx), batches, 1e-3, 257))
                else:
                    harness.append(
                        harness_loop(
                            _fresh_model(build, ctx), batches, recipe, ctx, profile.probe.fraction, Path(tmp)
                        )
                    )
        params = sum(p.numel() for p in _fresh_model(build, ctx).parameters())

    tokens = args.steps * regime.batch_size * regime.sequence_length
    # Best of N: on a shared machine the fastest repeat is the one least disturbed by other load.
    bare_tps = tokens / min(bare)
    harness_tps = tokens / min(harness)
    print(
        json.dumps(
            {
                "model": "examples/gpt @ local_cpu_smoke",
                "parameters": params,
                "threads": args.threads,
                "steps": args.steps,
                "batch": [regime.batch_size, regime.sequence_length],
                "probe_fraction": profile.probe.fraction,
                "bare_tokens_per_s": round(bare_tps, 1),
                "harness_tokens_per_s": round(harness_tps, 1),
                "harness_over_bare": round(harness_tps / bare_tps, 3),
                "harness_over_bare_median": round(statistics.median(bare) / statistics.median(harness), 3),
                "bare_s": [round(x, 3) for x in bare],
                "harness_s": [round(x, 3) for x in harness],
                "cold_start_zip_to_first_step_s": round(statistics.median(c["total_s"] for c in cold), 3),
                "cold_start_parts_s": {k: round(statistics.median(c[k] for c in cold), 3) for k in cold[0]},
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
