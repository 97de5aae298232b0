"""Typed errors of the data stage.

A prepared data directory is operator input: when it is missing, corrupt or built with another
tokenizer the operator must prepare it again, so these are ``OperatorError``s with one stable
code per failure. An unreachable Hugging Face Hub is our side (``InfrastructureFault``): the same
command works later.
"""

from __future__ import annotations

from prism.errors import InfrastructureFault, OperatorError


class DataError(OperatorError):
    """Base class of every data-directory, source or tokenizer problem."""

    default_code = "data.error"


class ManifestMissing(DataError):
    default_code = "data.manifest_missing"


class ManifestInvalid(DataError):
    default_code = "data.manifest_invalid"


class ShardMissing(DataError):
    default_code = "data.shard_missing"


class BadMagic(DataError):
    default_code = "data.bad_magic"


class UnsupportedFormat(DataError):
    default_code = "data.unsupported_format"


class TruncatedShard(DataError):
    default_code = "data.truncated"


class HeaderMismatch(DataError):
    """The shard header disagrees with MANIFEST.json (token, byte or document counts)."""

    default_code = "data.header_mismatch"


class HashMismatch(DataError):
    default_code = "data.hash_mismatch"


class TokenizerMismatch(DataError):
    default_code = "data.tokenizer_mismatch"


class SplitTooSmall(DataError):
    default_code = "data.split_too_small"


class SourceError(DataError):
    """A document source is misconfigured or its files are malformed (e.g. no ``text`` field)."""

    default_code = "data.source_invalid"


class TokenizerFilesInvalid(DataError):
    """The GPT-2 vocabulary files are missing or do not match the pinned sha256 (BRIEF §7)."""

    default_code = "data.tokenizer_files_invalid"


class HubUnreachable(InfrastructureFault):
    """The Hugging Face Hub could not be reached within the timeout."""

    default_code = "data.hub_unreachable"


class HubStreamFailed(InfrastructureFault):
    """The Hub stream broke mid-way and retries were exhausted (the message says at which document)."""

    default_code = "data.hub_stream_failed"
