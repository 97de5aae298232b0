"""Typed rejections of a submission.

Every rejection is a :class:`SubmissionError` (a :class:`prism.errors.MinerFault`): the miner sent
something PRISM will not run, so the submission is recorded and scored zero, never retried. Each
carries a stable dotted ``code`` (the table in docs/submissions.md lists them all), a message a
miner can act on, and the archive path and line where it applies.
"""

from __future__ import annotations

from dataclasses import dataclass

from prism.errors import MinerFault


@dataclass(frozen=True)
class Problem:
    """One finding of ``prism check``: the same fields as a :class:`SubmissionError`."""

    code: str
    message: str
    file: str | None = None
    line: int | None = None

    def to_dict(self) -> dict[str, str | int | None]:
        return {"code": self.code, "message": self.message, "file": self.file, "line": self.line}

    def __str__(self) -> str:
        where = ""
        if self.file is not None:
            where = f" ({self.file}" + (f":{self.line}" if self.line is not None else "") + ")"
        return f"[{self.code}] {self.message}{where}"


class SubmissionError(MinerFault):
    """A submission PRISM refuses to run. ``file`` and ``line`` locate the cause when known."""

    default_code = "submission.invalid"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        file: str | None = None,
        line: int | None = None,
    ) -> None:
        super().__init__(message, code=code)
        self.file = file
        self.line = line
        #: Every problem found (``prism check`` lists them all); the error describes the first.
        self.problems: list[Problem] = [self.to_problem()]

    @classmethod
    def from_problem(cls, problem: Problem) -> SubmissionError:
        return cls(problem.message, code=problem.code, file=problem.file, line=problem.line)

    @classmethod
    def from_problems(cls, problems: list[Problem]) -> SubmissionError:
        """One error for several problems: described by the first, carrying all of them."""
        if not problems:
            raise ValueError("from_problems needs at least one problem")
        first = problems[0]
        extra = f" (and {len(problems) - 1} more problem(s); run `prism check`)" if len(problems) > 1 else ""
        error = cls(first.message + extra, code=first.code, file=first.file, line=first.line)
        error.problems = list(problems)
        return error

    def to_problem(self) -> Problem:
        return Problem(code=self.code, message=self.message, file=self.file, line=self.line)

    def to_dict(self) -> dict[str, str]:
        data = super().to_dict()
        if self.file is not None:
            data["file"] = self.file
        if self.line is not None:
            data["line"] = str(self.line)
        return data

    def __str__(self) -> str:
        return str(self.to_problem())


class ArchiveError(SubmissionError):
    """The ZIP (or the single file) is unsafe, malformed or over a limit (codes ``zip.*``)."""

    default_code = "zip.corrupt"


class ProjectManifestError(SubmissionError):
    """``prism.yaml`` is missing where needed, malformed, or inconsistent (codes ``manifest.*``)."""

    default_code = "manifest.schema"


class StaticGateError(SubmissionError):
    """The AST gate found a forbidden construct or a missing function (codes ``static.*``).

    ``problems`` holds every finding; the error itself describes the first one.
    """

    default_code = "static.forbidden_call"

    def __init__(self, problems: list[Problem]) -> None:
        if not problems:
            raise ValueError("StaticGateError needs at least one problem")
        first = problems[0]
        extra = f" (and {len(problems) - 1} more problem(s); run `prism check`)" if len(problems) > 1 else ""
        super().__init__(first.message + extra, code=first.code, file=first.file, line=first.line)
        self.problems = list(problems)

    @classmethod
    def from_problems(cls, problems: list[Problem]) -> StaticGateError:
        return cls(problems)


def error_for(problems: list[Problem]) -> SubmissionError:
    """The typed error for a list of problems, chosen by the first problem's code family."""
    family = problems[0].code.split(".")[0] if problems else ""
    kind: type[SubmissionError] = {
        "zip": ArchiveError,
        "manifest": ProjectManifestError,
        "static": StaticGateError,
    }.get(family, SubmissionError)
    return kind.from_problems(problems)


#: Every code intake can emit, with a one-line meaning. docs/submissions.md documents each one,
#: and a test keeps the two in sync.
ERROR_CODES: dict[str, str] = {
    # archive safety and limits
    "zip.corrupt": "not a readable ZIP, or an entry's data does not match its headers (CRC, sizes)",
    "zip.empty": "the archive (or directory) holds no files",
    "zip.too_large": "over the compressed-size or total-uncompressed-size limit",
    "zip.too_many_files": "more entries than the file-count limit",
    "zip.ratio": "one entry's declared compression ratio is over the cap",
    "zip.bomb": "an entry inflates past the size its headers declare, or entries overlap",
    "zip.unsupported_compression": "an entry uses a method other than stored or deflate",
    "zip.encrypted": "an entry is encrypted",
    "zip.symlink": "an entry is a symbolic link",
    "zip.not_regular": "an entry is a device, FIFO, socket or other non-regular file",
    "zip.absolute_path": "an entry name is absolute or starts with a drive letter",
    "zip.backslash": "an entry name contains a backslash",
    "zip.nul_in_name": "an entry name contains a NUL byte",
    "zip.traversal": "an entry name contains a `..` component",
    "zip.bad_name": "an entry name has characters outside [A-Za-z0-9._-/] or empty/`.` components",
    "zip.depth": "an entry path has more directory levels than allowed",
    "zip.path_length": "an entry path is longer than allowed",
    "zip.duplicate": "two entries have the same name, or a name is both a file and a directory",
    "zip.case_collision": "two entries differ only in letter case",
    "zip.suffix": "a file has a suffix outside the allowed text suffixes",
    "zip.binary": "a file contains NUL bytes (binary data)",
    "zip.not_utf8": "a file is not valid UTF-8 text",
    "zip.other_files_over_budget": "the files that are not Python hold more bytes than the budget",
    # prism.yaml
    "manifest.yaml": "prism.yaml is not valid YAML, not a mapping, or repeats a key",
    "manifest.yaml_alias": "prism.yaml uses YAML anchors or aliases (refused: alias bombs)",
    "manifest.too_large": "prism.yaml is over the manifest size or nesting limit",
    "manifest.schema": "prism.yaml does not match the schema (unknown key, wrong type, bad kind)",
    "manifest.missing_file": "a file named in prism.yaml is not in the archive",
    "manifest.not_python": "a file named as architecture or training code is not a .py file",
    "manifest.conflict": "both prism.yaml and prism.yml are present",
    "manifest.unsupported_format": "the archive is in a format PRISM does not run (the two-script format)",
    "manifest.architecture_id_required": "kind training_for_arch without architecture_id",
    "manifest.architecture_id_forbidden": "architecture_id given for a kind other than training_for_arch",
    "manifest.training_required": "kind training_for_arch without a training section",
    "manifest.training_forbidden": "kind architecture_only with a training section",
    "manifest.no_entrypoint": "no prism.yaml and no single top-level module to default to",
    # static gate
    "static.syntax": "a .py file does not parse",
    "static.encoding": "a .py file declares a source encoding other than UTF-8",
    "static.forbidden_import": "an import outside the allowlist",
    "static.forbidden_call": "a call or reference to a forbidden builtin (eval, exec, open, ...)",
    "static.forbidden_attribute": "access to an introspection or escape attribute (__class__, f_globals, ...)",
    "static.shadowed_module": "a file or directory shadows a standard-library or allowed package name",
    "static.unreachable_module": "a sibling import by stem names a file whose folder is not on the import path",
    "static.ambiguous_module": "a sibling import by stem matches more than one file",
    "static.missing_build_model": "the architecture entrypoint does not define build_model",
    "static.missing_get_recipe": "the architecture entrypoint does not define get_recipe",
    "static.hook_signature": "a hook's parameters do not match how PRISM calls it",
    # the information budget (prism.submission.budget)
    "static.string_too_long": "one string or bytes literal is longer than the per-literal cap",
    "static.strings_over_budget": "string and bytes literals together are over the budget",
    "static.docstring_too_long": "one docstring is longer than the per-docstring cap",
    "static.docstrings_over_budget": "docstrings together are over the budget",
    "static.comments_over_budget": "comment text together is over the budget",
    "static.number_table": "one list/tuple/set/dict literal holds more numbers than the cap",
    "static.numbers_over_budget": "numeric literals together are over the budget (in characters)",
    "static.identifier_too_long": "an identifier is longer than the cap",
    "static.identifiers_over_budget": "distinct identifiers together are over the budget (in bytes)",
}
