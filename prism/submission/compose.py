"""A training variant on its family's canonical code (host side; no submission code runs here).

A ``training_for_arch`` submission competes with its recipe, not its architecture. Its runs train
the **canonical version's stored architecture files** with the variant's **training files**: a
variant cannot slip an architecture change into the training competition by shipping other
architecture files (they are checked against the family it names, never trained).

The composed project holds

* the canonical submission's architecture entrypoint, its listed architecture files and the
  unattributed files they import (its architecture fingerprint files);
* the variant's training entrypoint, its listed training files and the unattributed files they
  import.

``get_recipe`` lives in the architecture entrypoint (the submission format); the canonical
entrypoint reaches the recipe through the module it imports by stem (``from train import
recipe_for``), which is the variant's training file of that name. A path both sides bring with
different bytes is ``training.path_conflict`` (the variant's fault: it can rename its files).
"""

from __future__ import annotations

from dataclasses import replace
from types import MappingProxyType

from prism.submission.errors import SubmissionError
from prism.submission.intake import Submission


def _architecture_paths(submission: Submission) -> tuple[str, ...]:
    listed = submission.architecture_fingerprint_files or submission.architecture_files
    return tuple(dict.fromkeys((submission.architecture_entrypoint, *listed)))


def _training_paths(submission: Submission) -> tuple[str, ...]:
    if submission.training_entrypoint is None:
        raise SubmissionError(
            "a training_for_arch submission needs a training entrypoint", code="training.no_entrypoint"
        )
    listed = submission.training_fingerprint_files or submission.training_files
    return tuple(dict.fromkeys((submission.training_entrypoint, *listed)))


def compose_training_variant(variant: Submission, canonical: Submission) -> Submission:
    """The variant's recipe on the canonical version's architecture files.

    The result keeps the variant's identity (kind, ZIP bytes and sha256, architecture id), so
    runs and manifests stay the variant's; only the files the sandbox sees are composed.
    """
    if variant.kind != "training_for_arch":
        raise SubmissionError(f"only a training_for_arch is composed, not a {variant.kind}", code="training.not_variant")
    files: dict[str, bytes] = {p: canonical.files[p] for p in _architecture_paths(canonical)}
    training = _training_paths(variant)
    for path in training:
        content = variant.files[path]
        if path in files and files[path] != content:
            raise SubmissionError(
                f"{path} is one of the canonical version's architecture files; a training variant's recipe files "
                "must use other paths (its runs train the canonical architecture files)",
                code="training.path_conflict",
                file=path,
            )
        files[path] = content
    arch_listed = tuple(p for p in _architecture_paths(canonical) if p != canonical.architecture_entrypoint)
    return replace(
        variant,
        files=MappingProxyType(files),
        architecture_entrypoint=canonical.architecture_entrypoint,
        architecture_files=arch_listed,
        architecture_fingerprint=canonical.architecture_fingerprint,
        architecture_fingerprint_files=_architecture_paths(canonical),
        training_files=tuple(p for p in training if p != variant.training_entrypoint),
        unattributed_files=(),
    )
