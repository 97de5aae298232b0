"""Intake: bytes in, a checked :class:`Submission` out.

Order of checks (each stage runs only on what the previous one accepted):

1. archive safety and limits (:mod:`prism.submission.archive`),
2. ``prism.yaml`` or the default layout (:mod:`prism.submission.layout`), every problem at once,
3. the static gate over every ``.py`` (:mod:`prism.submission.static_gate`), hooks and their
   signatures (:mod:`prism.submission.hooks`) and the information budget
   (:mod:`prism.submission.budget`), every problem at once,
4. fingerprints (role files plus the unattributed files each entrypoint imports).

Nothing here imports or runs submission code.
"""

from __future__ import annotations

import ast
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from types import MappingProxyType
from typing import Any

from prism.errors import OperatorError
from prism.submission import static_gate
from prism.submission.archive import (
    build_zip,
    check_entry_name,
    check_suffix,
    check_text,
    pack_directory,
    read_archive,
)
from prism.submission.budget import BudgetUsage, check_budget
from prism.submission.errors import ArchiveError, Problem, ProjectManifestError, SubmissionError, error_for
from prism.submission.fingerprint import code_fingerprint, sha256_hex
from prism.submission.hooks import check_hook_signatures, find_hooks
from prism.submission.imports import reachable
from prism.submission.layout import ProjectLayout, resolve_layout, two_script_folder, unsupported_format
from prism.submission.limits import IntakeLimits

logger = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class Submission:
    """A submission that passed intake. ``files`` maps posix relative paths to raw bytes."""

    kind: str
    files: Mapping[str, bytes]
    architecture_entrypoint: str
    architecture_files: tuple[str, ...]
    training_entrypoint: str | None
    training_files: tuple[str, ...]
    architecture_id: str | None
    zip_bytes: bytes
    zip_sha256: str
    architecture_fingerprint: str
    training_fingerprint: str | None
    hooks: Mapping[str, str] = field(default_factory=dict)
    manifest_file: str | None = None
    #: ``.py`` files no role lists (an empty ``__init__.py``, a second variant of the project).
    unattributed_files: tuple[str, ...] = ()
    #: What each fingerprint covers: the role's files plus the unattributed files its
    #: entrypoint can import (empty when built by hand: then the role's files).
    architecture_fingerprint_files: tuple[str, ...] = ()
    training_fingerprint_files: tuple[str, ...] = ()
    budget: BudgetUsage | None = None

    @property
    def recipe_fingerprint(self) -> str | None:
        """The training files' normalised fingerprint (``prism.submission.recipe_fingerprint``)."""
        from prism.submission.recipe_fingerprint import recipe_fingerprint

        if self.training_entrypoint is None:
            return None
        return recipe_fingerprint(self.files, self.training_fingerprint_files or self.training_files)

    @property
    def python_paths(self) -> tuple[str, ...]:
        """Folders (relative; ``.`` is the root) the evaluator puts on ``sys.path``, first match
        first: the architecture entrypoint's folder, the training entrypoint's, the root. Sibling
        imports by stem (``from layers import X`` next to ``src/model.py``) resolve through them."""
        return static_gate.import_roots(self.architecture_entrypoint, self.training_entrypoint)

    def write_to(self, dest: Path) -> None:
        """Write every file under ``dest``, which must not exist or be an empty directory."""
        dest = Path(dest)
        if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
            raise OperatorError(
                f"{dest} exists and is not an empty directory", code="submission.dest_not_empty"
            )
        dest.mkdir(parents=True, exist_ok=True)
        root = dest.resolve()
        for name, content in self.files.items():
            target = (root / name).resolve()
            if not target.is_relative_to(root):  # names were checked at intake; this is a second lock
                raise ArchiveError("path escapes the destination", code="zip.traversal", file=name)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
            target.chmod(0o644)

    def summary(self) -> dict[str, Any]:
        """JSON-ready description (no file contents), as ``prism check --json`` prints it."""
        return {
            "kind": self.kind,
            "architecture_entrypoint": self.architecture_entrypoint,
            "architecture_files": list(self.architecture_files),
            "training_entrypoint": self.training_entrypoint,
            "training_files": list(self.training_files),
            "architecture_id": self.architecture_id,
            "manifest_file": self.manifest_file,
            "files": sorted(self.files),
            "zip_sha256": self.zip_sha256,
            "zip_bytes": len(self.zip_bytes),
            "architecture_fingerprint": self.architecture_fingerprint,
            "training_fingerprint": self.training_fingerprint,
            "hooks": dict(self.hooks),
            "python_paths": list(self.python_paths),
            "unattributed_files": list(self.unattributed_files),
            "architecture_fingerprint_files": list(self.architecture_fingerprint_files),
            "training_fingerprint_files": list(self.training_fingerprint_files),
            "budget": self.budget.model_dump() if self.budget is not None else None,
        }


@dataclass(frozen=True)
class CheckReport:
    """What ``prism check`` found. ``submission`` is set whenever the archive and manifest were
    readable (even if the static gate failed); ``ok`` is True only if there are no problems."""

    ok: bool
    submission: Submission | None
    problems: list[Problem]

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "submission": self.submission.summary() if self.submission is not None else None,
            "problems": [problem.to_dict() for problem in self.problems],
        }


# ---------------------------------------------------------------------------------------------
# stages


def _single_file_zip(data: bytes, filename: str, limits: IntakeLimits) -> bytes:
    """A lone ``.py`` becomes the deterministic one-entry ZIP a miner would commit."""
    name = PurePosixPath(filename.replace("\\", "/")).name
    check_entry_name(name, limits)
    check_suffix(name, limits)
    if len(data) > limits.max_total_bytes:
        raise ArchiveError(
            f"file is {len(data)} bytes; the limit is {limits.max_total_bytes}",
            code="zip.too_large",
            file=name,
        )
    check_text(name, data)
    return build_zip({name: data})


@dataclass(frozen=True)
class _GateResult:
    problems: list[Problem]
    hooks: dict[str, str]
    trees: dict[str, ast.Module]
    budget: BudgetUsage


def _parse_all(
    files: Mapping[str, bytes], local: static_gate.LocalModules
) -> tuple[dict[str, ast.Module], list[Problem]]:
    problems: list[Problem] = []
    trees: dict[str, ast.Module] = {}
    for path in sorted(files):
        if not path.endswith(".py"):
            continue
        tree, parse_problems = static_gate.parse_module(path, files[path])
        problems.extend(parse_problems)
        if tree is not None:
            trees[path] = tree
            problems.extend(static_gate.check_module(path, tree, local))
    return trees, problems


def _gate(files: Mapping[str, bytes], layout: ProjectLayout, limits: IntakeLimits) -> _GateResult:
    """Static gate, hooks and their signatures, and the information budget, over every .py."""
    roots = static_gate.import_roots(layout.architecture_entrypoint, layout.training_entrypoint)
    local = static_gate.LocalModules.from_paths(files, roots)
    problems = static_gate.check_shadowing(files)
    trees, gate_problems = _parse_all(files, local)
    problems.extend(gate_problems)
    arch_tree = trees.get(layout.architecture_entrypoint)
    if arch_tree is not None:
        problems.extend(static_gate.check_required_functions(layout.architecture_entrypoint, arch_tree))
    entrypoints = [layout.training_entrypoint, layout.architecture_entrypoint]
    hooks = find_hooks((path, trees[path]) for path in entrypoints if path is not None and path in trees)
    problems.extend(check_hook_signatures(hooks, trees, roots))
    usage, budget_problems = check_budget(files, trees, limits)
    problems.extend(budget_problems)
    return _GateResult(problems=problems, hooks=hooks, trees=trees, budget=usage)


def _with_imports(
    declared: tuple[str, ...], entrypoint: str, layout: ProjectLayout, trees: Mapping[str, ast.Module]
) -> tuple[str, ...]:
    """Declared files plus the unattributed files ``entrypoint`` can import (in path order)."""
    if not layout.unattributed_files:
        return declared
    roots = static_gate.import_roots(layout.architecture_entrypoint, layout.training_entrypoint)
    reached = reachable(entrypoint, trees, roots, trees)
    extra = sorted(path for path in layout.unattributed_files if path in reached)
    return (*declared, *extra)


def _assemble(
    files: dict[str, bytes], zip_bytes: bytes, layout: ProjectLayout, gate: _GateResult
) -> Submission:
    arch_files = _with_imports(layout.architecture_files, layout.architecture_entrypoint, layout, gate.trees)
    training_fingerprint = None
    train_files: tuple[str, ...] = ()
    if layout.training_entrypoint is not None:
        train_files = _with_imports(layout.training_files, layout.training_entrypoint, layout, gate.trees)
        training_fingerprint = code_fingerprint("training", layout.training_entrypoint, train_files, files)
    return Submission(
        kind=layout.kind,
        files=MappingProxyType(files),
        architecture_entrypoint=layout.architecture_entrypoint,
        architecture_files=layout.architecture_files,
        training_entrypoint=layout.training_entrypoint,
        training_files=layout.training_files,
        architecture_id=layout.architecture_id,
        zip_bytes=zip_bytes,
        zip_sha256=sha256_hex(zip_bytes),
        architecture_fingerprint=code_fingerprint(
            "architecture", layout.architecture_entrypoint, arch_files, files
        ),
        training_fingerprint=training_fingerprint,
        hooks=MappingProxyType(gate.hooks),
        manifest_file=layout.manifest_file,
        unattributed_files=layout.unattributed_files,
        architecture_fingerprint_files=arch_files,
        training_fingerprint_files=train_files,
        budget=gate.budget,
    )


def _resolve(files: Mapping[str, bytes], limits: IntakeLimits) -> ProjectLayout:
    """The layout; a bundle in the two-script format gets one clear error instead."""
    try:
        return resolve_layout(files, limits)
    except ProjectManifestError:
        folder = two_script_folder(files)
        if folder is not None:
            raise ProjectManifestError.from_problems([unsupported_format(folder)]) from None
        raise


def _run_intake(data: bytes, filename: str, limits: IntakeLimits) -> tuple[Submission, list[Problem]]:
    """Every stage. Archive and manifest errors raise (with all their problems); gate problems,
    all of them, are returned with the submission."""
    is_single_file = filename.lower().endswith(".py")
    zip_bytes = _single_file_zip(data, filename, limits) if is_single_file else data
    files = read_archive(zip_bytes, limits)
    layout = _resolve(files, limits)
    gate = _gate(files, layout, limits)
    problems = gate.problems
    missing = {"static.missing_get_recipe", "static.missing_build_model"}
    folder = two_script_folder(files)
    if folder is not None and any(p.code in missing for p in problems):
        problems = [unsupported_format(folder)]
    return _assemble(files, zip_bytes, layout, gate), problems


# ---------------------------------------------------------------------------------------------
# public API


def load_submission_bytes(
    data: bytes, *, filename: str = "submission.zip", limits: IntakeLimits | None = None
) -> Submission:
    """Intake from bytes (e.g. fetched from an axon). ``filename`` ending in ``.py`` means a
    single-file submission; anything else is read as a ZIP. Raises :class:`SubmissionError`."""
    submission, problems = _run_intake(bytes(data), filename, limits or IntakeLimits())
    if problems:
        raise error_for(problems)
    logger.debug("accepted %s: kind %s, zip sha256 %s", filename, submission.kind, submission.zip_sha256)
    return submission


def _read_path(path: Path, limits: IntakeLimits) -> tuple[bytes, str]:
    """Bytes and a filename for a .zip, a .py or a project directory (packed in memory)."""
    path = Path(path)
    if path.is_dir():
        return pack_directory(path, limits), f"{path.name or 'project'}.zip"
    if not path.is_file():
        raise OperatorError(
            f"{path} does not exist or is not a file or directory", code="submission.not_found"
        )
    cap = limits.max_total_bytes if path.suffix == ".py" else limits.max_compressed_bytes
    size = path.stat().st_size
    if size > cap:  # refuse before reading a huge file into memory
        raise ArchiveError(
            f"{path.name} is {size} bytes; the limit is {cap}", code="zip.too_large", file=path.name
        )
    return path.read_bytes(), path.name


def load_submission(path: Path, limits: IntakeLimits | None = None) -> Submission:
    """Intake from a ``.zip``, a single ``.py`` or a project directory."""
    limits = limits or IntakeLimits()
    data, filename = _read_path(Path(path), limits)
    return load_submission_bytes(data, filename=filename, limits=limits)


def check_submission_bytes(
    data: bytes, *, filename: str = "submission.zip", limits: IntakeLimits | None = None
) -> CheckReport:
    """Like :func:`load_submission_bytes`, but every problem is reported instead of raised."""
    try:
        submission, problems = _run_intake(bytes(data), filename, limits or IntakeLimits())
    except SubmissionError as exc:
        return CheckReport(ok=False, submission=None, problems=list(exc.problems))
    return CheckReport(ok=not problems, submission=submission, problems=problems)


def check_submission(path: Path, limits: IntakeLimits | None = None) -> CheckReport:
    """Like :func:`load_submission` but reports every problem instead of raising.

    An archive error stops intake at once (one problem); manifest problems are reported all
    together and stop intake before the static gate; the gate's problems are all reported.
    Operator errors (a path that does not exist) still raise.
    """
    limits = limits or IntakeLimits()
    try:
        data, filename = _read_path(Path(path), limits)
    except SubmissionError as exc:
        return CheckReport(ok=False, submission=None, problems=list(exc.problems))
    return check_submission_bytes(data, filename=filename, limits=limits)
