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
    """One key/value table per run: readable in an 80-column terminal."""
    from rich.console import Console
    from rich.table import Table

    from prism.manifest import MANIFEST_FILENAME

    console = Console()
    for m in manifests:
        root = out_root / m.run_id
        failure = m.status.failure
        table = Table(
            title=f"{m.run_id}  ({m.profile.name}@{m.profile.version}, {m.recipe_mode} recipe)",
            show_header=False,
            title_justify="left",
        )
        table.add_column(style="bold")
        table.add_column()
        rows = [
            ("regime / seed", f"{m.regime.name} / {m.seed}"),
            (
                "status",
                "succeeded"
                if failure is None
                else f"[red]failed: {failure.code} ({failure.fault} fault)[/red]",
            ),
            ("held-out bpb", _fmt(m.metrics.heldout_bpb)),
            ("probe bpb (last half)", _fmt(m.metrics.probe_bpb)),
            ("first probe loss (nats)", _fmt(m.metrics.first_probe_loss_nats)),
            ("parameters / layers", f"{m.metrics.parameter_count or '-'} / {m.metrics.layer_count or '-'}"),
            ("steps / tokens", f"{m.metrics.train_steps} / {m.metrics.train_tokens}"),
            ("family / version", f"{m.submission.family_id or '-'} / {m.submission.version_id or '-'}"),
            ("isolation", m.isolation),
            ("wall time (s)", _fmt(m.timings_s.get("total"), 1)),
            (
                "score-eligible",
                "yes" if m.validation.score_eligible else "no: " + ", ".join(m.validation.reasons),
            ),
        ]
        for key, value in rows:
            table.add_row(key, value)
        console.print(table)
        # Plain prints, so long paths are never cut and stay copyable.
        print(f"manifest: {root / MANIFEST_FILENAME}")
        if m.artifacts.plot:
            print(f"plot:     {root / m.artifacts.plot}")
        if failure is not None:
            console.print(f"[red]{failure.code}[/red]: {failure.message}")
