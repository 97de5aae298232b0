"""Intake limits: how much a submission may hold. Validators may tighten them, never loosen
them past what the sandbox can afford (the defaults are what docs/submissions.md promises)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

ALLOWED_SUFFIXES: tuple[str, ...] = (".py", ".yaml", ".yml", ".json", ".toml", ".txt", ".md")


class IntakeLimits(BaseModel):
    """Limits applied while reading a submission. Sizes are decimal bytes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_compressed_bytes: int = Field(default=300_000, gt=0)
    max_files: int = Field(default=200, gt=0)
    #: All files together, uncompressed: about 6x the largest real submission measured (32,698
    #: bytes, docs/submissions.md "Information budget").
    max_total_bytes: int = Field(default=200_000, gt=0)
    #: Declared uncompressed/compressed ratio cap, applied to entries above ``ratio_min_bytes``
    #: (tiny files compress oddly; source code is typically 3-6x).
    max_ratio: float = Field(default=100.0, gt=1.0)
    ratio_min_bytes: int = Field(default=4096, ge=0)
    max_depth: int = Field(default=8, gt=0)
    max_path_length: int = Field(default=200, gt=0)
    allowed_suffixes: tuple[str, ...] = ALLOWED_SUFFIXES
    max_manifest_bytes: int = Field(default=65_536, gt=0)
    max_manifest_depth: int = Field(default=16, gt=0)
    # -- the information budget (prism.submission.budget; docs/security.md, "Smuggling") ----------
    #: Bytes of all files that are not Python (prism.yaml, README.md, configs), together.
    max_other_file_bytes: int = Field(default=32_000, gt=0)
    #: One string or bytes literal (docstrings apart), and all of them together.
    max_string_bytes: int = Field(default=1_000, gt=0)
    max_string_total: int = Field(default=8_000, gt=0)
    #: One docstring, and all docstrings together.
    max_docstring_bytes: int = Field(default=4_000, gt=0)
    max_docstring_total: int = Field(default=24_000, gt=0)
    #: All comment text together (``#`` included).
    max_comment_total: int = Field(default=32_000, gt=0)
    #: Numeric constants in one list/tuple/set/dict display (nested displays count together).
    max_display_numbers: int = Field(default=64, gt=0)
    #: Source characters of all numeric literals together.
    max_number_chars: int = Field(default=4_000, gt=0)
    #: The longest identifier, and the bytes of all distinct identifiers together.
    max_identifier_chars: int = Field(default=64, gt=0)
    max_identifier_total: int = Field(default=16_000, gt=0)
