"""`prism pack` and `prism check`: build a submission ZIP and run intake on it locally.

prism pack DIR -o out.zip        # deterministic ZIP; prints its sha256 (what you commit)
prism check PATH [--json]        # .zip, .py or a project directory; exit 0 if accepted, else 1
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from prism.submission import CheckReport, check_submission, pack_to


def register(subparsers: argparse._SubParsersAction) -> None:
    pack = subparsers.add_parser("pack", help="pack a project directory into a deterministic submission ZIP")
    pack.add_argument("directory", type=Path, help="project directory (holds prism.yaml or a single module)")
    pack.add_argument("-o", "--output", type=Path, required=True, help="where to write the ZIP")
    pack.add_argument("--no-check", action="store_true", help="skip running `prism check` on the result")
    pack.set_defaults(func=run_pack)

    check = subparsers.add_parser("check", help="run submission intake (safety, prism.yaml, static gate)")
    check.add_argument("path", type=Path, help="a .zip, a single .py, or a project directory")
    check.add_argument("--json", action="store_true", help="print the verdict as JSON")
    check.set_defaults(func=run_check)


def run_pack(args: argparse.Namespace) -> int:
    digest = pack_to(args.directory, args.output)
    print(f"{digest}  {args.output}")
    if args.no_check:
        return 0
    report = check_submission(args.output)
    if not report.ok:
        _print_report(report, str(args.output))
        return 1
    return 0


def run_check(args: argparse.Namespace) -> int:
    report = check_submission(args.path)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2, sort_keys=True))
    else:
        _print_report(report, str(args.path))
    return 0 if report.ok else 1


def _print_report(report: CheckReport, label: str) -> None:
    """A rich verdict table: what intake understood, then every problem with its code."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    verdict = "[bold green]ACCEPTED[/]" if report.ok else "[bold red]REJECTED[/]"
    console.print(f"{label}: {verdict}")
    if report.submission is not None:
        info = report.submission.summary()
        table = Table(show_header=False, box=None, pad_edge=False)
        table.add_column(style="bold")
        table.add_column(overflow="fold")
        rows = [
            ("kind", info["kind"]),
            ("manifest", info["manifest_file"] or "(none: default layout)"),
            ("architecture entrypoint", info["architecture_entrypoint"]),
            ("architecture files", ", ".join(info["architecture_files"])),
            ("training entrypoint", info["training_entrypoint"] or "-"),
            ("training files", ", ".join(info["training_files"]) or "-"),
            ("architecture_id", info["architecture_id"] or "-"),
            ("files", f"{len(info['files'])} ({info['zip_bytes']} bytes zipped)"),
            ("zip sha256", info["zip_sha256"]),
            ("architecture fingerprint", info["architecture_fingerprint"]),
            ("training fingerprint", info["training_fingerprint"] or "-"),
            ("hooks", ", ".join(f"{hook} ({file})" for hook, file in info["hooks"].items()) or "none"),
        ]
        for key, value in rows:
            table.add_row(key, str(value))
        console.print(table)
    if report.problems:
        problems = Table(title="problems", show_lines=False)
        for column in ("code", "file", "line", "message"):
            problems.add_column(column, overflow="fold")
        for problem in report.problems:
            problems.add_row(
                problem.code,
                problem.file or "-",
                str(problem.line) if problem.line is not None else "-",
                problem.message,
            )
        console.print(problems)
