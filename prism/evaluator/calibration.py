"""Compute calibration: what an honest model of a regime's budget costs on this validator.

The host times every training run from outside (CPU seconds of the sandboxed tree on CPU, wall
time from ``hello`` to exit on GPU) and compares it with a calibration it measured itself: the
same harness loop, in the same sandbox, training PRISM's own reference GPT
(:mod:`prism.evaluator.reference_model`) at the regime's parameter budget. Two short runs
(``SHORT`` and ``LONG`` fractions of the reference step count) give a fixed cost (start-up,
build, save) and a cost per training token; the expected compute of a run of ``N`` tokens is
``fixed + per_token * N``. The ratio ``measured / expected`` goes into the manifest; above the
profile's ``limits.compute_cap`` it is ``budget.compute_exceeded`` (a miner fault).

Calibrations are cached as JSON in the state dir, keyed by everything that changes the cost:
the hardware, the software stack, the profile and the regime. New hardware re-measures.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import hashlib
import importlib.metadata
import json
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from prism import __version__ as prism_version
from prism.errors import InfrastructureFault
from prism.evaluator import sandbox as sb
from prism.evaluator.context import ContextValues, RunSpec
from prism.evaluator.progress import RunProgress
from prism.evaluator.recipe import reference_steps
from prism.evaluator.train_phase import TrainingJob, run_training
from prism.profiles import Profile, Regime

logger = logging.getLogger(__name__)

#: The two reference runs: far enough apart that the start-up's jitter does not swamp the cost
#: per token (12 steps apart it varied 10x between sessions; the attack corpus measured it).
SHORT_FRACTION, LONG_FRACTION = 0.05, 0.4
MIN_SHORT_STEPS, MIN_LONG_STEPS, MIN_GAP_STEPS = 4, 32, 8
#: v3: runs commit their shipped constants at start-up (the program check), so the calibration does too.
SCHEMA = "prism_calibration.v3"


class Calibration(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: str = SCHEMA
    key: str
    kind: str  # cpu_s | wall_s
    fixed_s: float
    per_token_s: float
    points: list[tuple[int, float]]  # (training tokens, measured seconds)
    hardware: dict[str, str]
    measured_at: str

    def expected(self, tokens: int) -> float:
        return self.fixed_s + self.per_token_s * tokens


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _gpu_names() -> str:
    if shutil.which("nvidia-smi") is None:
        return ""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return ",".join(sorted(line.strip() for line in out.stdout.splitlines() if line.strip()))


def hardware_fingerprint(device: str) -> dict[str, str]:
    try:
        torch_version = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        torch_version = "none"
    return {
        "cpu": _cpu_model(),
        "cores": str(os.cpu_count()),
        "gpus": _gpu_names() if device == "cuda" else "",
        "torch": torch_version,
        "prism": prism_version,
        "python": platform.python_version(),
    }


def calibration_key(profile: Profile, regime: Regime, nproc: int, hardware: dict[str, str]) -> str:
    blob = json.dumps(
        [SCHEMA, profile.key, regime.model_dump(), nproc, profile.device, hardware], sort_keys=True
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def _steps(regime: Regime) -> tuple[int, ...]:
    """Step counts of the reference runs: two, or one (the whole run) when the regime is too short
    to put two far enough apart."""
    total = reference_steps(regime)
    short = min(total, max(MIN_SHORT_STEPS, round(SHORT_FRACTION * total)))
    long = min(total, max(MIN_LONG_STEPS, short + MIN_GAP_STEPS, round(LONG_FRACTION * total)))
    return (short, long) if long - short >= MIN_GAP_STEPS else (total,)


def _fit(points: list[tuple[int, float]]) -> tuple[float, float]:
    """(fixed seconds, seconds per token). With one point, or two whose difference is noise (the
    longer run measured no more), everything is charged per token: the estimate is then exact at
    the measured length and conservative below it."""
    (t2, s2) = points[-1]
    if len(points) == 2:
        t1, s1 = points[0]
        if t2 > t1 and s2 > s1:
            per_token = (s2 - s1) / (t2 - t1)
            return max(0.0, s1 - per_token * t1), per_token
    return 0.0, max(s2 / max(t2, 1), 1e-12)


def _measure(
    profile: Profile,
    regime: Regime,
    steps: int,
    data_dir: Path,
    vocab: int,
    eos: int,
    nproc: int,
    isolation: sb.IsolationProbe,
    work: Path,
) -> tuple[int, float, str]:
    """Train the reference GPT for ``steps`` in the sandbox; (tokens, seconds, kind) as measured."""
    tokens = steps * regime.batch_size * regime.sequence_length
    short = regime.model_copy(update={"train_tokens": tokens})
    root = work / f"steps-{steps}"
    for sub in ("sandbox_out", "spec", "weights"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    context = ContextValues(
        vocab_size=vocab,
        sequence_length=regime.sequence_length,
        max_layers=regime.max_layers,
        max_parameters=regime.max_parameters,
        seed=0,
        train_tokens=tokens,
    )
    spec = RunSpec(
        run_id=f"calibration-{steps}", builtin_model="reference", feed_socket="", out_dir=str(root / "sandbox_out"),
        recipe_mode="reference", regime=short, context=context, eos_id=eos, lr_window=profile.lr_window,
        probe_every_steps=profile.probe.every_steps, probe_fraction=profile.probe.fraction, device=profile.device,
        torch_threads=4 if profile.device == "cuda" else 1, log_every_steps=50,
        commit_constants=profile.heldout.program_windows > 0,  # the same start-up as a run's
    )  # fmt: skip
    job = TrainingJob(
        spec=spec, root=root, sandbox_out=root / "sandbox_out", spec_dir=root / "spec", weights_dir=root / "weights",
        data_dir=data_dir, vocab_size=vocab, nproc=nproc, limits=sb.SandboxLimits.from_profile(profile.limits, phase="train", device=profile.device),
        binds=tuple(sb.python_binds()) + (tuple(sb.gpu_binds()) if profile.device == "cuda" else ()), isolation=isolation, progress=RunProgress(False),
    )  # fmt: skip
    outcome = run_training(job)
    if outcome.compute is None or outcome.sandbox is None or outcome.sandbox.exit_code != 0:
        tail = outcome.sandbox.log_tail[-800:] if outcome.sandbox else str(outcome.launch_error)
        raise InfrastructureFault(f"the compute calibration run failed: {tail}", code="calibration.failed")
    return tokens, outcome.compute.seconds, outcome.compute.kind


def calibrate(
    profile: Profile,
    regime: Regime,
    *,
    data_dir: Path,
    vocab_size: int,
    eos_id: int,
    nproc: int,
    cache_dir: Path,
    isolation: sb.IsolationProbe,
) -> Calibration:
    """The cached calibration for this hardware and regime, measured now when there is none.

    Evaluations on one machine (two workers, two validators sharing a state dir) may ask at once:
    the first measures under a lock, the others wait and read what it wrote."""
    hardware = hardware_fingerprint(profile.device)
    key = calibration_key(profile, regime, nproc, hardware)
    path = cache_dir / f"calibration-{key}.json"
    cache_dir.mkdir(parents=True, exist_ok=True)
    with _locked(cache_dir / f"calibration-{key}.lock"):
        cached = _cached(path)
        if cached is not None:
            return cached
        logger.info("calibrating training compute for %s/%s on this machine", profile.key, regime.name)
        for stale in cache_dir.glob(f"work-{key}*"):  # left by a measurement that was killed
            shutil.rmtree(stale, ignore_errors=True)
        work = Path(tempfile.mkdtemp(prefix=f"work-{key}-", dir=cache_dir))
        try:
            points = [
                _measure(profile, regime, steps, data_dir, vocab_size, eos_id, nproc, isolation, work)
                for steps in _steps(regime)
            ]
        finally:
            shutil.rmtree(work, ignore_errors=True)
        kind = points[0][2]
        measured = [(tokens, seconds) for tokens, seconds, _ in points]
        fixed, per_token = _fit(measured)
        calibration = Calibration(
            key=key, kind=kind, fixed_s=fixed, per_token_s=per_token, points=measured,
            hardware=hardware, measured_at=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        )  # fmt: skip
        tmp = path.with_suffix(".tmp")
        tmp.write_text(calibration.model_dump_json(indent=2), encoding="utf-8")
        tmp.replace(path)
        return calibration


def _cached(path: Path) -> Calibration | None:
    if not path.is_file():
        return None
    try:
        return Calibration.model_validate_json(path.read_text(encoding="utf-8"))
    except ValueError:
        logger.warning("ignoring an unreadable calibration %s", path)
        return None


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``path`` (released when the process dies, too)."""
    with path.open("a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


__all__ = ["Calibration", "calibrate", "calibration_key", "hardware_fingerprint"]
