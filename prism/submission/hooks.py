"""Training hooks, found and checked statically (nothing is imported).

Hooks are looked up at module level in the training entrypoint first, then in the architecture
entrypoint. Each one found is followed to its definition (a ``def`` or ``lambda`` in that
module, or one re-exported with ``from helpers import compute_loss``) and its parameters are
checked against :data:`prism.evaluator.interface.HOOK_SIGNATURES`. PRISM calls hooks with
positional arguments, so a hook must accept exactly that many; names are free, except that
an expected name in another position (``train_step(model, optimizer, batch, ctx)``) means
swapped arguments and is refused. Hooks that cannot be followed statically (a callable object,
``functools.partial``) are left to the run.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping

from prism.evaluator.interface import HOOK_NAMES, HOOK_SIGNATURES
from prism.submission.errors import Problem
from prism.submission.imports import import_targets
from prism.submission.static_gate import module_level_names

_MAX_REEXPORT_DEPTH = 8
_Callable = ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda


def find_hooks(entrypoints: Iterable[tuple[str, ast.Module]]) -> dict[str, str]:
    """Hook name -> file, looking in each entrypoint in order (training first, then architecture)."""
    hooks: dict[str, str] = {}
    for file, tree in entrypoints:
        defined = module_level_names(tree)
        for hook in HOOK_NAMES:
            if hook in defined and hook not in hooks:
                hooks[hook] = file
    return {hook: hooks[hook] for hook in HOOK_NAMES if hook in hooks}


def _last_binding(tree: ast.Module, name: str) -> ast.stmt | None:
    """The last top-level statement binding ``name`` (the one in effect after import)."""
    found: ast.stmt | None = None
    for statement in tree.body:
        if isinstance(statement, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            if statement.name == name:
                found = statement
        elif isinstance(statement, ast.Assign):
            if any(isinstance(t, ast.Name) and t.id == name for t in statement.targets):
                found = statement
        elif isinstance(statement, ast.ImportFrom) and any(
            (alias.asname or alias.name) == name for alias in statement.names
        ):
            found = statement
    return found


class _Resolver:
    """Follows a hook name to the ``def`` or ``lambda`` that implements it."""

    def __init__(self, trees: Mapping[str, ast.Module], roots: tuple[str, ...]) -> None:
        self.trees = trees
        self.roots = roots
        self.python_files = frozenset(trees)

    def resolve(self, file: str, name: str, depth: int = 0) -> tuple[str, _Callable] | None:
        tree = self.trees.get(file)
        statement = _last_binding(tree, name) if tree is not None else None
        if statement is None or depth > _MAX_REEXPORT_DEPTH:
            return None
        if isinstance(statement, ast.FunctionDef | ast.AsyncFunctionDef):
            return file, statement
        if isinstance(statement, ast.Assign) and isinstance(statement.value, ast.Lambda):
            return file, statement.value
        if isinstance(statement, ast.ImportFrom):
            return self._follow_import(file, statement, name, depth)
        return None

    def _follow_import(
        self, file: str, statement: ast.ImportFrom, name: str, depth: int
    ) -> tuple[str, _Callable] | None:
        original = next(a.name for a in statement.names if (a.asname or a.name) == name)
        single = ast.Module(body=[statement], type_ignores=[])
        for target in sorted(import_targets(file, single, self.roots, self.python_files)):
            found = self.resolve(target, original, depth + 1)
            if found is not None:
                return found
        return None


def _signature_problem(hook: str, node: _Callable) -> str | None:
    """Why PRISM's positional call of ``hook`` would not fit ``node``, or None if it fits."""
    expected = HOOK_SIGNATURES[hook]
    call = f"PRISM calls it as {hook}({', '.join(expected)})"
    if isinstance(node, ast.AsyncFunctionDef):
        return f"hook {hook} is async; {call} and needs a plain def"
    args = node.args
    positional = [a.arg for a in (*args.posonlyargs, *args.args)]
    required = len(positional) - len(args.defaults)
    takes = f"({', '.join(positional)}{', *' + args.vararg.arg if args.vararg else ''})"
    if required > len(expected) or (len(positional) < len(expected) and args.vararg is None):
        return f"hook {hook} takes {takes}; {call}: exactly {len(expected)} positional arguments"
    keyword_only = [a.arg for a, d in zip(args.kwonlyargs, args.kw_defaults, strict=True) if d is None]
    if keyword_only:
        return f"hook {hook} needs keyword-only argument(s) {', '.join(keyword_only)}, which PRISM never passes; {call}"
    for index, param in enumerate(positional[: len(expected)]):
        if param in expected and param != expected[index]:
            return (
                f"hook {hook} takes {param!r} as argument {index + 1}, but PRISM passes "
                f"{expected[index]!r} there (swapped arguments?); {call}"
            )
    return None


def check_hook_signatures(
    hooks: Mapping[str, str], trees: Mapping[str, ast.Module], roots: tuple[str, ...]
) -> list[Problem]:
    """A ``static.hook_signature`` problem for every hook whose parameters do not fit the call."""
    resolver = _Resolver(trees, roots)
    problems = []
    for hook, file in hooks.items():
        found = resolver.resolve(file, hook)
        if found is None:
            continue
        where, node = found
        message = _signature_problem(hook, node)
        if message is not None:
            problems.append(Problem("static.hook_signature", message, where, node.lineno))
    return problems
