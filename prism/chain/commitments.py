"""The PRISM commitment payload: what a miner publishes on chain for its submission.

Format (version 1): ``prism:v1:<sha256>`` where ``<sha256>`` is the 64 lowercase hex digits of
the SHA-256 of the submission ZIP bytes, e.g.
``prism:v1:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08`` (73 bytes).

Parsing is lenient about what honest tools produce (surrounding whitespace, upper-case hex,
a ``0x`` prefix on the digest, trailing ``:``-separated fields reserved for later versions) and
never raises on what other hotkeys publish: the subnet's commitment space is shared, so
garbage is expected and reported as a typed result with a stable code.
"""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict

PREFIX = "prism"
VERSION = "v1"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class ParsedCommitment(BaseModel):
    """Either a valid ``sha256`` or an ``error_code`` saying why the commitment is not PRISM's."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sha256: str | None = None
    error_code: str | None = None

    @property
    def ok(self) -> bool:
        return self.sha256 is not None


def format_commitment(sha256: str) -> str:
    """The commitment string for a submission hash."""
    digest = sha256.strip().lower().removeprefix("0x")
    if not _HEX64.match(digest):
        raise ValueError(f"not a sha256 hex digest: {sha256!r}")
    return f"{PREFIX}:{VERSION}:{digest}"


def parse_commitment(data: str | None) -> ParsedCommitment:
    """Parse a commitment leniently; never raises."""
    if not data or not isinstance(data, str):
        return ParsedCommitment(error_code="commitment.empty")
    parts = data.strip().split(":")
    if len(parts) < 3 or parts[0].lower() != PREFIX:
        return ParsedCommitment(error_code="commitment.not_prism")
    if parts[1].lower() != VERSION:
        return ParsedCommitment(error_code="commitment.unsupported_version")
    digest = parts[2].strip().lower().removeprefix("0x")
    if not _HEX64.match(digest):
        return ParsedCommitment(error_code="commitment.malformed")
    return ParsedCommitment(sha256=digest)
