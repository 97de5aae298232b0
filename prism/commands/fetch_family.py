"""``prism fetch-family FAMILY_ID --from URL [--out DIR]``: start a training variant of a family.

Downloads the family's canonical code from a validator's leaderboard (``prism serve``), checks
it (size, sha256, intake's archive limits), writes a ``training_for_arch`` project around it
and runs ``prism check`` on the result. Exit status 0 when the project passes intake.
See docs/leaderboard.md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "fetch-family",
        help="download a family's canonical code and write a training_for_arch starter project",
        description="Fetch the canonical architecture code of FAMILY_ID from a PRISM leaderboard and write a "
        "training_for_arch project (prism.yaml, the architecture files, a configure_optimizer stub).",
    )
    parser.add_argument("family_id", help="the family id, as the leaderboard shows it (fam-...)")
    parser.add_argument(
        "--from", dest="url", required=True, help="base URL of the leaderboard (http://host:port)"
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="project directory to create (default: ./training-FAMILY_ID)"
    )
    parser.add_argument(
        "--timeout", type=float, default=30.0, help="seconds per HTTP request (default: %(default)s)"
    )
    parser.add_argument("--json", action="store_true", help="print what was written as JSON")
    parser.set_defaults(func=run_fetch_family)


def run_fetch_family(args: argparse.Namespace) -> int:
    from prism.leaderboard.fetch import fetch_family
    from prism.leaderboard.starter import starter_files, training_entrypoint, write_project
    from prism.submission import check_submission

    code, files = fetch_family(args.family_id, args.url, timeout_s=args.timeout)
    out = args.out if args.out is not None else Path(f"training-{code.family_id}")
    write_project(out, starter_files(code, files, args.url))
    report = check_submission(out)
    summary = {
        "family_id": code.family_id,
        "canonical_version_id": code.canonical_version_id,
        "source_zip_sha256": code.source_zip_sha256,
        "out": str(out),
        "training_entrypoint": training_entrypoint(code),
        "check": report.to_dict(),
    }
    if args.json:
        print(json.dumps(summary, indent=2, sort_keys=True))
    else:
        print(
            f"wrote a training_for_arch project for {code.family_id} (canonical version "
            f"{code.canonical_version_id}) to {out}; edit {summary['training_entrypoint']}"
        )
        print(f"prism check {out}: {'ACCEPTED' if report.ok else 'REJECTED'}")
        for problem in report.problems:
            print(f"  {problem}")
    return 0 if report.ok else 1
