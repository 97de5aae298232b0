"""What the miner serves: its submission packed and checked exactly as validators will, and the
code fingerprint watch mode compares.

``pack_and_check(path)`` builds the deterministic ZIP of a project directory, ``.zip`` or ``.py``
and runs intake (``prism.submission.check_submission``); a rejected submission raises
``SubmissionRejected`` with every problem.

``code_fingerprint`` is what decides whether an edit is worth a new commitment: the kind, the
``architecture_id`` and the entrypoints, plus the architecture and training files as Python
tokens with comments and blank lines dropped (other files by their normalized text). A
comment-only or whitespace-only edit keeps it, so the miner does not re-commit (a new commitment
moves the submission's block later and costs a fee); any change to the code, or to which files
belong to a role, changes it.
"""

from __future__ import annotations

import hashlib
import io
import logging
import tempfile
import tokenize
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prism.errors import NotImplementedYet, OperatorError

logger = logging.getLogger(__name__)

_DROPPED_TOKENS = frozenset({tokenize.COMMENT, tokenize.NL, tokenize.ENCODING})


class SubmissionRejected(OperatorError):
    """Intake refused the miner's own submission; ``problems`` lists every reason with its code."""

    default_code = "miner.submission_rejected"

    def __init__(self, message: str, problems: list[dict[str, Any]]) -> None:
        super().__init__(message)
        self.problems = problems


@dataclass(frozen=True)
class PackedSubmission:
    zip_bytes: bytes
    sha256: str
    kind: str
    code_fingerprint: str


def _file_tokens(path: str, content: bytes) -> bytes:
    """A ``.py`` file as its token stream without comments; other files as normalized text."""
    from prism.submission import normalize_source

    if path.endswith(".py"):
        try:
            tokens = tokenize.tokenize(io.BytesIO(content).readline)
            kept = [f"{token.type}:{token.string}" for token in tokens if token.type not in _DROPPED_TOKENS]
            return "\n".join(kept).encode("utf-8")
        except (tokenize.TokenError, SyntaxError, UnicodeDecodeError):
            pass  # intake parsed it; should it not tokenize, compare its text instead
    return normalize_source(content)


def code_fingerprint(submission: Any) -> str:
    """See the module docstring. ``submission`` is a ``prism.submission.Submission``."""
    digest = hashlib.sha256()
    header = [submission.kind, submission.architecture_id, submission.architecture_entrypoint,
              submission.training_entrypoint]  # fmt: skip
    digest.update(repr(header).encode("utf-8"))
    for role, paths in (
        ("architecture", submission.architecture_files),
        ("training", submission.training_files),
    ):
        for path in sorted(set(paths)):
            body = _file_tokens(path, submission.files[path])
            digest.update(f"\n{role}:{path}:{len(body)}\n".encode())
            digest.update(body)
    return digest.hexdigest()


def pack_and_check(path: Path) -> PackedSubmission:
    """Deterministic ZIP of ``path`` (a project dir, a .zip or a .py) that passed intake."""
    from prism.submission import check_submission

    report = check_submission(Path(path))
    if not report.ok or report.submission is None:
        problems = [problem.to_dict() for problem in report.problems]
        codes = ", ".join(sorted({str(p.get("code")) for p in problems})) or "unknown"
        details = "; ".join(str(problem) for problem in report.problems)
        raise SubmissionRejected(f"intake rejected {path} ({codes}): {details}", problems)
    submission = report.submission
    return PackedSubmission(
        zip_bytes=submission.zip_bytes,
        sha256=submission.zip_sha256,
        kind=submission.kind,
        code_fingerprint=code_fingerprint(submission),
    )


def smoke_check(path: Path, data_dir: Path | None) -> None:
    """Train the submission briefly on CPU (``local_cpu_smoke``) exactly as a validator would."""
    try:
        from prism.evaluator.host import evaluate
    except ImportError as exc:
        raise NotImplementedYet(f"--check.smoke needs prism.evaluator.host.evaluate: {exc}") from exc
    from prism.profiles import load_profile

    profile = load_profile("local_cpu_smoke")
    if data_dir is None:
        from prism.data import ensure_offline_corpus

        data_dir = Path(tempfile.gettempdir()) / "prism-miner-smoke-data" / profile.tokenizer
        ensure_offline_corpus(data_dir, tokenizer=profile.tokenizer)
    with tempfile.TemporaryDirectory(prefix="prism-miner-smoke-") as out:
        manifests = evaluate(
            path,
            profile=profile,
            data_dir=data_dir,
            out_dir=Path(out),
            recipe_mode="reference",
            progress=False,
        )
    failed = [m for m in manifests if m.status.state != "succeeded"]
    if not manifests or failed:
        reasons = [f"{m.status.failure.code}: {m.status.failure.message}" for m in failed if m.status.failure]
        raise SubmissionRejected(f"smoke evaluation failed: {'; '.join(reasons) or 'no run'}", [])
    logger.info("smoke evaluation passed (%d runs)", len(manifests))
