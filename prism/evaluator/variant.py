"""What a run trains: the submission itself, or a training variant on its family's canonical code.

A ``training_for_arch`` competes with its recipe. Its runs train the canonical version's stored
architecture files with the variant's training files (:mod:`prism.submission.compose`); its own
architecture files are measured in the identity sandbox (``prism identify``) and must build the
family it names (``eval.family_mismatch``), but are never trained.
"""

from __future__ import annotations

from pathlib import Path

from prism.errors import InfrastructureFault
from prism.profiles import Profile
from prism.submission.intake import Submission


def submission_to_run(
    path: Path, architecture_from: Path | None, profile: Profile
) -> tuple[Submission, str | None]:
    """The submission as its runs see it: itself, or a training variant on the canonical's files
    (after checking, in a sandbox, that its own architecture files build the family it names)."""
    from prism.submission import load_submission
    from prism.submission.compose import compose_training_variant

    submission = load_submission(path)
    if architecture_from is None:
        return submission, None
    _check_own_architecture(submission, profile)
    canonical = load_submission(Path(architecture_from))
    return compose_training_variant(submission, canonical), canonical.zip_sha256


def _check_own_architecture(submission: Submission, profile: Profile) -> None:
    """A variant's own architecture files are checked against its family, never trained."""
    from prism.commands.identify import identify
    from prism.submission import SubmissionError

    report = identify(submission, profile, regimes=None, build=False)
    if report.isolation is None:
        raise InfrastructureFault("the identity sandbox did not start", code="sandbox.identify_failed")
    if report.family_id != submission.architecture_id:
        problems = "; ".join(p.message for p in report.problems)[:500]
        raise SubmissionError(
            f"the submission's own architecture files build family {report.family_id!r}, not the "
            f"architecture_id {submission.architecture_id!r} it names{': ' + problems if problems else ''}",
            code="eval.family_mismatch",
        )
