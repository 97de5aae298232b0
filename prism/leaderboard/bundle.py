"""A family's canonical code as a ZIP: what ``prism serve`` publishes and ``prism fetch-family`` reads.

The bundle holds the architecture role of the family's canonical version (its entrypoint and
architecture files, byte for byte as committed), the training-role modules that architecture
code imports (``support_files``: the GPT example's ``model.py`` takes its recipe from
``train.py``, so the model cannot be built without it), and ``prism_family.json`` saying which is
which. It never holds anything else of the canonical submission: the owner's other training code
stays theirs. Built with ``prism.submission.build_zip``, so the same canonical version always
gives the same bytes and sha256.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Mapping
from pathlib import PurePosixPath
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from prism.errors import OperatorError
from prism.submission import IntakeLimits, Submission, build_zip, load_submission_bytes, read_archive

BUNDLE_SCHEMA = "prism_family_code.v1"
BUNDLE_MANIFEST = "prism_family.json"
#: What an architecture id (and so a family id in a URL or prism.yaml) may look like.
FAMILY_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:\-]{0,127}$"
_SHA256 = r"^[0-9a-f]{64}$"


class FamilyCode(BaseModel):
    """``prism_family.json``: where the family's code came from and which file plays which role."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal["prism_family_code.v1"] = BUNDLE_SCHEMA
    family_id: str = Field(pattern=FAMILY_ID_PATTERN)
    canonical_version_id: str = Field(min_length=1, max_length=200)
    source_zip_sha256: str = Field(pattern=_SHA256, description="the canonical submission's ZIP")
    owner_hotkey: str = Field(max_length=200)
    architecture_entrypoint: str
    architecture_files: list[str] = Field(description="architecture helpers (the entrypoint not repeated)")
    support_files: list[str] = Field(
        default_factory=list, description="training-role modules the architecture code imports"
    )

    def code_files(self) -> list[str]:
        return [self.architecture_entrypoint, *self.architecture_files, *self.support_files]


def build_family_zip(
    zip_bytes: bytes, *, family_id: str, canonical_version_id: str, owner_hotkey: str
) -> tuple[bytes, FamilyCode]:
    """The bundle of a canonical submission's ZIP (re-read through intake; nothing is executed)."""
    submission = load_submission_bytes(zip_bytes)
    architecture = [f for f in submission.architecture_files if f != submission.architecture_entrypoint]
    code = FamilyCode(
        family_id=family_id,
        canonical_version_id=canonical_version_id,
        source_zip_sha256=submission.zip_sha256,
        owner_hotkey=owner_hotkey,
        architecture_entrypoint=submission.architecture_entrypoint,
        architecture_files=sorted(architecture),
        support_files=support_files(submission),
    )
    files = {name: bytes(submission.files[name]) for name in code.code_files()}
    files[BUNDLE_MANIFEST] = (json.dumps(code.model_dump(), indent=2, sort_keys=True) + "\n").encode()
    return build_zip(files), code


def support_files(submission: Submission) -> list[str]:
    """Training-role files the architecture code imports, directly or through each other."""
    architecture = {submission.architecture_entrypoint, *submission.architecture_files}
    training = {*submission.training_files, submission.training_entrypoint or ""} - architecture - {""}
    python = sorted(name for name in submission.files if name.endswith(".py"))
    needed: set[str] = set()
    queue = sorted(architecture)
    while queue:
        current = queue.pop()
        absolute, relative = _imported_names(submission.files[current], current)
        targets = [
            *_absolute_targets(absolute, python, submission.python_paths),
            *_relative_targets(relative, python),
        ]
        for target in targets:
            if target in training and target not in needed:
                needed.add(target)
                queue.append(target)
    return sorted(needed)


def _imported_names(source: bytes, name: str) -> tuple[set[str], set[str]]:
    """Top-level names of a file's absolute imports, and the targets of its relative imports."""
    try:
        tree = ast.parse(source.decode("utf-8-sig"), filename=name)
    except (SyntaxError, ValueError):  # intake parsed it already; stay total anyway
        return set(), set()
    absolute: set[str] = set()
    relative: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            absolute.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            absolute.add(node.module.split(".")[0])
        elif isinstance(node, ast.ImportFrom):
            relative.update([node.module.split(".")[0]] if node.module else [a.name for a in node.names])
    return absolute, relative


def _absolute_targets(modules: set[str], python: list[str], roots: tuple[str, ...]) -> list[str]:
    """Files ``import <module>`` can load: ``<root>/<module>.py`` or anything under ``<root>/<module>/``."""
    found = []
    for path in python:
        for root in roots:
            parts = PurePosixPath(path).parts if root == "." else _relative(PurePosixPath(path), root)
            if (len(parts) == 1 and PurePosixPath(path).stem in modules) or (
                len(parts) > 1 and parts[0] in modules
            ):
                found.append(path)
    return found


def _relative_targets(modules: set[str], python: list[str]) -> list[str]:
    """Relative imports reach a sibling module or package by name, wherever the importer sits."""
    return [
        path
        for path in python
        if PurePosixPath(path).stem in modules or set(PurePosixPath(path).parts[:-1]) & modules
    ]


def _relative(path: PurePosixPath, root: str) -> tuple[str, ...]:
    try:
        return path.relative_to(root).parts
    except ValueError:
        return ()


def read_family_zip(
    data: bytes, *, family_id: str, limits: IntakeLimits | None = None
) -> tuple[FamilyCode, dict[str, bytes]]:
    """Check a downloaded bundle with intake's archive limits; returns its metadata and code files."""
    files = read_archive(data, limits or IntakeLimits())
    if BUNDLE_MANIFEST not in files:
        raise OperatorError(f"the download has no {BUNDLE_MANIFEST}: not a PRISM family bundle",
                            code="fetch.not_a_bundle")  # fmt: skip
    try:
        code = FamilyCode.model_validate_json(files.pop(BUNDLE_MANIFEST))
    except ValidationError as exc:
        raise OperatorError(f"{BUNDLE_MANIFEST} is invalid: {exc}", code="fetch.not_a_bundle") from exc
    if code.family_id != family_id:
        raise OperatorError(f"asked for family {family_id}, the server sent {code.family_id}",
                            code="fetch.wrong_family")  # fmt: skip
    _check_files(code, files)
    return code, files


def _check_files(code: FamilyCode, files: Mapping[str, bytes]) -> None:
    listed = code.code_files()
    if len(set(listed)) != len(listed) or any(not name.endswith(".py") for name in listed):
        raise OperatorError(
            "the bundle lists a file twice or a non-Python file as code", code="fetch.not_a_bundle"
        )
    missing = sorted(set(listed) - set(files))
    unlisted = sorted(name for name in files if name.endswith(".py") and name not in listed)
    if missing or unlisted:
        raise OperatorError(
            f"the bundle does not match {BUNDLE_MANIFEST} (missing {missing}, unlisted {unlisted})",
            code="fetch.not_a_bundle",
        )
    if any(PurePosixPath(name).name in {"prism.yaml", "prism.yml"} for name in files):
        raise OperatorError("the bundle carries its own prism.yaml", code="fetch.not_a_bundle")
