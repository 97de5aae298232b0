"""Submission intake: safe ZIP/.py reading, ``prism.yaml``, the static gate, fingerprints, packing.

Other stages use exactly this API::

    load_submission(path, limits=None) -> Submission          # .zip, .py or a project directory
    load_submission_bytes(data, *, filename="submission.zip", limits=None) -> Submission
    check_submission(path, limits=None) -> CheckReport        # every problem, for `prism check`
    check_submission_bytes(data, *, filename=..., limits=None) -> CheckReport
    pack_directory(src) -> bytes ; pack_to(src, out) -> sha256 hex

Every rejection is a :class:`SubmissionError` (a miner fault) with a stable ``code``.
"""

from prism.submission.archive import build_zip, pack_directory, pack_to, read_archive
from prism.submission.budget import BudgetUsage
from prism.submission.errors import (
    ERROR_CODES,
    ArchiveError,
    Problem,
    ProjectManifestError,
    StaticGateError,
    SubmissionError,
)
from prism.submission.fingerprint import code_fingerprint, normalize_source
from prism.submission.intake import (
    CheckReport,
    Submission,
    check_submission,
    check_submission_bytes,
    load_submission,
    load_submission_bytes,
)
from prism.submission.limits import ALLOWED_SUFFIXES, IntakeLimits
from prism.submission.project_manifest import KINDS, ProjectManifest, parse_project_manifest
from prism.submission.static_gate import ALLOWED_PACKAGES

__all__ = [
    "ALLOWED_PACKAGES",
    "ALLOWED_SUFFIXES",
    "ERROR_CODES",
    "KINDS",
    "ArchiveError",
    "BudgetUsage",
    "CheckReport",
    "IntakeLimits",
    "Problem",
    "ProjectManifest",
    "ProjectManifestError",
    "StaticGateError",
    "Submission",
    "SubmissionError",
    "build_zip",
    "check_submission",
    "check_submission_bytes",
    "code_fingerprint",
    "load_submission",
    "load_submission_bytes",
    "normalize_source",
    "pack_directory",
    "pack_to",
    "parse_project_manifest",
    "read_archive",
]
