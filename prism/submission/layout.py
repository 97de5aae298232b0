"""Which files play which role: ``prism.yaml`` (or the default) checked against the archive.

Rules (docs/submissions.md, "Kinds and roles"):

* a file may belong to both roles (a helper both the model and the training code use is listed
  under both ``architecture.files`` and ``training.files``); it counts in both fingerprints;
* every listed file must exist and be a ``.py`` file;
* ``.py`` files that no role lists (an empty ``__init__.py``, a second single-file variant of the
  project) are accepted and recorded as *unattributed*; intake adds those the entrypoints can
  import to the fingerprints (:mod:`prism.submission.imports`);
* an archive in the later two-script format (``architecture.py`` + ``training.py`` with a
  ``train`` function) gets one clear ``manifest.unsupported_format``.
"""

from __future__ import annotations

import ast
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from prism.submission.errors import Problem, ProjectManifestError
from prism.submission.limits import IntakeLimits
from prism.submission.project_manifest import (
    MANIFEST_NAMES,
    LineMap,
    ProjectManifest,
    did_you_mean,
    line_of,
    load_yaml,
    manifest_problems,
)

DEFAULT_ENTRYPOINT = "model.py"
FORMATS_DOC = "docs/submissions.md#forms"
_ROLES = ("architecture", "training")


@dataclass(frozen=True)
class ProjectLayout:
    """Which files play which role, after the manifest (or the default) was checked."""

    kind: str
    architecture_entrypoint: str
    architecture_files: tuple[str, ...]
    training_entrypoint: str | None
    training_files: tuple[str, ...]
    architecture_id: str | None
    manifest_file: str | None
    unattributed_files: tuple[str, ...] = ()


def _normalize_listed(path: str) -> str:
    return path[2:] if path.startswith("./") else path


def _listed_paths(data: dict[str, Any]) -> list[tuple[tuple[str | int, ...], str]]:
    """(YAML path, archive path) of every entrypoint and file the manifest names, as written."""
    listed: list[tuple[tuple[str | int, ...], str]] = []
    for role in _ROLES:
        section = data.get(role)
        if not isinstance(section, dict):
            continue
        if isinstance(section.get("entrypoint"), str):
            listed.append(((role, "entrypoint"), _normalize_listed(section["entrypoint"])))
        files = section.get("files")
        if isinstance(files, list):
            listed.extend(
                ((role, "files", i), _normalize_listed(item))
                for i, item in enumerate(files)
                if isinstance(item, str)
            )
    return listed


def _suggest_file(path: str, files: Mapping[str, bytes]) -> str:
    python_files = [name for name in files if name.endswith(".py")]
    same_name = [name for name in python_files if PurePosixPath(name).name == PurePosixPath(path).name]
    if len(same_name) == 1:
        return f" (did you mean {same_name[0]!r}?)"
    return did_you_mean(path, python_files)


def _file_problems(
    data: dict[str, Any], lines: LineMap, files: Mapping[str, bytes], file: str
) -> list[Problem]:
    problems = []
    for where, path in _listed_paths(data):
        line = line_of(lines, where)
        if path not in files:
            problems.append(
                Problem(
                    "manifest.missing_file",
                    f"prism.yaml lists {path!r}, which is not in the archive{_suggest_file(path, files)}",
                    file,
                    line,
                )
            )
        elif PurePosixPath(path).suffix != ".py":
            problems.append(
                Problem(
                    "manifest.not_python", f"{path!r} is listed as code but is not a .py file", file, line
                )
            )
    return problems


def _ordered_unique(items: list[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


def _unattributed(files: Mapping[str, bytes], listed: set[str]) -> tuple[str, ...]:
    return tuple(sorted(path for path in files if path.endswith(".py") and path not in listed))


def _layout_from_manifest(
    manifest: ProjectManifest, files: Mapping[str, bytes], manifest_file: str
) -> ProjectLayout:
    arch_entry = _normalize_listed(manifest.architecture.entrypoint)
    architecture_files = _ordered_unique([arch_entry, *map(_normalize_listed, manifest.architecture.files)])
    train_entry: str | None = None
    training_files: tuple[str, ...] = ()
    if manifest.training is not None:
        train_entry = _normalize_listed(manifest.training.entrypoint)
        training_files = _ordered_unique([train_entry, *map(_normalize_listed, manifest.training.files)])
    elif manifest.kind == "full":
        train_entry = arch_entry  # a full project without a training section trains from its model module
        training_files = (arch_entry,)
    return ProjectLayout(
        kind=manifest.kind,
        architecture_entrypoint=arch_entry,
        architecture_files=architecture_files,
        training_entrypoint=train_entry,
        training_files=training_files,
        architecture_id=manifest.architecture_id,
        manifest_file=manifest_file,
        unattributed_files=_unattributed(files, {*architecture_files, *training_files}),
    )


def _default_layout(files: Mapping[str, bytes]) -> ProjectLayout:
    """No manifest: kind full, entrypoint = the only top-level module, or top-level model.py."""
    python_files = sorted(path for path in files if path.endswith(".py"))
    top_level = [path for path in python_files if "/" not in path]
    if len(top_level) == 1:
        entry = top_level[0]
    elif DEFAULT_ENTRYPOINT in top_level:
        entry = DEFAULT_ENTRYPOINT
    else:
        found = ", ".join(top_level) or "none"
        raise ProjectManifestError(
            "no prism.yaml, and no single top-level .py (or top-level model.py) to use as the entrypoint "
            f"(top-level .py files: {found}); add a prism.yaml",
            code="manifest.no_entrypoint",
        )
    helpers = tuple(path for path in python_files if path != entry)
    return ProjectLayout(
        kind="full",
        architecture_entrypoint=entry,
        architecture_files=(entry, *helpers),
        training_entrypoint=entry,
        training_files=(entry,),
        architecture_id=None,
        manifest_file=None,
    )


def resolve_layout(files: Mapping[str, bytes], limits: IntakeLimits | None = None) -> ProjectLayout:
    """Read the root ``prism.yaml``/``prism.yml`` (if any) and map the archive's files to roles.

    Raises :class:`ProjectManifestError` carrying every manifest problem found.
    """
    present = [name for name in MANIFEST_NAMES if name in files]
    if len(present) > 1:
        raise ProjectManifestError(
            "both prism.yaml and prism.yml are present; keep one", code="manifest.conflict", file=present[1]
        )
    if not present:
        return _default_layout(files)
    manifest_file = present[0]
    data, lines = load_yaml(files[manifest_file].decode("utf-8"), manifest_file, limits or IntakeLimits())
    problems = manifest_problems(data, lines, manifest_file) + _file_problems(
        data, lines, files, manifest_file
    )
    if problems:
        raise ProjectManifestError.from_problems(sorted(problems, key=lambda p: (p.line or 0, p.code)))
    return _layout_from_manifest(ProjectManifest.model_validate(data), files, manifest_file)


# ---------------------------------------------------------------------------------------------
# formats PRISM does not run


def _defines(source: bytes, name: str) -> bool:
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return False
    return any(
        isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == name for node in tree.body
    )


def two_script_folder(files: Mapping[str, bytes]) -> str | None:
    """The folder holding an ``architecture.py`` + ``training.py`` pair whose ``training.py``
    defines ``train`` and whose ``architecture.py`` has no ``get_recipe``; None if there is none."""
    for path in sorted(files):
        pure = PurePosixPath(path)
        if pure.name != "training.py":
            continue
        architecture = (pure.parent / "architecture.py").as_posix()
        if (
            architecture in files
            and _defines(files[path], "train")
            and not _defines(files[architecture], "get_recipe")
        ):
            return pure.parent.as_posix()
    return None


def unsupported_format(folder: str) -> Problem:
    where = "" if folder == "." else f" in {folder}/"
    return Problem(
        "manifest.unsupported_format",
        f"unsupported submission format: this is the two-script format (architecture.py + training.py "
        f"with train(...){where}), which PRISM does not run. A PRISM submission defines build_model(ctx) "
        f"and get_recipe(ctx), optionally with training hooks; see {FORMATS_DOC}",
        None,
        None,
    )
