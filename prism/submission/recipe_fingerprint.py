"""A training recipe's normalised fingerprint: the same for copies that differ only in form.

Rules v2 deduplicate training recipes across every family (``prism.scoring.training``). An exact
code hash is beaten by renaming a variable or adding a comment; this fingerprint is taken over
the recipe's *syntax trees* after removing what does not change behaviour:

* comments and formatting (the tree has none), docstrings;
* file names and file order (each file's tree is hashed, the hashes sorted);
* the names the files bind themselves (functions, classes, arguments, locals, import aliases):
  each becomes ``_n<k>`` in order of first appearance, except the names of the contract
  (``get_recipe``, ``build_model`` and the training hooks), which the harness looks up.

Attribute names, imported modules, literals and the tree's shape are kept: ``lr=3e-4`` and
``lr=1e-3`` stay different recipes, as do ``torch.optim.AdamW`` and ``torch.optim.SGD``. The
fingerprint is evidence for the copy rule, computed on the host from the ZIP's bytes (no code
runs).
"""

from __future__ import annotations

import ast
import builtins
import hashlib
from collections.abc import Mapping, Sequence

#: Names the harness looks up in a submission: renaming them changes what runs.
CONTRACT_NAMES = frozenset({
    "get_recipe", "build_model", "configure_optimizer", "compute_loss", "train_step", "inference_logits",
    "infer", "on_step_end", "init_weights",
})  # fmt: skip
_BUILTINS = frozenset(dir(builtins))


class _Renamer(ast.NodeTransformer):
    """Rename the names a module binds, in order of first appearance; drop docstrings."""

    def __init__(self, bound: set[str]) -> None:
        self.bound = bound
        self.names: dict[str, str] = {}

    def _name(self, name: str) -> str:
        if name not in self.bound or name in CONTRACT_NAMES:
            return name
        return self.names.setdefault(name, f"_n{len(self.names)}")

    def visit_Name(self, node: ast.Name) -> ast.AST:
        node.id = self._name(node.id)
        return node

    def visit_arg(self, node: ast.arg) -> ast.AST:
        node.arg, node.annotation = self._name(node.arg), None
        return node

    def visit_alias(self, node: ast.alias) -> ast.AST:
        # ``import torch`` and ``import torch as T`` bind a name the same way: both get an alias
        if node.asname is not None or "." not in node.name:
            node.asname = self._name(node.asname or node.name)
        return node

    def generic_visit(self, node: ast.AST) -> ast.AST:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            node.name = self._name(node.name)
        if isinstance(node, ast.Module | ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            node.body = _without_docstring(node.body)
        return super().generic_visit(node)


def _without_docstring(body: list[ast.stmt]) -> list[ast.stmt]:
    first = body[0] if body else None
    if (
        isinstance(first, ast.Expr)
        and isinstance(first.value, ast.Constant)
        and isinstance(first.value.value, str)
    ):
        return body[1:] or [ast.Pass()]
    return body


def _bound_names(tree: ast.Module) -> set[str]:
    """Every name the module binds itself (never a builtin it merely uses)."""
    bound: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store | ast.Del):
            bound.add(node.id)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            bound.add(node.name)
        elif isinstance(node, ast.alias) and (node.asname is not None or "." not in node.name):
            bound.add(node.asname or node.name)
    return bound - _BUILTINS


def normalised_tree(source: bytes) -> str:
    """The module's tree after normalisation, as a string (raises SyntaxError on bad source)."""
    tree = ast.parse(source)
    tree = _Renamer(_bound_names(tree)).visit(tree)
    return ast.dump(tree, annotate_fields=False, include_attributes=False)


def recipe_fingerprint(files: Mapping[str, bytes], paths: Sequence[str]) -> str | None:
    """sha256 over the sorted normalised trees of ``paths``; None when there is no recipe code
    or a file does not parse (intake has already rejected such a ZIP)."""
    sources = [files[p] for p in paths if p.endswith(".py") and p in files]
    if not sources:
        return None
    try:
        digests = sorted(hashlib.sha256(normalised_tree(s).encode()).hexdigest() for s in sources)
    except (SyntaxError, ValueError):
        return None
    return hashlib.sha256("\n".join(digests).encode()).hexdigest()
