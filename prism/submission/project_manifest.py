"""``prism.yaml``: what a project declares, parsed strictly and reported all at once.

The manifest is parsed with ``yaml.safe_load`` only after a pass over the raw event stream has
refused anchors/aliases (an alias bomb expands a few hundred bytes into gigabytes), deep nesting
and duplicate keys. Those are fatal: nothing else can be read from such a file. Everything after
that (unknown keys, wrong types, kinds and their sections) is collected into one list of
problems, each with the line it concerns and, for a misspelt key or kind, the likely intended
one. :mod:`prism.submission.layout` then checks the manifest against the archive.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from prism.submission.errors import Problem, ProjectManifestError
from prism.submission.limits import IntakeLimits

Kind = Literal["full", "architecture_only", "training_for_arch"]
KINDS: tuple[str, ...] = ("full", "architecture_only", "training_for_arch")
MANIFEST_NAMES: tuple[str, ...] = ("prism.yaml", "prism.yml")
_ARCHITECTURE_ID = r"^[A-Za-z0-9][A-Za-z0-9._:\-]{0,127}$"
#: A YAML path (keys and list indices) -> the 1-based line it starts on.
LineMap = dict[tuple[str | int, ...], int]


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


_TOP_KEYS: tuple[str, ...] = tuple(ProjectManifest.model_fields)
_ROLE_KEYS: tuple[str, ...] = tuple(RoleSpec.model_fields)


def did_you_mean(value: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest choice, or an empty string."""
    match = difflib.get_close_matches(value, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""


# ---------------------------------------------------------------------------------------------
# YAML: the fatal checks, then a map of where each key and item sits


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


def _line_map(root: yaml.Node | None, file: str) -> LineMap:
    """Where every key and list item starts; duplicate keys (all of them) are refused."""
    lines: LineMap = {}
    duplicates: list[Problem] = []
    stack: list[tuple[tuple[str | int, ...], yaml.Node]] = [((), root)] if root is not None else []
    while stack:
        path, node = stack.pop()
        lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            seen: set[str] = set()
            for key, value in node.value:
                name = str(key.value) if isinstance(key, yaml.ScalarNode) else "?"
                if name in seen:
                    duplicates.append(
                        Problem("manifest.yaml", f"key {name!r} appears twice", file, key.start_mark.line + 1)
                    )
                seen.add(name)
                lines[(*path, name)] = key.start_mark.line + 1
                stack.append(((*path, name), value))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(((*path, index), item) for index, item in enumerate(node.value))
    if duplicates:
        raise ProjectManifestError.from_problems(sorted(duplicates, key=lambda p: p.line or 0))
    return lines


def load_yaml(text: str, file: str, limits: IntakeLimits) -> tuple[Any, LineMap]:
    """The manifest's data and line map. Raises for anything that makes the file unreadable."""
    if len(text.encode("utf-8")) > limits.max_manifest_bytes:
        raise ProjectManifestError(
            f"prism.yaml is larger than {limits.max_manifest_bytes} bytes",
            code="manifest.too_large",
            file=file,
        )
    try:
        _check_event_stream(text, file, limits)
        lines = _line_map(yaml.compose(text, Loader=yaml.SafeLoader), file)
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
    return data, lines


def line_of(lines: LineMap, path: tuple[str | int, ...]) -> int | None:
    """The line of ``path``, or of its nearest ancestor that has one."""
    for end in range(len(path), 0, -1):
        if path[:end] in lines:
            return lines[path[:end]]
    return None


# ---------------------------------------------------------------------------------------------
# schema and kind rules, all collected


def _schema_message(error: Any) -> str:
    loc = tuple(error["loc"])
    where = ".".join(str(item) for item in loc) or "(top level)"
    kind = error["type"]
    if kind == "extra_forbidden":
        allowed = _ROLE_KEYS if len(loc) > 1 else _TOP_KEYS
        return (
            f"unknown key {where!r}{did_you_mean(str(loc[-1]), allowed)}; allowed here: {', '.join(allowed)}"
        )
    if kind == "missing":
        return f"missing key {where!r}"
    if loc == ("kind",) and kind == "literal_error":
        value = str(error.get("input"))
        return f"kind {value!r} is not one of {', '.join(KINDS)}{did_you_mean(value, KINDS)}"
    if loc == ("architecture_id",) and kind == "string_pattern_mismatch":
        return (
            f"architecture_id {error.get('input')!r} must be 1-128 characters of "
            "A-Z a-z 0-9 . _ : - starting with a letter or digit (a family id, e.g. fam-0123abcd...)"
        )
    return f"{where}: {error['msg']}"


def _schema_problems(data: dict[str, Any], lines: LineMap, file: str) -> list[Problem]:
    try:
        ProjectManifest.model_validate(data)
    except ValidationError as exc:
        return [
            Problem("manifest.schema", _schema_message(error), file, line_of(lines, tuple(error["loc"])))
            for error in exc.errors()
        ]
    return []


def _kind_problems(data: dict[str, Any], lines: LineMap, file: str) -> list[Problem]:
    """Which sections and keys each kind needs or forbids (docs/submissions.md, "Kinds and roles")."""
    kind = data.get("kind")
    if kind not in KINDS:
        return []  # reported by the schema
    has_training = data.get("training") is not None
    has_id = data.get("architecture_id") is not None
    where = line_of(lines, ("kind",))
    problems = []
    if kind == "training_for_arch" and not has_id:
        problems.append(
            Problem(
                "manifest.architecture_id_required",
                "kind training_for_arch must name the target family with architecture_id "
                "(`prism identify` prints a project's family id)",
                file,
                where,
            )
        )
    if kind == "training_for_arch" and not has_training:
        problems.append(
            Problem(
                "manifest.training_required", "kind training_for_arch needs a training section", file, where
            )
        )
    if kind != "training_for_arch" and has_id:
        problems.append(
            Problem(
                "manifest.architecture_id_forbidden",
                f"architecture_id only applies to kind training_for_arch, not {kind}",
                file,
                line_of(lines, ("architecture_id",)),
            )
        )
    if kind == "architecture_only" and has_training:
        problems.append(
            Problem(
                "manifest.training_forbidden",
                "kind architecture_only claims no training; remove the training section or use kind full",
                file,
                line_of(lines, ("training",)),
            )
        )
    return problems


def manifest_problems(data: dict[str, Any], lines: LineMap, file: str) -> list[Problem]:
    """Every schema and kind problem of a readable manifest, in line order."""
    problems = _schema_problems(data, lines, file) + _kind_problems(data, lines, file)
    return sorted(problems, key=lambda p: (p.line or 0, p.code))


def parse_project_manifest(
    text: str, *, file: str = "prism.yaml", limits: IntakeLimits | None = None
) -> ProjectManifest:
    """Parse and validate manifest text. Raises :class:`ProjectManifestError` carrying every problem."""
    data, lines = load_yaml(text, file, limits or IntakeLimits())
    problems = manifest_problems(data, lines, file)
    if problems:
        raise ProjectManifestError.from_problems(problems)
    return ProjectManifest.model_validate(data)


def is_valid_architecture_id(value: str) -> bool:
    return re.match(_ARCHITECTURE_ID, value) is not None
