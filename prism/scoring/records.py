"""Inputs of scoring: one record per submission, carrying its run manifests."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from prism.manifest import RunManifest
from prism.scoring.paired import PairedMeasurement

SubmissionKind = Literal["full", "architecture_only", "training_for_arch"]


class SubmissionRecord(BaseModel):
    """What the validator knows about one committed submission.

    ``family_id``/``version_id`` are the identities measured from the running model (the store
    fills them from the manifests); ``runs`` are every manifest written for this ZIP under any
    profile (scoring keeps those of the policy's profile).

    ``training_fingerprint`` is intake's code hash of the training files (exact up to line-end
    whitespace); ``recipe_fingerprint`` is intake's *normalised* one (independent of file names,
    comments, docstrings, formatting and local names; None until intake supplies it). ``paired``
    holds the measurements made on this submission's held-out windows, where it challenged an
    incumbent (empty until the validator makes them). Rules that do not use a field ignore it.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    hotkey: str
    commit_block: int = Field(ge=0)
    zip_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    kind: SubmissionKind
    target_architecture_id: str | None = None
    family_id: str | None = None
    version_id: str | None = None
    family_ops: tuple[str, ...] | None = Field(
        default=None, description="the measured family's canonical op tokens (for the near-duplicate rule)"
    )
    measured_family_id: str | None = Field(
        default=None,
        description="set by the near-duplicate rule: the family the runs measured, before merging",
    )
    beacon_hash: str | None = Field(
        default=None, description="hash of the beacon block (commit block + prism.beacon.BEACON_DELAY_BLOCKS)"
    )
    training_fingerprint: str | None = None
    recipe_fingerprint: str | None = None
    intake_ok: bool = True
    runs: tuple[RunManifest, ...] = ()
    paired: tuple[PairedMeasurement, ...] = ()

    @property
    def order_key(self) -> tuple[int, str, str]:
        """Submission time order: earliest commit block, then hotkey, then sha (deterministic)."""
        return (self.commit_block, self.hotkey, self.zip_sha256)

    @property
    def competes_in_architecture(self) -> bool:
        return self.kind in ("full", "architecture_only")

    @property
    def competes_in_training(self) -> bool:
        return self.kind in ("full", "training_for_arch")
