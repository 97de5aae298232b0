"""Intake limits: how much a submission may hold. Validators may tighten them, never loosen
them past what the sandbox can afford (the defaults are what docs/submissions.md promises)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

ALLOWED_SUFFIXES: tuple[str, ...] = (".py", ".yaml", ".yml", ".json", ".toml", ".txt", ".md")


class IntakeLimits(BaseModel):
    """Limits applied while reading a submission. Sizes are decimal bytes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_compressed_bytes: int = Field(default=5_000_000, gt=0)
    max_files: int = Field(default=200, gt=0)
    max_total_bytes: int = Field(default=10_000_000, gt=0)
    #: Declared uncompressed/compressed ratio cap, applied to entries above ``ratio_min_bytes``
    #: (tiny files compress oddly; source code is typically 3-6x).
    max_ratio: float = Field(default=100.0, gt=1.0)
    ratio_min_bytes: int = Field(default=4096, ge=0)
    max_depth: int = Field(default=8, gt=0)
    max_path_length: int = Field(default=200, gt=0)
    allowed_suffixes: tuple[str, ...] = ALLOWED_SUFFIXES
    max_manifest_bytes: int = Field(default=65_536, gt=0)
    max_manifest_depth: int = Field(default=16, gt=0)
