"""Evaluation profiles as versioned data (one YAML file per profile, next to this module).

A profile fixes everything that makes two runs comparable: tokenizer, proxy regimes (parameter
and token budgets), seeds, held-out sampling, the learning-rate window of the reference recipe,
resource limits and the gates. Scoring compares runs only within one ``(name, version)``.
This module is pure data: it imports neither torch nor bittensor.
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from prism.errors import OperatorError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Regime(_Strict):
    """One proxy regime: the budget a submission is built for and trained under."""

    name: str
    max_parameters: int = Field(gt=0)
    max_layers: int = Field(gt=0)
    sequence_length: int = Field(gt=0)
    train_tokens: int = Field(gt=0)
    batch_size: int = Field(gt=0, description="reference-recipe global batch, in sequences")
    batch_size_cap: int = Field(gt=0, description="largest global batch a recipe may declare")


class HeldoutSpec(_Strict):
    windows: int = Field(gt=0)
    batch_size: int = Field(gt=0)
    seed: int = Field(
        description="default held-out sampling seed (local runs; validators use the chain beacon)"
    )
    lie_shift_bpb: float = Field(
        default=0.0005,
        gt=0.0,
        description="the smallest bpb shift a forged reveal must not survive (a tenth of the margin)",
    )
    lie_survival: float = Field(default=1e-6, gt=0.0, lt=1.0, description="survival bound for such a lie")
    position_cap_factor: float = Field(
        default=3.0, gt=0.0, description="each position's loss is capped at factor * ln V nats"
    )
    replay_fraction: float = Field(
        default=0.125, ge=0.0, le=1.0, description="windows re-answered by the replay"
    )
    replay_tolerance_nats: float = Field(
        default=1e-3,
        gt=0.0,
        description="largest honest |log p| drift between the main process and the replay",
    )
    program_windows: int = Field(
        default=2,
        ge=0,
        description="windows from fresh OS entropy the main process's recorded program is executed on where no "
        "submission ran (the family window, from the held-out seed, comes on top; 0 turns the check off)",
    )


class ProbeSpec(_Strict):
    every_steps: int = Field(gt=0)
    fraction: float = Field(gt=0.0, le=1.0, description="share of each batch probed before the update")


class Limits(_Strict):
    train_wall_s: float = Field(gt=0)
    eval_wall_s: float = Field(gt=0)
    memory_bytes: int = Field(gt=0)
    pids: int = Field(gt=0)
    cpu_s: int = Field(gt=0)
    fsize_bytes: int = Field(gt=0)
    nofile: int = Field(gt=0)
    log_bytes: int = Field(gt=0)
    compute_cap: float | None = Field(
        default=None, gt=1.0, description="training compute may be at most this multiple of the calibration"
    )
    eval_compute_cap: float = Field(
        default=4.0,
        gt=1.0,
        description="each held-out process may spend start-up plus this many calibrated training token costs "
        "per held-out position (a forward costs about a third of one): more is training at evaluation",
    )


class Gates(_Strict):
    smuggle_factor: float = Field(gt=0.0, lt=1.0, description="early probe losses must exceed factor*ln(V)")
    smuggle_early_fraction: float = Field(
        default=0.02,
        gt=0.0,
        le=1.0,
        description="the share of training whose probes the smuggling gate reads",
    )
    max_train_heldout_gap_bpb: float = Field(gt=0.0)


class CanonicalContext(_Strict):
    """The small context at which the architecture graph (family identity) is recorded."""

    vocab_size: int
    sequence_length: int
    max_parameters: int
    max_layers: int


class Profile(_Strict):
    name: str
    version: int = Field(ge=1)
    official: bool
    description: str
    tokenizer: Literal["byte", "gpt2"]
    device: Literal["cpu", "cuda"]
    nproc_per_node: int = Field(ge=1, le=8)
    seeds: tuple[int, ...] = Field(min_length=1)
    regimes: tuple[Regime, ...] = Field(min_length=1)
    heldout: HeldoutSpec
    probe: ProbeSpec
    lr_window: tuple[float, float]
    limits: Limits
    gates: Gates
    canonical_context: CanonicalContext

    @model_validator(mode="after")
    def _check(self) -> Profile:
        lo, hi = self.lr_window
        if not 0 < lo < hi:
            raise ValueError("lr_window must be (low, high) with 0 < low < high")
        names = [r.name for r in self.regimes]
        if len(set(names)) != len(names):
            raise ValueError("regime names must be unique")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError("seeds must be unique")
        return self

    @property
    def key(self) -> str:
        """``name@version``: the identity scoring compares runs under."""
        return f"{self.name}@{self.version}"

    def regime(self, name: str) -> Regime:
        for regime in self.regimes:
            if regime.name == name:
                return regime
        raise OperatorError(
            f"profile {self.name} has no regime {name!r} (has: {', '.join(r.name for r in self.regimes)})",
            code="profile.unknown_regime",
        )


PROFILE_NAMES: tuple[str, ...] = ("local_cpu_smoke", "gpu_proxy_eval", "full_scale_eval")


@cache
def load_profile(name: str) -> Profile:
    """Load a built-in profile by name, or a custom one from a ``.yaml`` path.

    Custom profiles let an operator (or a test) pin different budgets; scoring still compares
    runs only within one ``name@version``, so a custom profile never mixes with official runs.
    """
    if name.endswith((".yaml", ".yml")):
        return _load_profile_file(Path(name))
    if name not in PROFILE_NAMES:
        raise OperatorError(
            f"unknown profile {name!r}; choose one of {', '.join(PROFILE_NAMES)}", code="profile.unknown"
        )
    text = resources.files(__package__).joinpath(f"{name}.yaml").read_text(encoding="utf-8")
    try:
        return Profile.model_validate(yaml.safe_load(text))
    except ValidationError as exc:  # a broken built-in profile is our bug, not the operator's
        raise OperatorError(f"profile {name} is invalid: {exc}", code="profile.invalid") from exc


def _load_profile_file(path: Path) -> Profile:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        profile = Profile.model_validate(data)
    except OSError as exc:
        raise OperatorError(f"cannot read profile {path}: {exc}", code="profile.unreadable") from exc
    except (yaml.YAMLError, ValidationError) as exc:
        raise OperatorError(f"profile {path} is invalid: {exc}", code="profile.invalid") from exc
    if profile.name in PROFILE_NAMES:
        raise OperatorError(
            f"profile {path} reuses the built-in name {profile.name!r}; give custom profiles their own name",
            code="profile.name_taken",
        )
    return profile


def all_profiles() -> list[Profile]:
    return [load_profile(name) for name in PROFILE_NAMES]
