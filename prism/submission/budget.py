"""The information budget: how much free-form content a submission may carry.

Trained weights are information. A submission that could ship them (as a literal, in comments,
in identifiers, in a data file it reads back through some bypass of the static gate) would
start training already knowing the data. The total archive size caps everything; inside it,
this module measures each channel that can hold arbitrary bytes cheaply and refuses a
submission that goes over the budget (the numbers, and how they were chosen, are in
docs/submissions.md, "Information budget", and docs/security.md, "Smuggling"):

* string and bytes literals (one literal, and all of them together), docstrings apart;
* docstrings: every string that stands alone as a statement (one, and all of them together);
* comments (all of them together);
* numbers: numeric constants inside one list/tuple/set/dict display, and the source characters
  of all numeric literals together;
* identifiers: the longest one, and the bytes of all distinct identifiers together;
* files that are not Python (``README.md``, ``configs/*.json``, ``prism.yaml``).

Totals are checked in path order and then source order, so the problem for a total names the
file and line where it was crossed. Nothing here runs submission code.
"""

from __future__ import annotations

import ast
import io
import tokenize
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict

from prism.submission.errors import Problem
from prism.submission.limits import IntakeLimits

_DISPLAYS = (ast.List, ast.Tuple, ast.Set, ast.Dict)


class BudgetUsage(BaseModel):
    """What a submission spends of each budget (``prism check --json`` prints it)."""

    model_config = ConfigDict(extra="forbid")

    total_bytes: int = 0
    python_bytes: int = 0
    other_file_bytes: int = 0
    string_bytes: int = 0
    longest_string: int = 0
    docstring_bytes: int = 0
    longest_docstring: int = 0
    comment_bytes: int = 0
    number_chars: int = 0
    largest_number_display: int = 0
    identifier_bytes: int = 0
    longest_identifier: int = 0


@dataclass
class _Tally:
    """Running totals (keyed like :class:`BudgetUsage`); each total reports once, where crossed."""

    limits: IntakeLimits
    counts: Counter[str] = field(default_factory=Counter)
    problems: list[Problem] = field(default_factory=list)
    identifiers: set[str] = field(default_factory=set)

    def add(
        self, total: str, amount: int, cap: int, code: str, what: str, file: str, line: int | None
    ) -> None:
        before = self.counts[total]
        self.counts[total] = before + amount
        if before <= cap < before + amount:
            self.problems.append(
                Problem(code, f"{what} pass the budget of {cap:,} for the whole submission here", file, line)
            )

    def most(self, key: str, value: int) -> None:
        self.counts[key] = max(self.counts[key], value)

    def usage(self) -> BudgetUsage:
        return BudgetUsage(**self.counts)


def _docstring_nodes(tree: ast.Module) -> set[int]:
    """ids of the Constant nodes that are docstrings: every string that stands alone as a
    statement (the docstring of a module, class or function, and prose strings elsewhere)."""
    return {
        id(node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Expr)
        and isinstance(node.value, ast.Constant)
        and isinstance(node.value.value, str)
    }


def _literal_size(value: str | bytes) -> int:
    return len(value) if isinstance(value, bytes) else len(value.encode("utf-8", "surrogatepass"))


def _numbers_in_display(node: ast.AST) -> int:
    """Numeric constants reachable from a display through displays and unary signs only."""
    if isinstance(node, ast.Constant):
        return int(isinstance(node.value, int | float | complex) and not isinstance(node.value, bool))
    if isinstance(node, ast.UnaryOp):
        return _numbers_in_display(node.operand)
    if isinstance(node, ast.Dict):
        return sum(_numbers_in_display(n) for n in (*node.keys, *node.values) if n is not None)
    if isinstance(node, ast.List | ast.Tuple | ast.Set):
        return sum(_numbers_in_display(n) for n in node.elts)
    if isinstance(node, ast.Starred):
        return _numbers_in_display(node.value)
    return 0


def _outermost_displays(tree: ast.Module) -> Iterator[ast.AST]:
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, _DISPLAYS):
            yield node
            continue  # nested displays are counted with their outermost display
        stack.extend(ast.iter_child_nodes(node))


def _check_literals(path: str, tree: ast.Module, tally: _Tally) -> None:
    limits = tally.limits
    docstrings = _docstring_nodes(tree)
    constants = sorted(
        (n for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str | bytes)),
        key=lambda n: (n.lineno, n.col_offset),
    )
    for node in constants:
        size = _literal_size(node.value)
        if id(node) in docstrings:
            tally.most("longest_docstring", size)
            if size > limits.max_docstring_bytes:
                tally.problems.append(
                    Problem(
                        "static.docstring_too_long",
                        f"docstring of {size:,} bytes; one docstring may hold {limits.max_docstring_bytes:,}",
                        path,
                        node.lineno,
                    )
                )
            tally.add(
                "docstring_bytes", size, limits.max_docstring_total, "static.docstrings_over_budget",
                "docstrings", path, node.lineno,
            )  # fmt: skip
            continue
        tally.most("longest_string", size)
        if size > limits.max_string_bytes:
            tally.problems.append(
                Problem(
                    "static.string_too_long",
                    f"string literal of {size:,} bytes; one literal may hold {limits.max_string_bytes:,} "
                    "(data belongs in training, not in the code)",
                    path,
                    node.lineno,
                )
            )
        tally.add(
            "string_bytes", size, limits.max_string_total, "static.strings_over_budget",
            "string literals", path, node.lineno,
        )  # fmt: skip


def _check_displays(path: str, tree: ast.Module, tally: _Tally) -> None:
    cap = tally.limits.max_display_numbers
    for node in sorted(_outermost_displays(tree), key=lambda n: (n.lineno, n.col_offset)):
        count = _numbers_in_display(node)
        tally.most("largest_number_display", count)
        if count > cap:
            tally.problems.append(
                Problem(
                    "static.number_table",
                    f"a {type(node).__name__.lower()} literal holds {count:,} numbers; one literal may "
                    f"hold {cap:,} (a table of numbers is data: learn it in training)",
                    path,
                    node.lineno,
                )
            )


def _check_tokens(path: str, source: bytes, tally: _Tally) -> None:
    """Comments, numeric literal text and identifiers, straight from the token stream."""
    limits = tally.limits
    try:
        tokens = list(tokenize.tokenize(io.BytesIO(source).readline))
    except (tokenize.TokenError, SyntaxError):  # the AST parse already reported this file
        return
    for token in tokens:
        line = token.start[0]
        if token.type == tokenize.COMMENT:
            tally.add(
                "comment_bytes", _literal_size(token.string), limits.max_comment_total,
                "static.comments_over_budget", "comments", path, line,
            )  # fmt: skip
        elif token.type == tokenize.NUMBER:
            tally.add(
                "number_chars", len(token.string), limits.max_number_chars,
                "static.numbers_over_budget", "numeric literals (in characters)", path, line,
            )  # fmt: skip
        elif token.type == tokenize.NAME:
            _check_identifier(path, token.string, line, tally)


def _check_identifier(path: str, name: str, line: int, tally: _Tally) -> None:
    limits = tally.limits
    tally.most("longest_identifier", len(name))
    if len(name) > limits.max_identifier_chars and name not in tally.identifiers:
        tally.problems.append(
            Problem(
                "static.identifier_too_long",
                f"identifier of {len(name)} characters; the limit is {limits.max_identifier_chars}",
                path,
                line,
            )
        )
    if name not in tally.identifiers:
        tally.identifiers.add(name)
        tally.add(
            "identifier_bytes", _literal_size(name), limits.max_identifier_total,
            "static.identifiers_over_budget", "distinct identifiers (in bytes)", path, line,
        )  # fmt: skip


def check_budget(
    files: Mapping[str, bytes], trees: Mapping[str, ast.Module], limits: IntakeLimits
) -> tuple[BudgetUsage, list[Problem]]:
    """Measure every channel of ``files`` (``trees``: the parsed ``.py`` files) against ``limits``."""
    tally = _Tally(limits)
    for path in sorted(files):
        content = files[path]
        tally.counts["total_bytes"] += len(content)
        if not path.endswith(".py"):
            tally.add(
                "other_file_bytes", len(content), limits.max_other_file_bytes,
                "zip.other_files_over_budget", "files that are not Python", path, None,
            )  # fmt: skip
            continue
        tally.counts["python_bytes"] += len(content)
        tree = trees.get(path)
        if tree is None:  # did not parse: static.syntax was reported for it
            continue
        _check_literals(path, tree, tally)
        _check_displays(path, tree, tally)
        _check_tokens(path, content, tally)
    return tally.usage(), tally.problems
