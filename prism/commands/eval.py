"""``prism eval PATH``: train and measure a submission locally, exactly as a validator does.

    prism eval examples/gpt --profile local_cpu_smoke [--recipe reference|submitted] [--out DIR]
               [--data DIR] [--regime R] [--seed S] [--nproc N] [--heldout-seed S] [--json]

Without ``--data`` the offline corpus is prepared once into ``~/.cache/prism/data/offline-<tok>``.
Exit status: 0 when every run succeeded (even if not score-eligible, as smoke runs never are),
1 when any run failed.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from prism.profiles import PROFILE_NAMES


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="train and measure a submission in the sandbox; writes run manifests",
        description="Train a submission from scratch in the sandbox, measure held-out bits-per-byte, "
        "and write prism_run_manifest.v1.json per regime x seed.",
    )
    parser.add_argument("path", type=Path, help="submission: a .zip, a single .py or a project directory")
    parser.add_argument("--profile", default="local_cpu_smoke", choices=PROFILE_NAMES)
    parser.add_argument(
        "--recipe",
        default="reference",
        choices=("reference", "submitted"),
        help="reference: harness loop, hooks ignored; submitted: training hooks honoured",
    )
    parser.add_argument(
        "--competition",
        choices=("architecture", "training"),
        default=None,
        help="default: architecture for --recipe reference, training for submitted",
    )
    parser.add_argument(
        "--out", type=Path, default=Path("prism-eval-out"), help="artifact root (default: %(default)s)"
    )
    parser.add_argument(
        "--data", type=Path, default=None, help="prepared data dir (default: offline corpus cache)"
    )
    parser.add_argument(
        "--regime", action="append", default=None, help="regime name (repeatable; default: all)"
    )
    parser.add_argument(
        "--seed", action="append", type=int, default=None, help="seed (repeatable; default: profile's)"
    )
    parser.add_argument("--nproc", type=int, default=None, help="torchrun processes (default: profile's)")
    parser.add_argument(
        "--heldout-seed", type=int, default=None, help="held-out sampling seed (default: profile's)"
    )
    parser.add_argument("--json", action="store_true", help="print the manifests as JSON instead of a table")
    parser.set_defaults(func=run_eval)


def default_data_dir(tokenizer: str) -> Path:
    cache = Path(os.environ.get("PRISM_CACHE_DIR", Path.home() / ".cache" / "prism"))
    return cache / "data" / f"offline-{tokenizer}"


def run_eval(args: argparse.Namespace) -> int:
    from prism.evaluator.host import evaluate
    from prism.profiles import load_profile

    profile = load_profile(args.profile)
    data_dir = args.data
    if data_dir is None:
        from prism.data import ensure_offline_corpus

        data_dir = default_data_dir(profile.tokenizer)
        ensure_offline_corpus(data_dir, tokenizer=profile.tokenizer)
    manifests = evaluate(
        args.path,
        profile=profile,
        data_dir=data_dir,
        out_dir=args.out,
        recipe_mode=args.recipe,
        competition=args.competition,
        regimes=args.regime,
        seeds=args.seed,
        heldout_seed=args.heldout_seed,
        nproc_per_node=args.nproc,
        progress=not args.json,
    )
    out_root = Path(args.out).resolve()
    if args.json:
        print(json.dumps([m.model_dump(mode="json") for m in manifests], indent=2))
    else:
        _print_summary(manifests, out_root)
    return 0 if all(m.status.state == "succeeded" for m in manifests) else 1


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _print_summary(manifests: list, out_root: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    from prism.manifest import MANIFEST_FILENAME

    console = Console()
    table = Table(title="prism eval")
    for column in (
        "run",
        "regime",
        "seed",
        "status",
        "held-out bpb",
        "probe bpb",
        "params",
        "steps",
        "eligible",
    ):
        table.add_column(column)
    for m in manifests:
        status = (
            m.status.state
            if m.status.failure is None
            else f"failed: {m.status.failure.code} ({m.status.failure.fault})"
        )
        eligible = "yes" if m.validation.score_eligible else "no: " + ", ".join(m.validation.reasons)
        table.add_row(
            m.run_id,
            m.regime.name,
            str(m.seed),
            status,
            _fmt(m.metrics.heldout_bpb),
            _fmt(m.metrics.probe_bpb),
            f"{m.metrics.parameter_count:,}" if m.metrics.parameter_count else "-",
            str(m.metrics.train_steps),
            eligible,
        )
    console.print(table)
    for m in manifests:
        root = out_root / m.run_id
        console.print(f"manifest: {root / MANIFEST_FILENAME}")
        if m.artifacts.plot:
            console.print(f"plot:     {root / m.artifacts.plot}")
        if m.status.failure is not None:
            console.print(f"[red]{m.status.failure.code}[/red]: {m.status.failure.message}")
