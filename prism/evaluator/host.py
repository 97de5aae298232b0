"""Host-side orchestration: ``evaluate()`` one submission under one profile, write run manifests.

For each regime x seed the host:

1. writes a :class:`~prism.evaluator.context.RunSpec` into a read-only spec dir;
2. launches ``torchrun ... -m prism.evaluator.runner`` through the sandbox launcher (the checked
   submission files, the spec and the data dir read-only; a per-run ``sandbox_out/`` writable),
   tailing ``probe.jsonl`` for a progress bar;
3. runs the separate held-out evaluation process (:func:`prism.evaluator.heldout.run_heldout`)
   on windows drawn with the validator's held-out seed;
4. writes the artifacts and ``prism_run_manifest.v1.json`` under ``out_dir/<run_id>/``.

This module never imports torch nor the submission's code: it only moves files, starts sandboxed
processes and reads what they report. Intake failures (``SubmissionError``) are raised to the
caller before any run starts (the validator records them); every failure after intake becomes a
failed manifest with a typed failure (``miner`` or ``infrastructure`` fault).
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import logging
import math
import os
import platform
import shutil
import stat
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from prism import __version__ as prism_version
from prism.errors import InfrastructureFault, OperatorError, PrismError
from prism.evaluator.context import (
    CHECKPOINT_DIRNAME,
    CHECKPOINT_RECORD_FILENAME,
    PROBE_FILENAME,
    RUNNER_REPORT_FILENAME,
    WEIGHTS_FILENAME,
    CheckpointInfo,
    ContextValues,
    RunnerReport,
    RunSpec,
    make_run_id,
)
from prism.evaluator.interface import HOOK_NAMES
from prism.manifest import (
    MANIFEST_FILENAME,
    Artifacts,
    Comparability,
    DatasetRecord,
    Diagnostics,
    EnvironmentRecord,
    Failure,
    HardwareRecord,
    HeldoutPoint,
    HookRecord,
    Metrics,
    ProbePoint,
    ProfileRef,
    RecipeRecord,
    RegimeRef,
    RunManifest,
    Status,
    SubmissionIds,
    Validation,
    read_manifest,
    write_manifest,
)
from prism.profiles import Profile, Regime

if TYPE_CHECKING:
    from prism.evaluator.sandbox import IsolationProbe, SandboxResult

logger = logging.getLogger(__name__)

RecipeMode = Literal["reference", "submitted"]
Competition = Literal["architecture", "training"]

# Validation reason codes (stable; scoring reads them).
REASON_NOT_OFFICIAL = "profile.not_official"
REASON_DEGRADED = "isolation.degraded"
REASON_FAILED = "run.failed"
REASON_NONFINITE = "gate.nonfinite_loss"
REASON_SMUGGLED = "gate.smuggled_weights"
REASON_PARAMS_CHANGED = "gate.params_changed_during_eval"
REASON_GAP = "gate.train_heldout_gap"
REASON_NOT_REFERENCE = "recipe.not_reference"
REASON_METRICS_MISSING = "metrics.missing"

SANDBOX_OUT = "sandbox_out"
END_OF_TRAINING_FRACTION = 0.1
CHECKPOINTS_PER_RUN = 10  # train_bpb: mean probe bpb over the last 10% of the probes
MAX_MANIFEST_PROBE_POINTS = 1000
RUN_LOG = "run.log"
HELDOUT_LOG = "heldout.log"
METRICS_FILE = "metrics.json"
GRAPH_FILE = "architecture_graph.json"
METADATA_FILE = "architecture_metadata.json"
PLOT_FILE = "loss_curve.svg"


# ----------------------------------------------------------------------------------------------
# progress reporting (rich when asked for, silent otherwise)


class _Progress:
    """A rich progress bar per run, fed from probe.jsonl; a no-op when disabled."""

    def __init__(self, enabled: bool) -> None:
        self._bar = None
        if enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._bar = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[status]}"),
                TimeElapsedColumn(),
                transient=False,
            )

    def __enter__(self) -> _Progress:
        if self._bar is not None:
            self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()

    def add(self, description: str, total: int) -> int | None:
        if self._bar is None:
            return None
        return self._bar.add_task(description, total=total, status="starting")

    def update(
        self,
        task: int | None,
        *,
        completed: int | None = None,
        status: str | None = None,
        total: int | None = None,
    ) -> None:
        if self._bar is None or task is None:
            return
        fields: dict[str, Any] = {}
        if total is not None:
            fields["total"] = total
        if completed is not None:
            fields["completed"] = completed
        if status is not None:
            fields["status"] = status
        self._bar.update(task, **fields)


MAX_PROBE_FILE_BYTES = 256_000_000  # ~2M probe records; a bigger file is truncated, never slurped whole
MAX_REPORT_BYTES = 4_000_000
_PROBE_KEYS = ("step", "tokens_seen", "loss_nats", "bpb")


def read_untrusted(path: Path, limit: int, offset: int = 0) -> bytes | None:
    """At most ``limit`` bytes of a regular file a sandboxed process wrote.

    The sandbox's writable dir is the submission's playground: a name there may be a symlink to
    a host file, a FIFO or /dev/zero. Only a regular file, opened without following a symlink,
    is read, and never more than ``limit`` bytes. None when it is anything else or missing.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            return None
        fh.seek(offset)
        return fh.read(limit)


def _parse_probe_lines(text: str) -> list[dict[str, Any]]:
    records = []
    for line in text.splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and all(k in rec for k in _PROBE_KEYS):
            records.append(rec)
    return records


def read_probe_records(path: Path) -> list[dict[str, Any]]:
    """Complete JSON lines of probe.jsonl (a half-written last line is skipped; junk is ignored)."""
    data = read_untrusted(path, MAX_PROBE_FILE_BYTES)
    if not data:
        return []
    return _parse_probe_lines(data.decode("utf-8", errors="replace"))


class _ProbeTail:
    """Follows probe.jsonl incrementally (each poll reads only what was appended)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.partial = b""
        self.last: dict[str, Any] | None = None

    def poll(self) -> dict[str, Any] | None:
        chunk = read_untrusted(self.path, 1 << 20, self.offset)
        if chunk:
            self.offset += len(chunk)
            *lines, self.partial = (self.partial + chunk).split(b"\n")
            if len(self.partial) > 1 << 16:  # a runaway line is nobody's probe record
                self.partial = b""
            records = _parse_probe_lines(b"\n".join(lines).decode("utf-8", errors="replace"))
            if records:
                self.last = records[-1]
        return self.last


# ----------------------------------------------------------------------------------------------
# small helpers


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def _finite(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


_READ_ONLY_FILE = stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH
_READ_ONLY_DIR = _READ_ONLY_FILE | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH


def _chmod_tree(root: Path, *, file_mode: int, dir_mode: int) -> None:
    """chmod every file and dir under ``root``. Symlinks are skipped: chmod would follow them out
    of the tree, and the sandbox's writable dir may hold links to host files."""
    if root.is_symlink() or not root.is_dir():
        return
    os.chmod(root, stat.S_IRWXU)  # while walking, every dir stays listable and enterable
    dirs = [str(root)]
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                os.chmod(path, file_mode)
        for name in dirnames:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                os.chmod(path, stat.S_IRWXU)
                dirs.append(path)
    for path in reversed(dirs):  # children before their parents
        os.chmod(path, dir_mode)


def _make_read_only(root: Path) -> None:
    """Drop write bits so even degraded mode (no bwrap) cannot edit the checked files."""
    _chmod_tree(root, file_mode=_READ_ONLY_FILE, dir_mode=_READ_ONLY_DIR)


def _make_writable(root: Path) -> None:
    _chmod_tree(root, file_mode=stat.S_IRUSR | stat.S_IWUSR, dir_mode=stat.S_IRWXU)


def default_torch_threads(device: str, nproc: int) -> int:
    """Intra-op threads per rank: fixed (not machine-dependent) so runs are bit-identical.

    One thread on CPU: on a shared machine, OpenMP teams thrash badly (measured on 2 loaded cores:
    1.6 s/step with 2 threads against 0.12 s/step with 1 for the smoke GPT).
    """
    return 4 if device == "cuda" else 1


def checkpoint_interval(profile: Profile, regime: Regime) -> int:
    """Steps between ``save_checkpoint`` calls: official runs save 10 times (a retry after an
    infrastructure failure then loses at most a tenth of the run); smoke runs only at the end."""
    if not profile.official:
        return 0
    steps = max(1, regime.train_tokens // (regime.batch_size * regime.sequence_length))
    return max(1, steps // CHECKPOINTS_PER_RUN)


def _torch_version_on_host() -> str | None:
    try:
        return importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return None


# ----------------------------------------------------------------------------------------------
# data


@dataclass
class DataInfo:
    tokenizer: str
    vocab_size: int
    eos_id: int
    record: dict[str, Any]  # DatasetRecord fields except heldout_seed / heldout_windows


def describe_data(data_dir: Path, profile: Profile) -> DataInfo:
    """Read and verify the prepared data dir; its tokenizer must be the profile's."""
    from prism import data as prism_data

    if not data_dir.is_dir():
        raise OperatorError(f"data dir {data_dir} does not exist", code="eval.no_data")
    manifest = prism_data.verify_data_dir(data_dir)  # every shard's header and sha256, once per evaluate()
    record = dict(prism_data.data_fingerprint(manifest))
    tokenizer = record["tokenizer"]
    name = tokenizer["name"] if isinstance(tokenizer, dict) else tokenizer.name
    if name != profile.tokenizer:
        raise OperatorError(
            f"data dir {data_dir} is tokenized with {name!r}, profile {profile.key} needs {profile.tokenizer!r}",
            code="eval.data_tokenizer_mismatch",
        )
    tok = tokenizer if isinstance(tokenizer, dict) else tokenizer.model_dump()
    return DataInfo(
        tokenizer=name, vocab_size=int(tok["vocab_size"]), eos_id=int(tok["eos_id"]), record=record
    )


# ----------------------------------------------------------------------------------------------
# one run


@dataclass
class RunPlan:
    run_id: str
    regime: Regime
    seed: int
    root: Path  # out_dir/<run_id>: manifest and artifacts
    sandbox_out: Path  # root/sandbox_out: the only writable path of the training sandbox
    spec_dir: Path  # root/spec: read-only inside


def _plan(out_dir: Path, run_id: str, regime: Regime, seed: int) -> RunPlan:
    root = out_dir / run_id
    return RunPlan(
        run_id=run_id,
        regime=regime,
        seed=seed,
        root=root,
        sandbox_out=root / SANDBOX_OUT,
        spec_dir=root / "spec",
    )


def _existing_result(plan: RunPlan) -> RunManifest | None:
    """A finished run is not recomputed (a restarted validator finds it), unless it failed on our side."""
    path = plan.root / MANIFEST_FILENAME
    if not path.is_file():
        return None
    try:
        manifest = read_manifest(path)
    except InfrastructureFault:
        return None
    failure = manifest.status.failure
    if failure is not None and failure.fault == "infrastructure":
        return None
    return manifest


def _reset_run_dir(plan: RunPlan) -> None:
    if plan.root.exists():
        _make_writable(plan.root)
        shutil.rmtree(plan.root)
    plan.sandbox_out.mkdir(parents=True)
    plan.spec_dir.mkdir(parents=True)


def _training_failure(
    sandbox: SandboxResult | None, report: RunnerReport | None, outputs_ok: bool
) -> Failure | None:
    """Decide what went wrong in training, trusting the sandbox's verdicts over the runner's words.

    Limits (time, memory) are measured by the sandbox and win; then the runner's typed failure;
    then any other way the process tree ended badly, which is the submission's doing (its code can
    exit, kill itself or exhaust a limit at will).
    """
    if sandbox is not None and sandbox.timed_out:
        return Failure(
            code="eval.timeout",
            fault="miner",
            phase="train",
            message=f"training exceeded the wall-clock limit ({sandbox.wall_s:.0f}s)",
        )
    if sandbox is not None and sandbox.memory_exceeded:
        return Failure(
            code="eval.memory_exceeded",
            fault="miner",
            phase="train",
            message="training exceeded the memory limit",
        )
    if report is not None and report.failure is not None:
        f = report.failure
        return Failure(code=f.code, fault=f.fault, message=f.message, phase=f.phase)
    code = sandbox.failure_code() if sandbox is not None else None
    if code is not None:
        return Failure(
            code="eval." + code.removeprefix("sandbox."),
            fault="miner",
            phase="train",
            message=f"training process ended with exit code {sandbox.exit_code}, "
            f"signal {sandbox.signal}: {sandbox.log_tail[-500:]}",
        )
    if report is None or not report.ok or not outputs_ok:
        return Failure(
            code="eval.missing_outputs",
            fault="miner",
            phase="train",
            message="training ended without a runner report or trained weights",
        )
    return None


def _read_runner_report(sandbox_out: Path) -> RunnerReport | None:
    """Rank 0's report; a failing non-zero rank's report wins when rank 0 has none or succeeded."""
    reports = sorted(sandbox_out.glob("runner_report.rank*.json"))
    main = sandbox_out / RUNNER_REPORT_FILENAME
    paths = ([main] if main.is_file() else []) + reports
    parsed: list[RunnerReport] = []
    for path in paths:
        try:
            parsed.append(RunnerReport.model_validate_json(read_untrusted(path, MAX_REPORT_BYTES) or b""))
        except ValueError as exc:
            logger.warning("unreadable runner report %s: %s", path.name, exc)
    if not parsed:
        return None
    head = parsed[0]
    failing = next((r for r in parsed if r.failure is not None), None)
    if failing is not None and head.failure is None:
        head = head.model_copy(update={"ok": False, "failure": failing.failure})
    return head


def _run_training(
    spec: RunSpec,
    plan: RunPlan,
    *,
    profile: Profile,
    nproc: int,
    binds: list[Any],
    isolation: IsolationProbe,
    progress: _Progress,
    task: int | None,
) -> SandboxResult:
    from prism.evaluator import sandbox as sb

    spec_path = spec.write(plan.spec_dir)
    _make_read_only(plan.spec_dir)
    argv = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nnodes=1",
        f"--nproc-per-node={nproc}",
        "-m",
        "prism.evaluator.runner",
        "--spec",
        str(spec_path),
    ]
    env = {"OMP_NUM_THREADS": str(spec.torch_threads), "PYTHONHASHSEED": "0", "PYTHONUNBUFFERED": "1"}
    sandbox_spec = sb.SandboxSpec(
        argv=argv,
        binds=binds,
        env=env,
        cwd=str(plan.sandbox_out),
        limits=sb.SandboxLimits.from_profile(profile.limits, phase="train", device=profile.device),
    )
    proc = sb.start_sandboxed(sandbox_spec, log_path=plan.root / RUN_LOG, isolation=isolation)
    tail = _ProbeTail(plan.sandbox_out / PROBE_FILENAME)
    with ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(proc.wait)
        try:
            while not future.done():
                _show_progress(tail, progress, task)
                time.sleep(0.5)
        except BaseException:  # Ctrl-C / shutdown: kill the sandbox now instead of waiting it out
            proc.kill()
            raise
        result = future.result()
    _show_progress(tail, progress, task)
    return result


def _show_progress(tail: _ProbeTail, progress: _Progress, task: int | None) -> None:
    if task is None:
        return
    last = tail.poll()
    if last is not None:
        try:
            progress.update(
                task, completed=int(last["step"]) + 1, status=f"probe bpb {float(last['bpb']):.3f}"
            )
        except (TypeError, ValueError):  # a malformed record only loses a progress update
            pass


def _summarize_probes(records: list[dict[str, Any]]) -> dict[str, Any]:
    finite = [
        r for r in records if _finite(r.get("bpb")) is not None and _finite(r.get("loss_nats")) is not None
    ]
    if not finite:
        return {}
    half = finite[len(finite) // 2 :]
    # "End of training" = the last 10% of the probes: one probe covers a few sequences and is too
    # noisy (+-0.5 bpb on the smoke profile) to compare with the held-out bpb on its own.
    tail = finite[-max(1, math.ceil(len(finite) * END_OF_TRAINING_FRACTION)) :]
    return {
        "first_probe_loss_nats": float(finite[0]["loss_nats"]),
        "probe_bpb": sum(float(r["bpb"]) for r in half) / len(half),
        "train_bpb": sum(float(r["bpb"]) for r in tail) / len(tail),
    }


def _downsample(records: list[dict[str, Any]], limit: int) -> list[dict[str, Any]]:
    if len(records) <= limit:
        return records
    stride = math.ceil(len(records) / limit)
    picked = records[::stride]
    if picked[-1] is not records[-1]:
        picked.append(records[-1])
    return picked


def _hooks_table(report: RunnerReport | None, submission: Any) -> dict[str, HookRecord]:
    if report is not None and report.hooks:
        return {name: HookRecord(**use.model_dump()) for name, use in report.hooks.items()}
    present: dict[str, Any] = dict(getattr(submission, "hooks", {}) or {})
    return {
        name: HookRecord(
            present=name in present,
            used=False,
            source_file=present[name] if isinstance(present.get(name), str) else None,
        )
        for name in HOOK_NAMES
    }


def _architecture_metadata(heldout: Any, report: RunnerReport | None) -> dict[str, Any]:
    """Source-free description of the accepted architecture version (no code, no host paths)."""
    graph = getattr(heldout, "graph", None) or {}
    module_summary = graph.get("modules") or graph.get("module_tree")
    return {
        "schema": "prism_architecture_metadata.v1",
        "family_id": getattr(heldout, "family_id", None),
        "version_id": getattr(heldout, "version_id", None),
        "parameter_count": getattr(heldout, "parameter_count", None)
        or (report.parameter_count if report else None),
        "layer_count": report.layer_count if report else None,
        "flops_per_token": getattr(heldout, "flops_per_token", None),
        "module_tree": module_summary,
        "torch_version": graph.get("torch_version"),
    }


# ----------------------------------------------------------------------------------------------
# evaluate()


def evaluate(
    submission_path: Path,
    *,
    profile: Profile,
    data_dir: Path,
    out_dir: Path,
    recipe_mode: RecipeMode,
    competition: Competition | None = None,
    regimes: list[str] | None = None,
    seeds: list[int] | None = None,
    heldout_seed: int | None = None,
    nproc_per_node: int | None = None,
    isolation: IsolationProbe | None = None,
    progress: bool = True,
    attempt: int = 0,
    resume_checkpoint_dir: Path | None = None,
    on_manifest: Callable[[RunManifest, Path], None] | None = None,
) -> list[RunManifest]:
    """Train and measure one submission under ``profile``; returns the manifests written (one per run).

    Raises ``SubmissionError`` (a miner fault) when intake rejects the submission, and
    ``OperatorError`` for bad arguments (unknown regime, wrong data dir). Everything after intake
    is recorded in the run's manifest instead of raised.
    """
    from prism.evaluator import sandbox as sb
    from prism.submission import load_submission

    if recipe_mode not in ("reference", "submitted"):
        raise OperatorError(
            f"recipe mode must be reference or submitted, got {recipe_mode!r}", code="eval.bad_recipe_mode"
        )
    submission = load_submission(Path(submission_path))
    competition = competition or ("training" if recipe_mode == "submitted" else "architecture")
    data_dir = Path(data_dir).resolve()
    out_dir = Path(out_dir).resolve()
    data = describe_data(data_dir, profile)
    chosen_regimes = [profile.regime(name) for name in regimes] if regimes else list(profile.regimes)
    chosen_seeds = list(seeds) if seeds else list(profile.seeds)
    heldout_seed = profile.heldout.seed if heldout_seed is None else heldout_seed
    nproc = nproc_per_node or profile.nproc_per_node
    isolation = isolation or sb.probe_isolation()
    out_dir.mkdir(parents=True, exist_ok=True)

    manifests: list[RunManifest] = []
    with tempfile.TemporaryDirectory(prefix="prism-submission-") as tmp, _Progress(progress) as bars:
        submission_dir = Path(tmp) / "submission"
        submission.write_to(submission_dir)
        _make_read_only(submission_dir)
        try:
            for regime in chosen_regimes:
                for seed in chosen_seeds:
                    run_id = make_run_id(
                        zip_sha256=submission.zip_sha256,
                        profile_key=profile.key,
                        regime=regime.name,
                        seed=seed,
                        recipe_mode=recipe_mode,
                        heldout_seed=heldout_seed,
                        attempt=attempt,
                    )
                    plan = _plan(out_dir, run_id, regime, seed)
                    existing = _existing_result(plan)
                    if existing is not None:
                        logger.info(
                            "run %s already finished (%s); not recomputed", run_id, existing.status.state
                        )
                        manifests.append(existing)
                        continue
                    manifest = _evaluate_one(
                        plan,
                        submission=submission,
                        submission_dir=submission_dir,
                        profile=profile,
                        data_dir=data_dir,
                        data=data,
                        recipe_mode=recipe_mode,
                        competition=competition,
                        heldout_seed=heldout_seed,
                        nproc=nproc,
                        isolation=isolation,
                        bars=bars,
                        attempt=attempt,
                        resume_checkpoint_dir=resume_checkpoint_dir,
                    )
                    manifests.append(manifest)
                    if on_manifest is not None:
                        on_manifest(manifest, plan.root / MANIFEST_FILENAME)
        finally:
            _make_writable(submission_dir)
    return manifests


def _resume_record(resume_checkpoint_dir: Path | None) -> CheckpointInfo | None:
    if resume_checkpoint_dir is None:
        return None
    record = Path(resume_checkpoint_dir).parent / CHECKPOINT_RECORD_FILENAME
    if not record.is_file():
        raise OperatorError(
            f"no accepted checkpoint record next to {resume_checkpoint_dir}", code="eval.no_resume_record"
        )
    try:
        return CheckpointInfo.model_validate_json(read_untrusted(record, MAX_REPORT_BYTES) or b"")
    except ValueError as exc:
        raise OperatorError(
            f"unreadable checkpoint record {record}: {exc}", code="eval.no_resume_record"
        ) from exc


def _evaluate_one(
    plan: RunPlan,
    *,
    submission: Any,
    submission_dir: Path,
    profile: Profile,
    data_dir: Path,
    data: DataInfo,
    recipe_mode: RecipeMode,
    competition: Competition,
    heldout_seed: int,
    nproc: int,
    isolation: IsolationProbe,
    bars: _Progress,
    attempt: int,
    resume_checkpoint_dir: Path | None,
) -> RunManifest:
    from prism.evaluator import sandbox as sb

    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    regime = plan.regime
    _reset_run_dir(plan)
    resume = _resume_record(resume_checkpoint_dir)
    context = ContextValues(
        vocab_size=data.vocab_size,
        sequence_length=regime.sequence_length,
        max_layers=regime.max_layers,
        max_parameters=regime.max_parameters,
        seed=plan.seed,
        attempt=attempt,
        checkpoint_dir=str(plan.sandbox_out / CHECKPOINT_DIRNAME),
        resume_checkpoint_dir=str(Path(resume_checkpoint_dir).resolve()) if resume is not None else None,
        checkpoint_metadata=resume.metadata if resume is not None else {},
    )
    spec = RunSpec(
        run_id=plan.run_id,
        submission_dir=str(submission_dir),
        architecture_entrypoint=submission.architecture_entrypoint,
        training_entrypoint=submission.training_entrypoint,
        data_dir=str(data_dir),
        out_dir=str(plan.sandbox_out),
        recipe_mode=recipe_mode,
        regime=regime,
        context=context,
        eos_id=data.eos_id,
        lr_window=profile.lr_window,
        probe_every_steps=profile.probe.every_steps,
        probe_fraction=profile.probe.fraction,
        device=profile.device,
        torch_threads=default_torch_threads(profile.device, nproc),
        resume_step=resume.step if resume is not None else 0,
        checkpoint_every_steps=checkpoint_interval(profile, regime),
    )
    binds = [
        *sb.python_binds(),
        sb.Bind(src=submission_dir),
        sb.Bind(src=data_dir),
        sb.Bind(src=plan.spec_dir),
        sb.Bind(src=plan.sandbox_out, writable=True),
        *(sb.gpu_binds() if profile.device == "cuda" else []),
    ]
    if resume_checkpoint_dir is not None:
        binds.append(sb.Bind(src=Path(resume_checkpoint_dir).resolve()))
    planned_steps = max(1, regime.train_tokens // (regime.batch_size * regime.sequence_length))
    task = bars.add(f"{regime.name} seed {plan.seed}", planned_steps)

    sandbox: SandboxResult | None = None
    report: RunnerReport | None = None
    failure: Failure | None = None
    notes: list[str] = []
    t = time.perf_counter()
    try:
        sandbox = _run_training(
            spec,
            plan,
            profile=profile,
            nproc=nproc,
            binds=binds,
            isolation=isolation,
            progress=bars,
            task=task,
        )
    except PrismError as exc:
        failure = Failure(
            code=exc.code,
            fault="miner" if exc.fault == "miner" else "infrastructure",
            message=exc.message,
            phase="train",
        )
    timings["train_sandbox"] = time.perf_counter() - t
    report = _read_runner_report(plan.sandbox_out)
    if report is not None and report.planned_steps:  # the real step count (a submitted batch size differs)
        bars.update(task, completed=report.steps, total=report.planned_steps)
    weights = plan.sandbox_out / WEIGHTS_FILENAME
    if failure is None:
        failure = _training_failure(sandbox, report, weights.is_file() and not weights.is_symlink())

    heldout = None
    if failure is None:
        bars.update(task, status="held-out evaluation")
        t = time.perf_counter()
        heldout, heldout_failure = _run_heldout(
            plan, spec, submission, profile, data_dir, heldout_seed, isolation, submission_dir, recipe_mode
        )
        timings["heldout_sandbox"] = time.perf_counter() - t
        failure = heldout_failure
    bars.update(task, status="failed" if failure else "done")
    timings["total"] = time.perf_counter() - t_start
    if report is not None:
        timings.update({f"runner_{k}": v for k, v in report.timings_s.items()})

    manifest = _build_manifest(
        plan,
        submission=submission,
        profile=profile,
        data=data,
        recipe_mode=recipe_mode,
        competition=competition,
        heldout_seed=heldout_seed,
        isolation=isolation,
        sandbox=sandbox,
        report=report,
        heldout=heldout,
        failure=failure,
        timings=timings,
        notes=notes,
        spec=spec,
        nproc=nproc,
    )
    write_manifest(manifest, plan.root)
    _make_read_only(plan.sandbox_out)  # the record of what the submission wrote stays as it was
    return manifest


def _run_heldout(
    plan: RunPlan,
    spec: RunSpec,
    submission: Any,
    profile: Profile,
    data_dir: Path,
    heldout_seed: int,
    isolation: IsolationProbe,
    submission_dir: Path,
    recipe_mode: RecipeMode,
) -> tuple[Any, Failure | None]:
    from prism import data as prism_data
    from prism.evaluator import sandbox as sb
    from prism.evaluator.heldout import run_heldout

    # The weights are copied out of the training sandbox's writable dir so nothing can swap them later.
    weights_dir = plan.root / "weights"
    weights_dir.mkdir(exist_ok=True)
    weights = weights_dir / WEIGHTS_FILENAME
    shutil.copyfile(plan.sandbox_out / WEIGHTS_FILENAME, weights)
    windows, window_bytes = prism_data.heldout_windows(
        data_dir,
        split="val",
        n_windows=profile.heldout.windows,
        seq_len=spec.regime.sequence_length,
        seed=heldout_seed,
    )
    context = spec.context.model_dump() | {"checkpoint_dir": None, "resume_checkpoint_dir": None}
    try:
        result = run_heldout(
            submission_dir=submission_dir,
            architecture_entrypoint=submission.architecture_entrypoint,
            training_entrypoint=submission.training_entrypoint,
            weights_path=weights,
            context=context,
            canonical_context=profile.canonical_context.model_dump() | {"seed": spec.context.seed},
            windows=windows,
            window_bytes=window_bytes,
            batch_size=profile.heldout.batch_size,
            limits=sb.SandboxLimits.from_profile(profile.limits, phase="eval", device=profile.device),
            log_path=plan.root / HELDOUT_LOG,
            isolation=isolation,
            extra_binds=sb.gpu_binds() if profile.device == "cuda" else [],
            use_inference_hooks=recipe_mode == "submitted",
            device=profile.device,
            torch_threads=spec.torch_threads,
        )
    except PrismError as exc:
        fault = "miner" if exc.fault == "miner" else "infrastructure"
        return None, Failure(code=exc.code, fault=fault, message=exc.message, phase="heldout")
    return result, result.failure


def validation_reasons(
    *,
    profile: Profile,
    isolation_mode: str,
    failed: bool,
    metrics: Metrics,
    vocab_size: int,
    params_changed: bool,
    competition: Competition,
    recipe_mode: RecipeMode,
) -> list[str]:
    """Every stable reason a run is not score-eligible (empty: eligible). Pure."""
    reasons: list[str] = []
    if not profile.official:
        reasons.append(REASON_NOT_OFFICIAL)
    if isolation_mode == "degraded":
        reasons.append(REASON_DEGRADED)
    if failed:
        reasons.append(REASON_FAILED)
    if metrics.nonfinite_loss:
        reasons.append(REASON_NONFINITE)
    first = metrics.first_probe_loss_nats
    # A freshly initialised model predicts roughly uniformly (ln V nats); far below that on the
    # very first batch means the "architecture" arrived already trained.
    if first is not None and first < profile.gates.smuggle_factor * math.log(vocab_size):
        reasons.append(REASON_SMUGGLED)
    if params_changed:
        reasons.append(REASON_PARAMS_CHANGED)
    gap = metrics.train_heldout_gap_bpb
    if gap is not None and gap > profile.gates.max_train_heldout_gap_bpb:
        reasons.append(REASON_GAP)
    if competition == "architecture" and recipe_mode != "reference":
        reasons.append(REASON_NOT_REFERENCE)
    if metrics.heldout_bpb is None or metrics.probe_bpb is None:
        reasons.append(REASON_METRICS_MISSING)
    return reasons


def _write_json(path: Path, payload: Any) -> None:
    path.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")


def _build_manifest(
    plan: RunPlan,
    *,
    submission: Any,
    profile: Profile,
    data: DataInfo,
    recipe_mode: RecipeMode,
    competition: Competition,
    heldout_seed: int,
    isolation: IsolationProbe,
    sandbox: SandboxResult | None,
    report: RunnerReport | None,
    heldout: Any,
    failure: Failure | None,
    timings: dict[str, float],
    notes: list[str],
    spec: RunSpec,
    nproc: int,
) -> RunManifest:
    regime = plan.regime
    probes = read_probe_records(plan.sandbox_out / PROBE_FILENAME)
    summary = _summarize_probes(probes)
    heldout_bpb = _finite(getattr(heldout, "bpb", None))
    heldout_failed = heldout is None or getattr(heldout, "failure", None) is not None
    if heldout_failed:
        heldout_bpb = None
    train_bpb = summary.get("train_bpb")
    nonfinite = bool(report and report.nonfinite_loss) or (
        failure is not None and failure.code == "eval.nonfinite_loss"
    )
    metrics = Metrics(
        heldout_bpb=heldout_bpb,
        heldout_loss_nats=_finite(getattr(heldout, "loss_nats", None)) if not heldout_failed else None,
        heldout_tokens=int(getattr(heldout, "tokens", 0) or 0),
        heldout_bytes=int(getattr(heldout, "bytes", 0) or 0),
        probe_bpb=summary.get("probe_bpb"),
        first_probe_loss_nats=summary.get("first_probe_loss_nats"),
        final_train_loss_nats=_finite(report.final_train_loss_nats) if report else None,
        train_bpb=train_bpb,
        train_heldout_gap_bpb=(heldout_bpb - train_bpb)
        if heldout_bpb is not None and train_bpb is not None
        else None,
        probe_curve=[
            ProbePoint(
                step=int(r["step"]),
                tokens_seen=int(r["tokens_seen"]),
                loss_nats=float(r["loss_nats"]),
                bpb=float(r["bpb"]),
            )
            for r in _downsample(probes, MAX_MANIFEST_PROBE_POINTS)
            if _finite(r["bpb"]) is not None and _finite(r["loss_nats"]) is not None
        ],
        loss_vs_tokens=[HeldoutPoint(tokens_seen=report.tokens, bpb=heldout_bpb)]
        if heldout_bpb is not None and report is not None
        else [],
        train_tokens=report.tokens if report else 0,
        train_bytes=report.bytes if report else 0,
        train_steps=report.steps if report else 0,
        parameter_count=getattr(heldout, "parameter_count", None)
        or (report.parameter_count if report else None),
        layer_count=report.layer_count if report else None,
        flops_per_token=_finite(getattr(heldout, "flops_per_token", None)),
        nonfinite_loss=nonfinite,
    )

    artifacts = Artifacts(run_log=RUN_LOG if (plan.root / RUN_LOG).exists() else None)
    if heldout is not None and getattr(heldout, "graph", None):
        _write_json(plan.root / GRAPH_FILE, heldout.graph)
        artifacts.architecture_graph = GRAPH_FILE
        _write_json(plan.root / METADATA_FILE, _architecture_metadata(heldout, report))
        artifacts.architecture_metadata = METADATA_FILE
    _write_json(
        plan.root / METRICS_FILE,
        {"run_id": plan.run_id, "metrics": metrics.model_dump(mode="json"), "probe_records": probes},
    )
    artifacts.metrics = METRICS_FILE
    if report is not None and report.checkpoint is not None and failure is None:
        artifacts.checkpoint = f"{SANDBOX_OUT}/{CHECKPOINT_DIRNAME}/{report.checkpoint.path}"
    if probes:
        try:
            from prism.evaluator.plot import plot_run

            plot_run(plan.root / PLOT_FILE, probes=probes, heldout=metrics.loss_vs_tokens, title=plan.run_id)
            artifacts.plot = PLOT_FILE
        except Exception as exc:  # a plot is a convenience; never fail a run over it
            logger.warning("could not draw the loss curve: %s", exc)

    sha_before = getattr(heldout, "params_sha256_before", None)
    sha_after = getattr(heldout, "params_sha256_after", None)
    params_changed = sha_before is not None and sha_after is not None and sha_before != sha_after
    diagnostics = Diagnostics(
        params_sha256_before_eval=sha_before,
        params_sha256_after_eval=sha_after,
        params_changed_during_eval=params_changed,
        sandbox_probe=f"{isolation.mode}; cgroups={isolation.cgroups}; {isolation.detail}",
        exit_codes={
            "train": sandbox.exit_code if sandbox is not None else None,
            "heldout": getattr(getattr(heldout, "sandbox", None), "exit_code", None),
        },
        log_truncated=bool(sandbox and sandbox.log_truncated)
        or bool(getattr(getattr(heldout, "sandbox", None), "log_truncated", False)),
        notes=[*notes, f"torch_threads={spec.torch_threads}"],
    )

    reasons = validation_reasons(
        profile=profile,
        isolation_mode=isolation.mode,
        failed=failure is not None,
        metrics=metrics,
        vocab_size=data.vocab_size,
        params_changed=params_changed,
        competition=competition,
        recipe_mode=recipe_mode,
    )

    dataset = DatasetRecord.model_validate(
        data.record | {"heldout_seed": heldout_seed, "heldout_windows": profile.heldout.windows}
    )
    hardware = HardwareRecord(
        device_type=profile.device,
        gpu_count=report.gpu_count if report else 0,
        device_names=report.device_names if report else [],
        world_size=report.world_size if report is not None else nproc,
        distributed_backend=report.distributed_backend if report else None,
    )
    environment = EnvironmentRecord(
        python=platform.python_version(),
        torch=(report.torch_version if report and report.torch_version else _torch_version_on_host()),
        cuda=report.cuda_version if report else None,
        prism=prism_version,
        platform=platform.platform(),
    )
    recipe = None
    if report is not None and report.recipe_declared:
        recipe = RecipeRecord(
            declared=report.recipe_declared, effective=report.recipe_effective, clamped=report.recipe_clamped
        )
    family_id = getattr(heldout, "family_id", None)
    ids = SubmissionIds(
        zip_sha256=submission.zip_sha256,
        kind=submission.kind,
        architecture_fingerprint=submission.architecture_fingerprint,
        training_fingerprint=submission.training_fingerprint,
        target_architecture_id=getattr(submission, "architecture_id", None)
        if submission.kind == "training_for_arch"
        else None,
        family_id=family_id,
        version_id=getattr(heldout, "version_id", None),
    )
    return RunManifest(
        run_id=plan.run_id,
        created_at=_now(),
        competition=competition,
        recipe_mode=recipe_mode,
        profile=ProfileRef(name=profile.name, version=profile.version, official=profile.official),
        regime=RegimeRef(
            name=regime.name,
            max_parameters=regime.max_parameters,
            max_layers=regime.max_layers,
            sequence_length=regime.sequence_length,
            train_tokens=regime.train_tokens,
        ),
        seed=plan.seed,
        submission=ids,
        recipe=recipe,
        dataset=dataset,
        hardware=hardware,
        isolation=isolation.mode,
        environment=environment,
        hooks=_hooks_table(report, submission),
        training_files=list(getattr(submission, "training_files", []) or []),
        timings_s={k: round(v, 3) for k, v in timings.items()},
        metrics=metrics,
        diagnostics=diagnostics,
        comparability=Comparability(
            tokenizer=data.tokenizer,
            sequence_length=regime.sequence_length,
            heldout_windows=profile.heldout.windows,
            heldout_seed=heldout_seed,
            profile_key=profile.key,
        ),
        validation=Validation(score_eligible=not reasons, reasons=reasons),
        status=Status(state="failed" if failure else "succeeded", failure=failure),
        artifacts=artifacts,
    )


__all__ = ["describe_data", "evaluate", "read_probe_records", "validation_reasons"]
