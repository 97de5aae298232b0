"""The validator's status file: a typed snapshot written every step, read by operators' tools.

``<state_dir>/status.json`` is replaced atomically. ``prism localnet`` and the tests wait on it;
it is a view for people and tools, never an input to scoring.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

logger = logging.getLogger(__name__)

STATUS_FILENAME = "status.json"


class InFlight(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    label: str
    slots: list[str]


class EvaluationStats(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: str
    slots: int
    in_flight: list[InFlight] = Field(default_factory=list)
    finished_runs: int = 0
    mean_run_s: float | None = None
    max_concurrent: int = 0
    paired: dict[str, int] = Field(default_factory=dict, description="paired re-measurements by state")


class ValidatorStatus(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    hotkey: str
    block: int
    step: int
    submissions: int
    runs: dict[str, int] = Field(description="runs by queue state")
    pending_runs: int = Field(description="runs still to do: held, queued or running")
    pending_paired: int = Field(default=0, description="paired re-measurements still to do: wanted or running")
    evaluation: EvaluationStats
    last_weights_block: int | None = None
    last_weights: dict[str, float] = Field(default_factory=dict)
    weights_current: bool = Field(description="weights were set after the latest result was recorded")
    seconds_to_first_weights: float | None = None
    updated_at: float


def write_status(state_dir: Path, status: ValidatorStatus) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    tmp = state_dir / f"{STATUS_FILENAME}.tmp"
    tmp.write_text(status.model_dump_json(indent=2), encoding="utf-8")
    tmp.replace(state_dir / STATUS_FILENAME)


def read_status(state_dir: Path) -> ValidatorStatus | None:
    """The last status the validator wrote; None before its first step (or if unreadable)."""
    try:
        return ValidatorStatus.model_validate(
            json.loads((state_dir / STATUS_FILENAME).read_text(encoding="utf-8"))
        )
    except (OSError, ValueError, ValidationError) as exc:
        logger.debug("no readable status in %s: %s", state_dir, exc)
        return None
