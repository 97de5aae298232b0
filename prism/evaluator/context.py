"""What the host tells the in-sandbox runner, and what the runner tells the host back.

This module is torch-free on purpose: the host builds a :class:`RunSpec`, writes it as JSON into
a read-only directory of the sandbox, and later parses the runner's :class:`RunnerReport`. The
runner (inside the sandbox) reads the same models. :func:`make_context` builds the
:class:`~prism.evaluator.interface.PrismContext` a submission sees, in one place, so the runner and
the held-out evaluation hand out identical contexts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from prism.evaluator.interface import CHECKPOINT_API_VERSION, PrismContext
from prism.profiles import CanonicalContext, Regime

RUN_SPEC_FILENAME = "run_spec.json"
RUNNER_REPORT_FILENAME = "runner_report.json"
PROBE_FILENAME = "probe.jsonl"
WEIGHTS_FILENAME = "weights.safetensors"
CHECKPOINT_DIRNAME = "checkpoints"
CHECKPOINT_RECORD_FILENAME = "checkpoint_record.json"

#: Runner exit codes. The host trusts the sandbox's own verdicts (timeout, memory) over these, and
#: treats any other non-zero exit without a report as a miner fault (miner code can call os._exit).
EXIT_OK = 0
EXIT_MINER_FAULT = 3
EXIT_INFRA_FAULT = 4


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ContextValues(_Strict):
    """The values of :class:`PrismContext` that the host decides (rank fields come from torchrun)."""

    vocab_size: int
    sequence_length: int
    max_layers: int
    max_parameters: int
    seed: int
    attempt: int = 0
    checkpoint_dir: str | None = None
    resume_checkpoint_dir: str | None = None
    checkpoint_metadata: dict[str, Any] = Field(default_factory=dict)
    train_tokens: int | None = None


class RunSpec(_Strict):
    """Everything the runner needs; written by the host as ``run_spec.json`` (read-only inside).

    It names no data: the runner gets its batches from the host over ``feed_socket``.
    """

    run_id: str
    submission_dir: str | None = Field(default=None, description="None with builtin_model")
    architecture_entrypoint: str = "model.py"
    training_entrypoint: str | None = None
    builtin_model: Literal["reference"] | None = Field(
        default=None, description="train PRISM's reference GPT instead of a submission (calibration)"
    )
    feed_socket: str
    out_dir: str
    recipe_mode: Literal["reference", "submitted"]
    regime: Regime
    context: ContextValues
    eos_id: int
    lr_window: tuple[float, float]
    probe_every_steps: int = Field(gt=0)
    probe_fraction: float = Field(gt=0.0, le=1.0)
    device: Literal["cpu", "cuda"] = "cpu"
    torch_threads: int = Field(default=1, ge=1)
    checkpoint_every_steps: int = Field(default=0, ge=0, description="0: save only at the end")
    resume_step: int = Field(default=0, ge=0, description="first step to run on an approved retry")
    log_every_steps: int = Field(default=50, gt=0)
    commit_constants: bool = Field(
        default=False,
        description="rank 0 commits its fresh model's shipped constants with the recipe (the program check runs)",
    )

    def write(self, directory: Path) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / RUN_SPEC_FILENAME
        path.write_text(self.model_dump_json(indent=2), encoding="utf-8")
        return path

    @classmethod
    def read(cls, path: Path) -> RunSpec:
        return cls.model_validate_json(Path(path).read_text(encoding="utf-8"))


class HookUse(_Strict):
    present: bool
    used: bool
    source_file: str | None = None


class CheckpointInfo(_Strict):
    """A checkpoint the harness accepted from ``save_checkpoint`` (paths relative to checkpoint_dir)."""

    path: str
    metadata: dict[str, Any] = Field(default_factory=dict)
    step: int
    workspace_bytes: int


class RunnerFailure(_Strict):
    """What the runner says went wrong: evidence for the host's verdict, never the verdict."""

    code: str
    fault: Literal["miner", "infrastructure"]
    message: str
    phase: str
    frames: list[dict[str, Any]] = Field(default_factory=list)


class RunnerReport(_Strict):
    """What the runner says happened. Evidence only: held-out metrics never come from here."""

    ok: bool
    failure: RunnerFailure | None = None
    world_size: int = 1
    distributed_backend: str | None = None
    device_type: Literal["cpu", "cuda"] = "cpu"
    gpu_count: int = 0
    device_names: list[str] = Field(default_factory=list)
    torch_version: str | None = None
    cuda_version: str | None = None
    cudnn_version: str | None = None
    torch_threads: int | None = None
    hooks: dict[str, HookUse] = Field(default_factory=dict)
    recipe_declared: dict[str, Any] = Field(default_factory=dict)
    recipe_effective: dict[str, Any] = Field(default_factory=dict)
    recipe_clamped: list[str] = Field(default_factory=list)
    parameter_count: int | None = None
    layer_count: int | None = None
    steps: int = 0
    planned_steps: int = 0
    tokens: int = 0
    bytes: int = 0
    final_train_loss_nats: float | None = None
    nonfinite_loss: bool = False
    nonfinite_step: int | None = None
    probe_source: Literal["train_loss", "inference"] | None = None
    timings_s: dict[str, float] = Field(default_factory=dict)
    checkpoint: CheckpointInfo | None = None
    resumed_from_step: int | None = None


def make_context(
    values: ContextValues | CanonicalContext | dict[str, Any],
    *,
    vocab_size: int | None = None,
    seed: int | None = None,
    rank: int = 0,
    local_rank: int = 0,
    world_size: int = 1,
    device: str = "cpu",
    distributed_backend: str | None = None,
    checkpoint_dir: str | None = None,
    resume_checkpoint_dir: str | None = None,
    attempt: int | None = None,
    checkpoint_metadata: dict[str, Any] | None = None,
    total_steps: int | None = None,
) -> PrismContext:
    """Build the :class:`PrismContext` a submission sees from a regime's values or the canonical context.

    Keyword arguments override what ``values`` carries (``vocab_size`` and ``seed`` are required
    for a :class:`CanonicalContext`, which holds neither a seed nor a checkpoint directory).
    """
    data = values.model_dump() if isinstance(values, BaseModel) else dict(values)
    resume_dir = (
        resume_checkpoint_dir if resume_checkpoint_dir is not None else data.get("resume_checkpoint_dir")
    )
    return PrismContext(
        vocab_size=int(vocab_size if vocab_size is not None else data["vocab_size"]),
        sequence_length=int(data["sequence_length"]),
        max_layers=int(data["max_layers"]),
        max_parameters=int(data["max_parameters"]),
        seed=int(seed if seed is not None else data.get("seed", 0)),
        checkpoint_dir=checkpoint_dir if checkpoint_dir is not None else data.get("checkpoint_dir"),
        resume_checkpoint_dir=resume_dir,
        checkpoint_api_version=CHECKPOINT_API_VERSION,
        attempt=int(attempt if attempt is not None else data.get("attempt", 0)),
        is_resume=resume_dir is not None,
        rank=rank,
        local_rank=local_rank,
        world_size=world_size,
        distributed_backend=distributed_backend,
        device=device,
        checkpoint_metadata=dict(
            checkpoint_metadata if checkpoint_metadata is not None else data.get("checkpoint_metadata") or {}
        ),
        train_tokens=data.get("train_tokens"),
        total_steps=total_steps,
    )
