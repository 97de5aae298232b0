"""The submission's own import graph, read statically from the AST (nothing is imported).

Intake uses it to decide which unattributed ``.py`` files (those no role in ``prism.yaml``
lists) an entrypoint can import: those count toward that role's fingerprint, so the fingerprint
covers the code that can run. The resolution follows Python's rules loosely and on purpose
errs towards *more* files: every import statement counts, wherever it sits (inside a function,
under ``if``, in a ``try``); a module name is looked up in every import root rather than only
the first that has it; and importing ``a.b`` reaches ``a/__init__.py`` as well as ``a/b.py``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import PurePosixPath


def _module_files(bases: Iterable[str], parts: list[str], python_files: frozenset[str]) -> set[str]:
    """Files importing the dotted ``parts`` can execute, looked up under each of ``bases``."""
    found: set[str] = set()
    for base in bases:
        prefix = PurePosixPath(base)
        for depth in range(1, len(parts) + 1):
            package_init = prefix.joinpath(*parts[:depth], "__init__.py").as_posix()
            if package_init in python_files:
                found.add(package_init)
        if parts:
            module = prefix.joinpath(*parts[:-1], parts[-1] + ".py").as_posix()
            if module in python_files:
                found.add(module)
    return found


def _relative_base(file: str, level: int) -> str | None:
    """The folder a relative import of ``level`` dots starts from, or None above the root."""
    folder = PurePosixPath(file).parent
    for _ in range(level - 1):
        if folder == PurePosixPath("."):
            return None
        folder = folder.parent
    return folder.as_posix()


def _from_import_targets(
    file: str, node: ast.ImportFrom, roots: tuple[str, ...], python_files: frozenset[str]
) -> set[str]:
    if node.level:
        base = _relative_base(file, node.level)
        if base is None:
            return set()
        bases: tuple[str, ...] = (base,)
        found = {PurePosixPath(base, "__init__.py").as_posix()} & python_files
    else:
        bases, found = roots, set()
    module = node.module.split(".") if node.module else []
    found |= _module_files(bases, module, python_files)
    for alias in node.names:  # `from pkg import sub` may name a submodule
        if alias.name != "*":
            found |= _module_files(bases, [*module, alias.name], python_files)
    return found


def import_targets(
    file: str, tree: ast.Module, roots: tuple[str, ...], python_files: frozenset[str]
) -> set[str]:
    """Every submission file one module can import directly."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found |= _module_files(roots, alias.name.split("."), python_files)
        elif isinstance(node, ast.ImportFrom):
            found |= _from_import_targets(file, node, roots, python_files)
    found.discard(file)
    return found


def reachable(
    start: str, trees: Mapping[str, ast.Module], roots: tuple[str, ...], python_files: Iterable[str]
) -> set[str]:
    """Every submission file importable, directly or through other files, from ``start``."""
    known = frozenset(python_files)
    seen = {start}
    frontier = [start]
    while frontier:
        current = frontier.pop()
        tree = trees.get(current)
        if tree is None:
            continue
        for target in import_targets(current, tree, roots, known):
            if target not in seen:
                seen.add(target)
                frontier.append(target)
    return seen
