"""``prism.yaml``: what a project declares, and how files map to roles.

The manifest is parsed with ``yaml.safe_load`` only after a pass over the raw event stream has
refused anchors/aliases (an alias bomb expands a few hundred bytes into gigabytes), deep nesting
and duplicate keys. The result is a strict pydantic model; :func:`resolve_layout` then checks it
against the archive and yields the :class:`ProjectLayout` the rest of intake works from.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from prism.submission.errors import ProjectManifestError
from prism.submission.limits import IntakeLimits

Kind = Literal["full", "architecture_only", "training_for_arch"]
KINDS: tuple[str, ...] = ("full", "architecture_only", "training_for_arch")
MANIFEST_NAMES: tuple[str, ...] = ("prism.yaml", "prism.yml")
DEFAULT_ENTRYPOINT = "model.py"
_ARCHITECTURE_ID = r"^[A-Za-z0-9][A-Za-z0-9._:\-]{0,127}$"


class RoleSpec(BaseModel):
    """One role's code: the module the evaluator imports, plus the helper modules it uses."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    entrypoint: str = Field(min_length=1, max_length=400)
    files: list[str] = Field(default_factory=list, max_length=400)


class ProjectManifest(BaseModel):
    """The schema of ``prism.yaml``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Kind
    architecture: RoleSpec
    training: RoleSpec | None = None
    architecture_id: str | None = Field(default=None, pattern=_ARCHITECTURE_ID)


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


# ---------------------------------------------------------------------------------------------
# parsing


def _check_event_stream(text: str, file: str, limits: IntakeLimits) -> None:
    """Refuse anchors, aliases and deep nesting before anything is constructed."""
    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
            raise ProjectManifestError(
                "YAML anchors and aliases are not allowed in prism.yaml",
                code="manifest.yaml_alias",
                file=file,
                line=event.start_mark.line + 1,
            )
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > limits.max_manifest_depth:
                raise ProjectManifestError(
                    f"prism.yaml nests deeper than {limits.max_manifest_depth} levels",
                    code="manifest.too_large",
                    file=file,
                    line=event.start_mark.line + 1,
                )
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1


def _check_duplicate_keys(node: yaml.Node | None, file: str) -> None:
    """``safe_load`` keeps the last of two equal keys; a manifest must not be that ambiguous."""
    stack = [node] if node is not None else []
    while stack:
        current = stack.pop()
        if isinstance(current, yaml.MappingNode):
            seen: set[str] = set()
            for key, value in current.value:
                if isinstance(key, yaml.ScalarNode):
                    if key.value in seen:
                        raise ProjectManifestError(
                            f"key {key.value!r} appears twice",
                            code="manifest.yaml",
                            file=file,
                            line=key.start_mark.line + 1,
                        )
                    seen.add(key.value)
                stack.extend((key, value))
        elif isinstance(current, yaml.SequenceNode):
            stack.extend(current.value)


def _format_validation_error(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors():
        location = ".".join(str(item) for item in error["loc"]) or "(top level)"
        parts.append(f"{location}: {error['msg']}")
    return "; ".join(parts)


def parse_project_manifest(
    text: str, *, file: str = "prism.yaml", limits: IntakeLimits | None = None
) -> ProjectManifest:
    """Parse and validate manifest text. Raises :class:`ProjectManifestError` with a stable code."""
    limits = limits or IntakeLimits()
    if len(text.encode("utf-8")) > limits.max_manifest_bytes:
        raise ProjectManifestError(
            f"prism.yaml is larger than {limits.max_manifest_bytes} bytes",
            code="manifest.too_large",
            file=file,
        )
    try:
        _check_event_stream(text, file, limits)
        _check_duplicate_keys(yaml.compose(text, Loader=yaml.SafeLoader), file)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark is not None else None
        raise ProjectManifestError(
            f"invalid YAML: {exc.problem or exc}", code="manifest.yaml", file=file, line=line
        ) from None
    except (yaml.YAMLError, RecursionError, ValueError, TypeError) as exc:
        raise ProjectManifestError(f"invalid YAML: {exc}", code="manifest.yaml", file=file) from None
    if not isinstance(data, dict):
        raise ProjectManifestError(
            "prism.yaml must be a mapping (key: value lines)", code="manifest.yaml", file=file
        )
    if data.get("kind") == "training_for_arch" and not data.get("architecture_id"):
        raise ProjectManifestError(
            "kind training_for_arch must name the target family with architecture_id",
            code="manifest.architecture_id_required",
            file=file,
        )
    try:
        return ProjectManifest.model_validate(data)
    except ValidationError as exc:
        raise ProjectManifestError(_format_validation_error(exc), code="manifest.schema", file=file) from None


# ---------------------------------------------------------------------------------------------
# resolving against the archive


def _normalize_listed(path: str) -> str:
    return path[2:] if path.startswith("./") else path


def _ordered_unique(items: list[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


def _check_listed_files(paths: tuple[str, ...], files: Mapping[str, bytes], manifest_file: str) -> None:
    for path in paths:
        if path not in files:
            raise ProjectManifestError(
                f"prism.yaml lists {path!r}, which is not in the archive",
                code="manifest.missing_file",
                file=manifest_file,
            )
        if PurePosixPath(path).suffix != ".py":
            raise ProjectManifestError(
                f"{path!r} is listed as code but is not a .py file",
                code="manifest.not_python",
                file=manifest_file,
            )


def _check_roles(manifest: ProjectManifest, file: str) -> None:
    """Role rules (docs/submissions.md, "Roles"): presence of sections and architecture_id by kind."""
    if manifest.kind == "training_for_arch":
        if manifest.training is None:
            raise ProjectManifestError(
                "kind training_for_arch needs a training section",
                code="manifest.training_required",
                file=file,
            )
    elif manifest.architecture_id is not None:
        raise ProjectManifestError(
            f"architecture_id only applies to kind training_for_arch, not {manifest.kind}",
            code="manifest.architecture_id_forbidden",
            file=file,
        )
    if manifest.kind == "architecture_only" and manifest.training is not None:
        raise ProjectManifestError(
            "kind architecture_only claims no training; remove the training section or use kind full",
            code="manifest.training_forbidden",
            file=file,
        )


def _check_conflicts(
    arch_entry: str,
    arch_helpers: tuple[str, ...],
    train_entry: str,
    train_helpers: tuple[str, ...],
    file: str,
) -> None:
    """A file has one role. The one exception: both entrypoints may be the same module."""
    if arch_entry in train_helpers:
        raise ProjectManifestError(
            f"{arch_entry!r} is the architecture entrypoint and also a training file",
            code="manifest.conflict",
            file=file,
        )
    if train_entry in arch_helpers:
        raise ProjectManifestError(
            f"{train_entry!r} is the training entrypoint and also an architecture file",
            code="manifest.conflict",
            file=file,
        )
    shared = sorted(set(arch_helpers) & set(train_helpers))
    if shared:
        raise ProjectManifestError(
            f"{shared[0]!r} is listed under both architecture.files and training.files; list it once",
            code="manifest.conflict",
            file=file,
        )


def _layout_from_manifest(
    manifest: ProjectManifest, files: Mapping[str, bytes], manifest_file: str
) -> ProjectLayout:
    _check_roles(manifest, manifest_file)
    arch_entry = _normalize_listed(manifest.architecture.entrypoint)
    arch_helpers = _ordered_unique(
        [_normalize_listed(p) for p in manifest.architecture.files if _normalize_listed(p) != arch_entry]
    )
    train_entry: str | None = None
    train_helpers: tuple[str, ...] = ()
    if manifest.training is not None:
        train_entry = _normalize_listed(manifest.training.entrypoint)
        train_helpers = _ordered_unique(
            [_normalize_listed(p) for p in manifest.training.files if _normalize_listed(p) != train_entry]
        )
        _check_conflicts(arch_entry, arch_helpers, train_entry, train_helpers, manifest_file)
    elif manifest.kind == "full":
        train_entry = arch_entry  # a full project without a training section trains from its model module
    architecture_files = (arch_entry, *arch_helpers)
    training_files = (train_entry, *train_helpers) if train_entry is not None else ()
    _check_listed_files(architecture_files + training_files, files, manifest_file)
    listed = set(architecture_files) | set(training_files)
    for path in files:
        if path.endswith(".py") and path not in listed:
            raise ProjectManifestError(
                f"{path!r} is not listed in prism.yaml; every .py must be architecture or training code "
                "so the fingerprints cover all code that can run",
                code="manifest.unlisted_file",
                file=path,
            )
    return ProjectLayout(
        kind=manifest.kind,
        architecture_entrypoint=arch_entry,
        architecture_files=architecture_files,
        training_entrypoint=train_entry,
        training_files=training_files,
        architecture_id=manifest.architecture_id,
        manifest_file=manifest_file,
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
    """Read the root ``prism.yaml``/``prism.yml`` (if any) and map the archive's files to roles."""
    present = [name for name in MANIFEST_NAMES if name in files]
    if len(present) > 1:
        raise ProjectManifestError(
            "both prism.yaml and prism.yml are present; keep one", code="manifest.conflict"
        )
    if not present:
        return _default_layout(files)
    manifest_file = present[0]
    manifest = parse_project_manifest(files[manifest_file].decode("utf-8"), file=manifest_file, limits=limits)
    return _layout_from_manifest(manifest, files, manifest_file)


def is_valid_architecture_id(value: str) -> bool:
    return re.match(_ARCHITECTURE_ID, value) is not None
