"""Training phase (host side): launch the sandboxed runner, feed it, time it, collect what it left.

The sandbox sees the checked submission files, the run spec and the feed socket (read-only), and
writes only into the run's ``sandbox_out/``. No data directory is bound: batches come from
:class:`prism.evaluator.feed.TrainingFeed`. The outcome holds what the host observed (the feed
record, the sandbox result, the CPU or wall time it measured) next to what the runner reported
(evidence). Whose fault a failure is, is decided later by ``prism.evaluator.verdicts``.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import stat
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from prism.errors import MinerFault, PrismError
from prism.evaluator import sandbox as sb
from prism.evaluator.artifacts import (
    RUN_LOG,
    ProbeTail,
    make_read_only,
    read_probe_records,
    read_runner_report,
)
from prism.evaluator.context import PROBE_FILENAME, WEIGHTS_FILENAME, RunnerReport, RunSpec
from prism.evaluator.feed import FeedRecord, TrainingFeed
from prism.evaluator.interface import TrainingRecipe
from prism.evaluator.output_tree import confine_output
from prism.evaluator.progress import RunProgress
from prism.evaluator.recipe import TrainPlan, plan_training

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingJob:
    """Everything one training launch needs, decided by the host."""

    spec: RunSpec  # feed_socket is filled in here
    root: Path  # the run's artifact root (logs go here)
    sandbox_out: Path
    spec_dir: Path
    weights_dir: Path
    data_dir: Path
    vocab_size: int
    nproc: int
    limits: sb.SandboxLimits
    binds: tuple[sb.Bind, ...]
    isolation: sb.IsolationProbe
    progress: RunProgress
    task: int | None = None


@dataclass(frozen=True)
class ComputeMeasure:
    """Training compute as measured from outside: CPU seconds of the tree, or wall on a GPU."""

    kind: str  # "cpu_s" | "wall_s"
    seconds: float


@dataclass
class TrainingOutcome:
    feed: FeedRecord
    sandbox: sb.SandboxResult | None = None
    launch_error: PrismError | None = None
    report: RunnerReport | None = None  # evidence
    probes: list[dict[str, Any]] = field(default_factory=list)  # evidence
    weights: Path | None = None  # the host's own copy, outside every writable bind
    output_fault: MinerFault | None = None  # the output dir's tree was over the host's limits
    compute: ComputeMeasure | None = None
    wall_s: float = 0.0
    ended_at: float | None = None  # monotonic: when the training sandbox ended

    @property
    def training_seconds(self) -> float | None:
        """Host-timed: from sending the plan (the model is built) to the end of the sandbox."""
        if self.ended_at is None or self.feed.plan_at is None:
            return None
        return self.ended_at - self.feed.plan_at

    @property
    def plan(self) -> TrainPlan | None:
        return self.feed.plan


def host_batches(
    data_dir: Path, plan: TrainPlan, rank: int, seed: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """This rank's share of the training split, from the host's own loader (shards verified once)."""
    from prism.data import TrainLoader

    loader = TrainLoader(
        data_dir,
        split="train",
        batch_size=plan.per_rank_batch,
        seq_len=plan.sequence_length,
        rank=rank,
        world_size=plan.world_size,
        seed=seed,
        check_hashes=False,
        start_step=plan.start_step,
    )
    for batch in loader:
        yield batch.tokens, np.asarray(batch.window_bytes, dtype=np.int64)


def _make_plan(job: TrainingJob, declared: TrainingRecipe, custom_optimizer: bool) -> TrainPlan:
    spec = job.spec
    return plan_training(
        declared,
        spec.regime,
        lr_window=spec.lr_window,
        recipe_mode=spec.recipe_mode,
        world_size=job.nproc,
        custom_optimizer=custom_optimizer and spec.recipe_mode == "submitted",
        start_step=spec.resume_step,
    )


def _argv(job: TrainingJob, spec_path: Path) -> list[str]:
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1",
        f"--nproc-per-node={job.nproc}", "-m", "prism.evaluator.runner", "--spec", str(spec_path),
    ]  # fmt: skip


def _copy_weights(job: TrainingJob) -> Path | None:
    """Copy the trained weights out of the writable dir (a regular file only, never a symlink)."""
    source = job.sandbox_out / WEIGHTS_FILENAME
    try:
        fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    target = job.weights_dir / WEIGHTS_FILENAME
    with os.fdopen(fd, "rb") as src:
        if not stat.S_ISREG(os.fstat(src.fileno()).st_mode):
            return None
        with target.open("wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    return target


def measure_compute(
    result: sb.SandboxResult | None, feed: FeedRecord, ended_at: float, device: str
) -> ComputeMeasure | None:
    """CPU runs: the tree's CPU seconds (robust to other load on the machine); GPU runs: wall time
    from the first hello to the end. Calibration measures the reference model the same way."""
    if result is None or feed.first_hello_at is None:
        return None
    if device == "cpu" and result.cpu_accounted:
        return ComputeMeasure("cpu_s", result.cpu_s)
    return ComputeMeasure("wall_s", ended_at - feed.first_hello_at)


def _wait(process: sb.SandboxProcess, job: TrainingJob) -> sb.SandboxResult:
    tail = ProbeTail(job.sandbox_out / PROBE_FILENAME)
    with ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(process.wait)
        try:
            while not future.done():
                _show_progress(tail, job)
                time.sleep(0.5)
        except BaseException:  # Ctrl-C / shutdown: kill the sandbox now instead of waiting it out
            process.kill()
            raise
        result = future.result()
    _show_progress(tail, job)
    return result


def _show_progress(tail: ProbeTail, job: TrainingJob) -> None:
    last = tail.poll() if job.task is not None else None
    if last is not None:
        try:
            job.progress.update(
                job.task, completed=int(last["step"]) + 1, status=f"probe bpb {float(last['bpb']):.3f}"
            )
        except (TypeError, ValueError):  # a malformed record only loses a progress update
            pass


def run_training(job: TrainingJob) -> TrainingOutcome:
    """Launch, feed and wait; never raises for a failed run (it is in the outcome)."""
    feed_dir = Path(tempfile.mkdtemp(prefix="prism-feed-"))  # short path: Unix sockets cap it at 107 bytes
    started = time.monotonic()
    feed = TrainingFeed(
        feed_dir,
        world_size=job.nproc,
        deadline=started + job.limits.wall_s,
        make_plan=functools.partial(_make_plan, job),
        batches=lambda plan, rank: host_batches(job.data_dir, plan, rank, job.spec.context.seed),
        vocab_size=job.vocab_size,
    )
    outcome = TrainingOutcome(feed=feed.record)
    try:
        spec = job.spec.model_copy(update={"feed_socket": str(feed.path)})
        spec_path = spec.write(job.spec_dir)
        make_read_only(job.spec_dir)
        env = {"OMP_NUM_THREADS": str(spec.torch_threads), "PYTHONHASHSEED": "0", "PYTHONUNBUFFERED": "1"}
        binds = [
            *job.binds,
            sb.Bind(src=job.spec_dir),
            sb.Bind(src=feed_dir),
            sb.Bind(src=job.sandbox_out, writable=True),
        ]
        sandbox_spec = sb.SandboxSpec(
            argv=_argv(job, spec_path), binds=binds, env=env, cwd=str(job.sandbox_out), limits=job.limits
        )
        with feed:
            try:
                process = sb.start_sandboxed(
                    sandbox_spec, log_path=job.root / RUN_LOG, isolation=job.isolation
                )
                outcome.sandbox = _wait(process, job)
            except PrismError as exc:  # the launcher itself failed: observed by the host
                outcome.launch_error = exc
        ended = outcome.ended_at = time.monotonic()
        outcome.wall_s = ended - started
        outcome.compute = measure_compute(outcome.sandbox, feed.record, ended, spec.device)
    finally:
        shutil.rmtree(feed_dir, ignore_errors=True)
    outcome.output_fault = confine_output(job.sandbox_out)  # before the host reads anything in it
    outcome.report = read_runner_report(job.sandbox_out)
    outcome.probes = read_probe_records(job.sandbox_out)
    outcome.weights = _copy_weights(job)
    return outcome


__all__ = [
    "ComputeMeasure",
    "TrainingJob",
    "TrainingOutcome",
    "host_batches",
    "measure_compute",
    "run_training",
]
