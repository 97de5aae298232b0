"""The store's small data types: run keys, queue rows and states (no I/O)."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from prism.manifest import RecipeMode

DB_FILENAME = "validator.sqlite3"
#: Where the validator keeps its state unless told otherwise ($PRISM_HOME, default ~/.prism).
DEFAULT_STORE_DIR = Path(os.environ.get("PRISM_HOME", "~/.prism")).expanduser() / "validator"
#: held: waiting for its submission's first cell (screening) or for the chain beacon;
#: screened: not run, because the first cell was screened out (prism.scoring.screening).
RunQueueState = Literal["held", "queued", "running", "done", "failed", "screened"]
FailureFault = Literal["miner", "infrastructure"]

#: Attempts after which an infrastructure failure stops being retried (the run is then failed).
DEFAULT_MAX_ATTEMPTS = 3


class RunKey(BaseModel):
    """One evaluation cell of one submission: what the queue schedules and manifests describe."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    zip_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    profile: str
    profile_version: int
    regime: str
    seed: int
    recipe_mode: RecipeMode


class RunRow(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    key: RunKey
    state: RunQueueState
    attempts: int
    failure_code: str | None
    failure_fault: str | None
    manifest_path: str | None
    manifest_sha256: str | None


def key_tuple(key: RunKey) -> tuple[str, str, int, str, int, str]:
    return (key.zip_sha256, key.profile, key.profile_version, key.regime, key.seed, key.recipe_mode)


def row_key(row: sqlite3.Row) -> RunKey:
    return RunKey(
        zip_sha256=row["zip_sha256"],
        profile=row["profile"],
        profile_version=row["profile_version"],
        regime=row["regime"],
        seed=row["seed"],
        recipe_mode=row["recipe_mode"],
    )
