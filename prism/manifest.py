"""``prism_run_manifest.v1.json``: the only contract between the evaluator and scoring.

The host writes one manifest per run (one submission x regime x seed x recipe mode). Every value
in it was measured or decided by the host: the held-out bits-per-byte comes from a separate
sandboxed evaluation process, the probe curve is evidence streamed from the training process,
and nothing a submission writes to disk is read as a metric. The schema is strict
(``extra="forbid"``) so a manifest that does not parse is never scored.

Paths under ``artifacts`` are relative to the run's artifact root (the directory holding the
manifest), never host paths.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from prism.beacon import BeaconRef
from prism.errors import InfrastructureFault

#: The manifest schema. v2 (evaluator 0.2): host-fed training data, the forge-proof reveal, prefix
#: replay, host-counted budgets and host-measured compute. Scoring refuses official runs of an
#: older schema (their numbers were computed inside a process that ran submission code).
SCHEMA_VERSION = "prism_run_manifest.v2"
LEGACY_SCHEMA_VERSIONS = ("prism_run_manifest.v1",)
#: The file name is part of the submission contract and stays as it is across schema versions.
MANIFEST_FILENAME = "prism_run_manifest.v1.json"

RecipeMode = Literal["reference", "submitted"]
Competition = Literal["architecture", "training"]
Isolation = Literal["bwrap", "degraded"]
RunState = Literal["succeeded", "failed"]
Fault = Literal["miner", "infrastructure"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ProfileRef(_Strict):
    name: str
    version: int
    official: bool


class RegimeRef(_Strict):
    name: str
    max_parameters: int
    max_layers: int
    sequence_length: int
    train_tokens: int


class SubmissionIds(_Strict):
    zip_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    kind: Literal["full", "architecture_only", "training_for_arch"]
    architecture_fingerprint: str = Field(pattern=r"^[0-9a-f]{64}$")
    training_fingerprint: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    target_architecture_id: str | None = Field(
        default=None, description="architecture_id declared by a training_for_arch submission"
    )
    family_id: str | None = Field(default=None, description="topology-only fingerprint of the running model")
    version_id: str | None = Field(default=None, description="topology plus sizes")
    family_ops: list[str] | None = Field(
        default=None, description="the folded canonical op tokens the family id hashes (near-duplicate rule)"
    )
    architecture_zip_sha256: str | None = Field(
        default=None,
        pattern=r"^[0-9a-f]{64}$",
        description="a training_for_arch's run: the ZIP whose architecture files it trained (the family's canonical)",
    )


class RecipeRecord(_Strict):
    declared: dict[str, object] = Field(description="what get_recipe returned, as JSON")
    effective: dict[str, object] = Field(description="what the harness actually used")
    clamped: list[str] = Field(default_factory=list, description="fields the harness changed")


class ShardRef(_Strict):
    name: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    tokens: int


class TokenizerRef(_Strict):
    name: str
    fingerprint: str
    vocab_size: int
    eos_id: int


class DatasetRecord(_Strict):
    source: str = Field(
        description="e.g. 'hf:HuggingFaceFW/fineweb-edu', 'local:parquet', 'offline:docstrings'"
    )
    is_fineweb_edu: bool
    revision: str | None = None
    config: str | None = None
    manifest_sha256: str = Field(description="sha256 of the prepared shard directory's MANIFEST.json")
    split_rule: str
    tokenizer: TokenizerRef
    train_shards: list[ShardRef]
    heldout_shards: list[ShardRef]
    heldout_seed: int
    heldout_windows: int


class HardwareRecord(_Strict):
    device_type: Literal["cpu", "cuda"]
    gpu_count: int = 0
    device_names: list[str] = Field(default_factory=list)
    world_size: int = 1
    distributed_backend: str | None = None


class EnvironmentRecord(_Strict):
    python: str
    torch: str | None = None
    cuda: str | None = None
    prism: str
    platform: str


class HookRecord(_Strict):
    present: bool
    used: bool
    source_file: str | None = Field(default=None, description="submission-relative file defining the hook")


class ProbePoint(_Strict):
    step: int
    tokens_seen: int = Field(description="training tokens consumed before this probe (global)")
    loss_nats: float = Field(description="mean nats/token of the probed slice, before the update")
    bpb: float


class HeldoutPoint(_Strict):
    tokens_seen: int
    bpb: float


class Metrics(_Strict):
    heldout_bpb: float | None = Field(
        default=None, description="held-out bits per UTF-8 byte; lower is better"
    )
    heldout_loss_nats: float | None = None
    heldout_tokens: int = 0
    heldout_bytes: int = 0
    probe_bpb: float | None = Field(
        default=None, description="mean online probe bpb over the last half of training"
    )
    first_probe_loss_nats: float | None = None
    early_probe_loss_nats: float | None = Field(
        default=None, description="lowest probe loss over the first smuggle_early_fraction of training"
    )
    probe_source: Literal["train_loss", "inference"] | None = Field(
        default=None, description="train_loss: the update's own loss before the step (reference recipe)"
    )
    final_train_loss_nats: float | None = None
    train_bpb: float | None = Field(default=None, description="probe bpb at the end of training")
    train_heldout_gap_bpb: float | None = None
    probe_curve: list[ProbePoint] = Field(default_factory=list)
    loss_vs_tokens: list[HeldoutPoint] = Field(default_factory=list)
    train_tokens: int = 0
    train_bytes: int = 0
    train_steps: int = 0
    parameter_count: int | None = None
    layer_count: int | None = None
    flops_per_token: float | None = None
    nonfinite_loss: bool = False
    nonfinite_step: int | None = Field(default=None, description="first step whose loss was not finite")

    @field_validator(
        "heldout_bpb", "probe_bpb", "first_probe_loss_nats", "early_probe_loss_nats", "train_bpb"
    )
    @classmethod
    def _finite_or_none(cls, value: float | None) -> float | None:
        # JSON cannot carry NaN; a non-finite measurement is recorded as None plus nonfinite_loss.
        if value is not None and not math.isfinite(value):
            raise ValueError("metric must be finite (record non-finite results via nonfinite_loss)")
        return value


class ComputeRecord(_Strict):
    """Training compute as the host measured it from outside, against its own calibration."""

    kind: Literal["cpu_s", "wall_s"] = Field(description="cpu_s: CPU seconds of the tree; wall_s: GPU runs")
    measured_s: float
    expected_s: float | None = Field(default=None, description="the calibrated reference at this budget")
    ratio: float | None = Field(default=None, description="measured / expected")
    cap: float | None = Field(default=None, description="the profile's cap on the ratio (None: not enforced)")
    calibration_key: str | None = None


class ThroughputRecord(_Strict):
    """Training speed as the host timed it (from the plan to the end of the training sandbox)."""

    tokens_per_s: float
    train_flops_per_token: float | None = Field(
        default=None, description="3 x the forward FLOPs per token recorded at the run's context (evidence)"
    )
    device: str | None = Field(default=None, description="what the host's driver reports")
    peak_flops: float | None = Field(default=None, description="dense bf16 peak of that device, FLOP/s")
    mfu: float | None = Field(default=None, description="model FLOPs utilisation: achieved / peak")


class BudgetRecord(_Strict):
    """Budgets counted by the host from the trained weights file (every tensor, each storage once)."""

    parameter_count: int
    layer_count: int
    tensors: int
    weights_bytes: int


class IntegrityRecord(_Strict):
    """How the held-out measurement was checked (see docs/evaluator_measurement.md)."""

    positions: int = 0
    spot_rows: int = Field(default=0, description="logit rows the host recomputed after z was committed")
    spot_fraction: float = 0.0
    lie_survival_bound: float | None = Field(
        default=None, description="bound on the chance a lie moving bpb by lie_shift_bpb survives the spots"
    )
    lie_shift_bpb: float | None = None
    replay_pairs: int = 0
    replay_positions: int = 0
    replay_max_deviation_nats: float | None = None
    replay_tolerance_nats: float | None = None
    program_windows: int = Field(
        default=0, description="windows the recorded inference pass was executed on where no submission ran"
    )
    program_max_deviation_nats: float | None = None
    program_family_id: str | None = Field(
        default=None,
        description="the program's family on the public recording batches, derived outside the submission "
        "(compared with the claimed family)",
    )
    program_family_window: int | None = Field(
        default=None, description="the held-out window, drawn from the held-out seed, of the window family"
    )
    program_window_family_id: str | None = Field(
        default=None,
        description="the program's family on that window: evidence (value-dependent folds change honest families)",
    )
    program_window_only_weights: list[str] = Field(
        default_factory=list,
        description="trained weights the program reads on that window but not on the public batches: evidence",
    )
    clipped_positions: int = Field(default=0, description="positions whose loss hit the per-position cap")


class Diagnostics(_Strict):
    params_sha256_before_eval: str | None = None
    params_sha256_after_eval: str | None = None
    params_changed_during_eval: bool = False
    sandbox_probe: str | None = Field(default=None, description="what the launcher found (bwrap, cgroups)")
    exit_codes: dict[str, int | None] = Field(default_factory=dict)
    log_truncated: bool = False
    advisory: list[str] = Field(
        default_factory=list,
        description="in-process checks that flagged something (evidence only, never a verdict)",
    )
    notes: list[str] = Field(default_factory=list)


class Comparability(_Strict):
    metric: Literal["bits_per_byte"] = "bits_per_byte"
    tokenizer: str
    sequence_length: int
    heldout_windows: int
    heldout_seed: int
    profile_key: str
    stack: str | None = Field(
        default=None,
        description="torch / CUDA / cuDNN versions the run used (runs of other stacks differ slightly)",
    )


class Validation(_Strict):
    score_eligible: bool
    reasons: list[str] = Field(default_factory=list, description="every stable code that makes it ineligible")

    @model_validator(mode="after")
    def _consistent(self) -> Validation:
        if self.score_eligible and self.reasons:
            raise ValueError("a score-eligible run cannot carry ineligibility reasons")
        if not self.score_eligible and not self.reasons:
            raise ValueError("an ineligible run must say why")
        return self


class Frame(_Strict):
    """One stack frame of the submission's own code (paths relative to the submission root)."""

    file: str
    line: int
    function: str
    code: str | None = Field(default=None, description="the source line, stripped")


class Failure(_Strict):
    code: str
    fault: Fault
    message: str
    phase: str | None = None
    frames: list[Frame] = Field(
        default_factory=list, description="the miner's own stack frames, innermost last (evidence)"
    )
    observed: str | None = Field(
        default=None, description="what the host itself observed that decided the fault, if anything"
    )


class Status(_Strict):
    state: RunState
    failure: Failure | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Status:
        if (self.state == "failed") != (self.failure is not None):
            raise ValueError("a failed run needs a failure, a succeeded one must not have one")
        return self


class Artifacts(_Strict):
    architecture_graph: str | None = None
    architecture_metadata: str | None = None
    run_log: str | None = None
    metrics: str | None = None
    checkpoint: str | None = None
    plot: str | None = None
    plot_png: str | None = Field(
        default=None, description="smoothed PNG loss curve (a baseline overlaid by prism eval)"
    )
    window_losses: str | None = Field(
        default=None, description="per-window held-out nats and bytes (JSON), for paired comparisons"
    )
    window_losses_sha256: str | None = None

    @field_validator("*")
    @classmethod
    def _relative(cls, value: str | None) -> str | None:  # (the sha256 field passes: no slash)
        if value is not None and (value.startswith("/") or ".." in Path(value).parts or "\\" in value):
            raise ValueError(f"artifact paths must be artifact-root-relative, got {value!r}")
        return value


class RunManifest(_Strict):
    schema_version: Literal["prism_run_manifest.v1", "prism_run_manifest.v2"] = SCHEMA_VERSION
    evaluator_version: str | None = Field(default=None, description="prism version of the host that wrote it")
    run_id: str
    created_at: str = Field(description="ISO-8601 UTC; informational, never used for scoring")
    competition: Competition
    recipe_mode: RecipeMode
    profile: ProfileRef
    regime: RegimeRef
    seed: int = Field(description="the training seed used")
    nominal_seed: int | None = Field(
        default=None, description="the profile seed this run fills when the seed came from the chain beacon"
    )
    beacon: BeaconRef | None = Field(default=None, description="the block whose hash gave this run's seeds")
    submission: SubmissionIds
    recipe: RecipeRecord | None = None
    dataset: DatasetRecord
    hardware: HardwareRecord
    isolation: Isolation
    environment: EnvironmentRecord
    hooks: dict[str, HookRecord] = Field(default_factory=dict)
    training_files: list[str] = Field(default_factory=list)
    timings_s: dict[str, float] = Field(default_factory=dict)
    metrics: Metrics = Field(default_factory=Metrics)
    compute: ComputeRecord | None = None
    throughput: ThroughputRecord | None = None
    budget: BudgetRecord | None = None
    integrity: IntegrityRecord | None = None
    diagnostics: Diagnostics = Field(default_factory=Diagnostics)
    comparability: Comparability
    validation: Validation
    status: Status
    artifacts: Artifacts = Field(default_factory=Artifacts)

    @property
    def is_current_schema(self) -> bool:
        return self.schema_version == SCHEMA_VERSION

    @property
    def cell_seed(self) -> int:
        """The profile seed of the cell this run fills (the beacon's seed index maps back to it)."""
        return self.nominal_seed if self.nominal_seed is not None else self.seed

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True) + "\n"


def write_manifest(manifest: RunManifest, artifact_root: Path) -> Path:
    """Write atomically (temp file + rename) so a crash never leaves half a manifest."""
    artifact_root.mkdir(parents=True, exist_ok=True)
    target = artifact_root / MANIFEST_FILENAME
    tmp = target.with_suffix(".json.tmp")
    tmp.write_text(manifest.to_json(), encoding="utf-8")
    tmp.replace(target)
    return target


def read_manifest(path: Path) -> RunManifest:
    """Parse and validate a manifest file; a broken one is our fault (the host wrote it)."""
    try:
        return RunManifest.model_validate_json(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValidationError, ValueError) as exc:
        raise InfrastructureFault(f"invalid run manifest {path}: {exc}", code="manifest.invalid") from exc
