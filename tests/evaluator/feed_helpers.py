"""The runner, fed by a real host feed, in this process (for the runner's own tests and benchmarks)."""

from __future__ import annotations

from pathlib import Path


def run_runner_with_feed(spec_path: Path, data_dir: Path, *, nproc: int = 1) -> tuple[int, object]:
    """Run ``prism.evaluator.runner.main`` in this process against a real host feed (a Unix socket
    served by threads), the way the training sandbox does: returns (exit code, FeedRecord)."""
    import functools
    import tempfile
    import time

    from prism.evaluator import runner
    from prism.evaluator.context import RunSpec
    from prism.evaluator.feed import TrainingFeed
    from prism.evaluator.recipe import plan_training
    from prism.evaluator.train_phase import host_batches

    spec = RunSpec.read(spec_path)

    def make_plan(declared, custom_optimizer):
        return plan_training(
            declared,
            spec.regime,
            lr_window=spec.lr_window,
            recipe_mode=spec.recipe_mode,
            world_size=nproc,
            custom_optimizer=custom_optimizer and spec.recipe_mode == "submitted",
            start_step=spec.resume_step,
        )

    with tempfile.TemporaryDirectory(prefix="feed-") as tmp:
        feed = TrainingFeed(
            Path(tmp),
            world_size=nproc,
            deadline=time.monotonic() + 600,
            make_plan=make_plan,
            batches=functools.partial(
                lambda plan, rank: host_batches(data_dir, plan, rank, spec.context.seed)
            ),
            vocab_size=spec.context.vocab_size,
        )
        spec_path.chmod(0o644)
        spec_path.write_text(
            spec.model_copy(update={"feed_socket": str(feed.path)}).model_dump_json(), encoding="utf-8"
        )
        with feed:
            code = runner.main(["--spec", str(spec_path)])
        return code, feed.record
