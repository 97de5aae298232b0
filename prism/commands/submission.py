"""`prism pack` and `prism check`: build a submission ZIP and run intake on it locally.

prism pack DIR -o out.zip               # deterministic ZIP, written only if intake accepts it
prism check PATH [--json]               # .zip, .py or a project directory; exit 0 if accepted, else 1
prism check PATH --build [--profile P]  # also build it in the sandbox at every regime (prism identify)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from prism.submission import CheckReport, check_submission, check_submission_bytes, pack_directory

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    from prism.commands.identify import add_identify_options

    pack = subparsers.add_parser(
        "pack",
        help="pack a project directory into a deterministic submission ZIP (refused if intake rejects it)",
    )
    pack.add_argument("directory", type=Path, help="project directory (holds prism.yaml or a single module)")
    pack.add_argument("-o", "--output", type=Path, required=True, help="where to write the ZIP")
    pack.set_defaults(func=run_pack)

    check = subparsers.add_parser("check", help="run submission intake (safety, prism.yaml, static gate)")
    check.add_argument("path", type=Path, help="a .zip, a single .py, or a project directory")
    check.add_argument("--json", action="store_true", help="print the verdict as JSON")
    check.add_argument(
        "--build",
        action="store_true",
        help="also build the model in the sandbox at every regime of --profile (as `prism identify`)",
    )
    add_identify_options(check)
    check.set_defaults(func=run_check)


def run_pack(args: argparse.Namespace) -> int:
    """Pack, run intake on the exact bytes, and write them only if intake accepts them."""
    data = pack_directory(args.directory)
    report = check_submission_bytes(data, filename=f"{Path(args.directory).resolve().name}.zip")
    if not report.ok:
        _print_report(report, str(args.directory))
        print(f"error: not writing {args.output}: intake rejects this project (fix the problems above)")
        return 1
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    logger.debug("packed %s -> %s (%d bytes)", args.directory, out, len(data))
    print(f"{digest}  {args.output}")
    return 0


def run_check(args: argparse.Namespace) -> int:
    report = check_submission(args.path)
    identity = _build_checks(report, args) if args.build and report.ok else None
    ok = report.ok and (identity is None or identity.ok)
    if args.json:
        payload: dict[str, Any] = report.to_dict()
        if args.build:
            payload["identify"] = identity.model_dump(mode="json") if identity is not None else None
            payload["ok"] = ok
        print(json.dumps(payload, indent=2, sort_keys=True))
    else:
        _print_report(report, str(args.path))
        if identity is not None:
            from prism.commands.identify import print_identify

            print_identify(identity, f"{args.path} (built at every regime)")
    return 0 if ok else 1


def _build_checks(report: CheckReport, args: argparse.Namespace) -> Any:
    from prism.commands.identify import identify
    from prism.profiles import load_profile

    if report.submission is None:
        return None
    return identify(
        report.submission,
        load_profile(args.profile),
        regimes=args.regime,
        timeout_s=args.timeout,
        threads=args.threads,
    )


def _summary_rows(info: dict[str, Any]) -> list[tuple[str, str]]:
    budget = info["budget"] or {}
    rows = [
        ("kind", info["kind"]),
        ("manifest", info["manifest_file"] or "(none: default layout)"),
        ("architecture entrypoint", info["architecture_entrypoint"]),
        ("architecture files", ", ".join(info["architecture_files"])),
        ("training entrypoint", info["training_entrypoint"] or "-"),
        ("training files", ", ".join(info["training_files"]) or "-"),
        ("unattributed files", ", ".join(info["unattributed_files"]) or "-"),
        ("architecture_id", info["architecture_id"] or "-"),
        ("files", f"{len(info['files'])} ({info['zip_bytes']} bytes zipped)"),
        ("zip sha256", info["zip_sha256"]),
        ("architecture fingerprint", info["architecture_fingerprint"]),
        ("training fingerprint", info["training_fingerprint"] or "-"),
        ("hooks", ", ".join(f"{hook} ({file})" for hook, file in info["hooks"].items()) or "none"),
    ]
    if info["architecture_fingerprint_files"] != info["architecture_files"]:
        rows.insert(4, ("architecture fingerprint covers", ", ".join(info["architecture_fingerprint_files"])))
    if budget:
        rows.append(
            (
                "source budget",
                f"{budget['total_bytes']:,} bytes; comments {budget['comment_bytes']:,}, docstrings "
                f"{budget['docstring_bytes']:,}, strings {budget['string_bytes']:,}, numbers "
                f"{budget['number_chars']:,} chars, identifiers {budget['identifier_bytes']:,}",
            )
        )
    return rows


def _print_report(report: CheckReport, label: str) -> None:
    """A rich verdict table: what intake understood, then every problem with its code."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    verdict = "[bold green]ACCEPTED[/]" if report.ok else "[bold red]REJECTED[/]"
    console.print(f"{label}: {verdict}")
    if report.submission is not None:
        table = Table(show_header=False, box=None, pad_edge=False)
        table.add_column(style="bold")
        table.add_column(overflow="fold")
        for key, value in _summary_rows(report.submission.summary()):
            table.add_row(key, str(value))
        console.print(table)
    if report.problems:
        problems = Table(title="problems", show_lines=False)
        for column in ("code", "where", "message"):
            problems.add_column(column, overflow="fold")
        for problem in report.problems:
            where = (problem.file or "-") + (f":{problem.line}" if problem.line is not None else "")
            problems.add_row(problem.code, where, problem.message)
        console.print(problems)
