"""The static gate: an ``ast`` pass over every ``.py`` file of a submission.

It is a cheap first filter that turns away obviously dangerous code with a clear message (file
and line). It is NOT the security boundary: Python offers too many indirect routes (for example
``torch.os.system``) for any syntax check to be complete. The sandbox and the separate
evaluation process are the boundary. The gate therefore aims at two things: no false rejections
of ordinary PyTorch training code, and no easy, direct route to processes, network, files,
dynamic code or interpreter internals.

Imports are checked against an explicit allowlist of top-level packages (see
``ALLOWED_PACKAGES``) plus the submission's own modules, imported by file stem or folder name.
"""

from __future__ import annotations

import ast
import io
import sys
import tokenize
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath

from prism.evaluator.interface import REQUIRED_FUNCTIONS
from prism.submission.errors import Problem

#: Top-level packages a submission may import. Everything else is refused, including (on
#: purpose) os, sys, subprocess, socket, ctypes, importlib, pickle, marshal, inspect, gc,
#: builtins, shutil, multiprocessing, threading, pathlib, io, tempfile, types and logging.
ALLOWED_PACKAGES: frozenset[str] = frozenset(
    {
        "__future__",
        "abc",
        "bisect",
        "collections",
        "contextlib",
        "copy",
        "dataclasses",
        "enum",
        "fractions",
        "functools",
        "heapq",
        "itertools",
        "json",
        "math",
        "numbers",
        "operator",
        "random",
        "re",
        "statistics",
        "string",
        "time",
        "typing",
        "typing_extensions",
        "warnings",
        "einops",
        "numpy",
        "torch",
    }
)
#: PRISM's own API: only the interface module, under either name.
INTERFACE_MODULES: frozenset[str] = frozenset(
    {"prism.evaluator.interface", "prism_challenge.evaluator.interface"}
)
_INTERFACE_PACKAGES = frozenset(name.rsplit(".", 1)[0] for name in INTERFACE_MODULES)
_INTERFACE_TOPS = frozenset(name.split(".")[0] for name in INTERFACE_MODULES)
#: Submodules of allowed packages that load native code, spawn processes or reach the network.
FORBIDDEN_SUBMODULES: frozenset[str] = frozenset(
    {
        "torch.hub",
        "torch.utils.cpp_extension",
        "torch.multiprocessing",
        "torch.distributed.rpc",
        "torch.utils.data.datapipes",
        "numpy.ctypeslib",
        "numpy.distutils",
        "numpy.f2py",
        "numpy.testing",
    }
)
#: Builtins that run or compile code, open files, or expose namespaces. Flagged wherever the
#: bare name is read, so aliasing (``f = eval``) does not slip by.
FORBIDDEN_NAMES: frozenset[str] = frozenset(
    {
        "eval",
        "exec",
        "compile",
        "__import__",
        "open",
        "globals",
        "locals",
        "vars",
        "breakpoint",
        "__builtins__",
        "__loader__",
        "__spec__",
    }
)
#: Attributes that lead to interpreter internals: the object graph, function/code objects, modules.
_OBJECT_ESCAPES = frozenset(
    {
        "__class__", "__bases__", "__base__", "__mro__", "mro", "__subclasses__", "__subclasshook__",
        "__dict__", "__getattribute__", "__reduce__", "__reduce_ex__", "__globals__", "__builtins__",
        "__code__", "__closure__", "__func__", "__self__", "__defaults__", "__kwdefaults__",
        "__objclass__", "__loader__", "__spec__", "__import__", "__file__", "__path__", "__traceback__",
    }
)  # fmt: skip
#: Frames, tracebacks, generators and code objects: the route to any caller's globals.
_FRAME_AND_CODE = frozenset(
    {
        "f_globals", "f_locals", "f_back", "f_builtins", "f_code", "tb_frame", "tb_next",
        "gi_frame", "gi_code", "cr_frame", "cr_code", "ag_frame", "co_code", "co_consts",
    }
)  # fmt: skip
#: Modules that allowed packages re-export (``torch.os``, ``numpy.sys``), and native-code or
#: download entry points.
_REEXPORTED_AND_NATIVE = frozenset(
    {
        "os", "sys", "subprocess", "builtins", "importlib", "ctypes", "socket", "shutil", "pickle",
        "marshal", "multiprocessing", "load_library", "cpp_extension", "hub", "ctypeslib", "f2py",
        "distutils",
    }
)  # fmt: skip
FORBIDDEN_ATTRIBUTES: frozenset[str] = _OBJECT_ESCAPES | _FRAME_AND_CODE | _REEXPORTED_AND_NATIVE
#: String constants that only make sense as a way around the attribute rule
#: (``operator.attrgetter("__globals__")``, ``getattr(f, "__globals__")``): flagged anywhere.
ESCAPE_STRINGS: frozenset[str] = frozenset(n for n in _OBJECT_ESCAPES if n.startswith("__")) | _FRAME_AND_CODE
#: getattr-family builtins whose constant attribute-name argument is checked like an attribute.
_ATTRIBUTE_BUILTINS = frozenset({"getattr", "setattr", "delattr", "hasattr"})
_UTF8_NAMES = frozenset({"utf-8", "utf-8-sig"})
#: Names a submission file or folder may not take: importing them by stem would silently load
#: the real package instead (so the gate would be checking the wrong code).
SHADOW_PROTECTED: frozenset[str] = frozenset(sys.stdlib_module_names) | ALLOWED_PACKAGES | _INTERFACE_TOPS


def import_roots(architecture_entrypoint: str, training_entrypoint: str | None) -> tuple[str, ...]:
    """Folders on ``sys.path`` when the evaluator imports a submission, first match first: the
    architecture entrypoint's folder, the training entrypoint's folder, then the root (``.``)."""
    folders = [str(PurePosixPath(architecture_entrypoint).parent)]
    if training_entrypoint is not None:
        folders.append(str(PurePosixPath(training_entrypoint).parent))
    folders.append(".")
    return tuple(dict.fromkeys(folders))


@dataclass(frozen=True)
class LocalModules:
    """The submission's own modules as the evaluator will see them.

    ``stems``: names importable absolutely (a file directly in an import root) -> files;
    ``folders``: package folders directly in an import root; ``anywhere``: every stem and folder
    name in the archive (targets of relative imports, and hints for unreachable modules).
    """

    stems: Mapping[str, tuple[str, ...]]
    folders: frozenset[str]
    anywhere: Mapping[str, tuple[str, ...]]

    @classmethod
    def from_paths(cls, paths: Iterable[str], roots: Iterable[str] = (".",)) -> LocalModules:
        stems: dict[str, list[str]] = {}
        folders: set[str] = set()
        anywhere: dict[str, list[str]] = {}
        python_files = sorted(path for path in paths if PurePosixPath(path).suffix == ".py")
        for path in python_files:
            pure = PurePosixPath(path)
            for name in (*pure.parts[:-1], pure.stem):
                anywhere.setdefault(name, []).append(path)
            for root in roots:
                relative = pure.parts if root == "." else _relative_parts(pure, root)
                if not relative:
                    continue
                if len(relative) > 1:
                    folders.add(relative[0])
                elif pure.stem != "__init__":
                    stems.setdefault(pure.stem, []).append(path)
        return cls(
            stems={k: tuple(dict.fromkeys(v)) for k, v in stems.items()},
            folders=frozenset(folders),
            anywhere={k: tuple(dict.fromkeys(v)) for k, v in anywhere.items()},
        )

    def __contains__(self, name: str) -> bool:
        return name in self.stems or name in self.folders


def _relative_parts(path: PurePosixPath, root: str) -> tuple[str, ...]:
    try:
        return path.relative_to(root).parts
    except ValueError:
        return ()


def _problem(code: str, message: str, file: str, node: ast.AST | None = None) -> Problem:
    return Problem(code=code, message=message, file=file, line=getattr(node, "lineno", None))


class _GateVisitor(ast.NodeVisitor):
    """Collects every problem in one module (it never stops at the first)."""

    def __init__(self, file: str, local: LocalModules) -> None:
        self.file = file
        self.local = local
        self.problems: list[Problem] = []

    def _add(self, code: str, message: str, node: ast.AST) -> None:
        self.problems.append(_problem(code, message, self.file, node))

    # imports -------------------------------------------------------------------------------

    def _check_module(self, module: str, node: ast.AST, imported_names: Iterable[str] = ()) -> None:
        top = module.split(".")[0]
        # `from torch import os` / `import numpy.sys`: a module re-exported by an allowed package.
        reexported = [n for n in (*module.split(".")[1:], *imported_names) if n in FORBIDDEN_ATTRIBUTES]
        if reexported:
            self._add(
                "static.forbidden_import", f"importing {reexported[0]!r} from {module!r} is not allowed", node
            )
            return
        if top in _INTERFACE_TOPS:
            self._check_interface_import(module, node, imported_names)
            return
        if top in ALLOWED_PACKAGES:
            for forbidden in FORBIDDEN_SUBMODULES:
                full_names = [module, *(f"{module}.{name}" for name in imported_names)]
                if any(name == forbidden or name.startswith(forbidden + ".") for name in full_names):
                    self._add("static.forbidden_import", f"import of {forbidden} is not allowed", node)
                    return
            return
        if top in self.local:
            matches = self.local.stems.get(top, ())
            if len(matches) > 1 and top not in self.local.folders:
                self._add(
                    "static.ambiguous_module",
                    f"module {top!r} matches several files ({', '.join(matches)}); rename one",
                    node,
                )
            return
        if top in self.local.anywhere:
            self._add(
                "static.unreachable_module",
                f"{top!r} ({', '.join(self.local.anywhere[top])}) is not on the import path, which holds only "
                "the entrypoints' folders and the project root; import it through its folder "
                "(e.g. `from blocks.attention import X`) or move it next to the entrypoint",
                node,
            )
            return
        self._add(
            "static.forbidden_import",
            f"import of {module!r} is not allowed (allowed: {', '.join(sorted(ALLOWED_PACKAGES))}, "
            "prism.evaluator.interface, and the submission's own modules)",
            node,
        )

    def _check_interface_import(self, module: str, node: ast.AST, imported_names: Iterable[str]) -> None:
        if module in INTERFACE_MODULES:
            return
        if module in _INTERFACE_PACKAGES and set(imported_names) <= {"interface"}:
            return
        self._add(
            "static.forbidden_import",
            f"only prism.evaluator.interface may be imported from PRISM, not {module!r}",
            node,
        )

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if alias.name in INTERFACE_MODULES:
                continue
            self._check_module(alias.name, node)
        self.generic_visit(node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level == 0 and node.module:
            self._check_module(node.module, node, [alias.name for alias in node.names])
        else:
            # Relative import inside the submission's own package: the target must be local.
            targets = [node.module.split(".")[0]] if node.module else [alias.name for alias in node.names]
            for target in targets:
                if target not in self.local.anywhere:
                    self._add(
                        "static.forbidden_import", f"relative import of unknown module {target!r}", node
                    )
        self.generic_visit(node)

    # names, calls and attributes -------------------------------------------------------------

    def visit_Name(self, node: ast.Name) -> None:
        if isinstance(node.ctx, ast.Load) and node.id in FORBIDDEN_NAMES:
            self._add("static.forbidden_call", f"{node.id} is not allowed in submissions", node)
        self.generic_visit(node)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if node.attr in FORBIDDEN_ATTRIBUTES:
            self._add(
                "static.forbidden_attribute", f"attribute {node.attr!r} is not allowed in submissions", node
            )
        self.generic_visit(node)

    def visit_Constant(self, node: ast.Constant) -> None:
        if isinstance(node.value, str) and node.value in ESCAPE_STRINGS:
            self._add(
                "static.forbidden_attribute", f"the string {node.value!r} is not allowed in submissions", node
            )

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        if isinstance(func, ast.Name) and func.id in _ATTRIBUTE_BUILTINS and len(node.args) >= 2:
            name_arg = node.args[1]
            if isinstance(name_arg, ast.Constant) and isinstance(name_arg.value, str):
                attr = name_arg.value
                # Escape strings are reported by visit_Constant; here the remaining dunders.
                if attr not in ESCAPE_STRINGS and (
                    attr in FORBIDDEN_ATTRIBUTES
                    or (attr.startswith("__") and attr not in _SAFE_DUNDER_STRINGS)
                ):
                    self._add(
                        "static.forbidden_attribute",
                        f"{func.id}(..., {attr!r}) is not allowed in submissions",
                        node,
                    )
        self.generic_visit(node)


#: Dunder names that getattr/hasattr may use by string (ordinary duck-typing checks).
_SAFE_DUNDER_STRINGS = frozenset(
    {"__len__", "__iter__", "__call__", "__getitem__", "__name__", "__qualname__", "__doc__"}
)


def _check_encoding(file: str, source: bytes) -> Problem | None:
    """Python honours ``# coding:`` cookies on import; a UTF-7 cookie would make the code that
    runs differ from the code the gate read. Only UTF-8 is accepted."""
    try:
        encoding, _ = tokenize.detect_encoding(io.BytesIO(source).readline)
    except SyntaxError as exc:
        return Problem("static.encoding", f"bad source encoding declaration: {exc.msg}", file, exc.lineno)
    if encoding.lower() not in _UTF8_NAMES:
        return Problem("static.encoding", f"source encoding {encoding!r} is not allowed; use UTF-8", file, 1)
    return None


def parse_module(file: str, source: bytes) -> tuple[ast.Module | None, list[Problem]]:
    """Parse exactly as the interpreter will (from bytes, honouring the coding cookie)."""
    encoding_problem = _check_encoding(file, source)
    if encoding_problem is not None:
        return None, [encoding_problem]
    try:
        return ast.parse(source, filename=file), []
    except SyntaxError as exc:
        return None, [Problem("static.syntax", f"syntax error: {exc.msg}", file, exc.lineno)]
    except (ValueError, RecursionError, MemoryError) as exc:
        return None, [Problem("static.syntax", f"cannot parse: {type(exc).__name__}", file, None)]


def check_module(file: str, tree: ast.Module, local: LocalModules) -> list[Problem]:
    """Every problem the gate finds in one parsed module, in source order."""
    visitor = _GateVisitor(file, local)
    try:
        visitor.visit(tree)
    except RecursionError:
        return [Problem("static.syntax", "code is nested too deeply to check", file, None)]
    return sorted(visitor.problems, key=lambda p: (p.line or 0, p.code))


def check_shadowing(paths: Iterable[str]) -> list[Problem]:
    """A file ``os.py`` or folder ``torch/`` would let a stem import pass as local while the real
    package loads at run time; refuse such names."""
    problems = []
    for path in sorted(paths):
        pure = PurePosixPath(path)
        if pure.suffix != ".py":
            continue
        for name in (*pure.parts[:-1], pure.stem):
            if name in SHADOW_PROTECTED:
                problems.append(
                    Problem(
                        "static.shadowed_module",
                        f"{name!r} is the name of a standard-library or allowed package; rename it",
                        path,
                        None,
                    )
                )
                break
    return problems


def module_level_names(tree: ast.Module) -> dict[str, int]:
    """Names bound by top-level statements (def, class, assignment, import) -> line."""
    names: dict[str, int] = {}
    for statement in tree.body:
        if isinstance(statement, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.setdefault(statement.name, statement.lineno)
        elif isinstance(statement, ast.Assign):
            for target in statement.targets:
                if isinstance(target, ast.Name):
                    names.setdefault(target.id, statement.lineno)
        elif (
            isinstance(statement, ast.AnnAssign)
            and isinstance(statement.target, ast.Name)
            and statement.value
        ):
            names.setdefault(statement.target.id, statement.lineno)
        elif isinstance(statement, ast.ImportFrom):
            for alias in statement.names:
                names.setdefault(alias.asname or alias.name, statement.lineno)
    return names


def check_required_functions(file: str, tree: ast.Module) -> list[Problem]:
    """The architecture entrypoint must define (or re-export) build_model and get_recipe."""
    defined = module_level_names(tree)
    return [
        Problem(
            f"static.missing_{name}",
            f"the architecture entrypoint must define {name}(ctx) at module level (or import it)",
            file,
            None,
        )
        for name in REQUIRED_FUNCTIONS
        if name not in defined
    ]
