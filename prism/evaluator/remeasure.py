"""Paired re-measurement: a finished run's stored weights scored on another run's held-out windows.

When a challenger meets an incumbent, scoring (rules v2, ``prism.scoring.paired``) compares both
on the challenger's windows. The incumbent's weights were written by its own training run and
checked then; here they are evaluated again, in fresh sandboxes, on windows chosen by the
challenger run's held-out seed, with the same protocol as any held-out measurement (commitment,
spot checks, prefix replay; ``run_heldout``). The incumbent's process cannot tell these windows
from its own: both are held-out windows of the same split.

Whose fault a failure is follows the same rule as a run's own measurement. A failure blamed on
the model means weights that once measured fine no longer do (a model that checks the date, for
example): scoring treats the model as having forfeited the contest.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from prism import data as prism_data
from prism.errors import InfrastructureFault
from prism.evaluator import sandbox as sb
from prism.evaluator.artifacts import make_read_only, make_writable
from prism.evaluator.context import WEIGHTS_FILENAME, ContextValues
from prism.evaluator.heldout_phase import run_heldout
from prism.evaluator.heldout_wire import EvalProcessSpec
from prism.evaluator.verdicts import host_errors_typed
from prism.manifest import Failure, RunManifest
from prism.profiles import Profile
from prism.submission.intake import Submission

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Remeasurement:
    """Per-window nats of the model on the windows (``failure`` set, and no nats, when it failed)."""

    window_bytes: tuple[int, ...]
    nats: tuple[float, ...]
    failure: Failure | None


def challenger_windows(challenger: RunManifest, data_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """The held-out windows the challenger run was measured on, rebuilt from its manifest."""
    windows, window_bytes = prism_data.heldout_windows(
        data_dir,
        split="val",
        n_windows=challenger.dataset.heldout_windows,
        seq_len=challenger.regime.sequence_length,
        seed=challenger.dataset.heldout_seed,
    )
    return windows, window_bytes


def _check_comparable(model: RunManifest, challenger: RunManifest, data_fingerprint: str) -> None:
    problems = []
    if model.status.state != "succeeded":
        problems.append(f"model run {model.run_id} did not succeed")
    same_profile = (model.profile.name, model.profile.version) == (
        challenger.profile.name,
        challenger.profile.version,
    )
    if not same_profile or model.regime.name != challenger.regime.name:
        problems.append("the two runs are of different profiles or regimes")
    for run in (model, challenger):
        if run.dataset.manifest_sha256 != data_fingerprint:
            problems.append(f"run {run.run_id} used other prepared data than this validator holds")
    if problems:
        raise InfrastructureFault(
            "cannot pair these runs: " + "; ".join(problems), code="paired.not_comparable"
        )


def _spec(
    model: RunManifest, weights: Path, submission_dir: Path, submission: Submission, profile: Profile
) -> EvalProcessSpec:
    from prism.evaluator.host import default_torch_threads

    regime = profile.regime(model.regime.name)
    context = ContextValues(
        vocab_size=model.dataset.tokenizer.vocab_size, sequence_length=regime.sequence_length,
        max_layers=regime.max_layers, max_parameters=regime.max_parameters, seed=model.seed,
        train_tokens=regime.train_tokens,
    )  # fmt: skip
    return EvalProcessSpec(
        submission_dir=str(submission_dir),
        architecture_entrypoint=submission.architecture_entrypoint,
        training_entrypoint=submission.training_entrypoint,
        weights_path=str(weights),
        context=context.model_dump(),
        canonical_context=profile.canonical_context.model_dump(),
        total_steps=model.metrics.train_steps or None,
        use_inference_hooks=model.recipe_mode == "submitted",
        device=profile.device,
        torch_threads=default_torch_threads(profile.device),
        max_batch_size=profile.heldout.batch_size,
        record_graphs=False,
    )


def remeasure(
    *,
    model_zip: Path,
    model_manifest: RunManifest,
    model_run_dir: Path,
    challenger: RunManifest,
    profile: Profile,
    data_dir: Path,
    log_dir: Path,
    isolation: sb.IsolationProbe | None = None,
    architecture_zip: Path | None = None,
) -> Remeasurement:
    """Evaluate the model run's stored weights on the challenger run's windows.

    Raises ``InfrastructureFault`` when the two runs cannot be paired here (other data, a missing
    weights file); a failure of the measurement itself is returned. ``architecture_zip``: the
    canonical ZIP a training variant's model trained on (its manifest names it).
    """
    from prism.evaluator.plan import describe_data
    from prism.submission import load_submission

    data = describe_data(Path(data_dir).resolve(), profile)
    _check_comparable(model_manifest, challenger, data.fingerprint)
    weights = model_run_dir / "weights" / WEIGHTS_FILENAME
    if not weights.is_file():
        raise InfrastructureFault(
            f"weights of run {model_manifest.run_id} are gone ({weights})", code="paired.no_weights"
        )
    windows, window_bytes = challenger_windows(challenger, data.path)
    submission = load_submission(model_zip)
    if architecture_zip is not None:  # a training variant's weights: its runs trained the canonical's files
        from prism.submission.compose import compose_training_variant

        submission = compose_training_variant(submission, load_submission(architecture_zip))
    log_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="prism-remeasure-") as tmp:
        submission_dir = Path(tmp) / "submission"
        submission.write_to(submission_dir)
        make_read_only(submission_dir)
        try:
            with host_errors_typed(f"paired re-measurement of run {model_manifest.run_id}"):
                result = run_heldout(
                    _spec(model_manifest, weights, submission_dir, submission, profile),
                    windows=windows,
                    window_bytes=window_bytes,
                    heldout=profile.heldout,
                    limits=sb.SandboxLimits.from_profile(profile.limits, phase="eval", device=profile.device),
                    log_dir=log_dir,
                    isolation=isolation or sb.probe_isolation(),
                    extra_binds=tuple(sb.gpu_binds()) if profile.device == "cuda" else (),
                )
        finally:
            make_writable(submission_dir)
    nats = result.window_nats
    if result.failure is not None or nats is None:
        return Remeasurement(tuple(int(b) for b in window_bytes), (), result.failure)
    return Remeasurement(tuple(int(b) for b in window_bytes), tuple(float(x) for x in nats), None)
