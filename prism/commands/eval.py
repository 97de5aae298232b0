"""``prism eval PATH``: train and measure a submission locally, exactly as a validator does.

    prism eval examples/gpt --profile local_cpu_smoke [--recipe reference|submitted] [--out DIR]
               [--data DIR] [--regime R] [--seed S] [--nproc N] [--heldout-seed S]
               [--baseline PATH_OR_MANIFEST] [--force] [--json]

Without ``--data`` the offline corpus is prepared once into ``~/.cache/prism/data/offline-<tok>``.
A finished run is reused (and labelled ``cached``) when nothing that changes its result changed:
the run id covers the ZIP, profile, cell, recipe, held-out seed, data fingerprint, ranks and
evaluator version. ``--force`` recomputes. Exit status: 0 when every run succeeded (even if not
score-eligible, as smoke runs never are), 1 when any run failed or a ``training_for_arch``
measures another family than the one it names.
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
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("path", type=Path, help="submission: a .zip, a single .py or a project directory")
    parser.add_argument(
        "--profile", default="local_cpu_smoke", help=f"evaluation profile: {', '.join(PROFILE_NAMES)} or a .yaml path"
    )
    parser.add_argument(
        "--recipe",
        default=None,
        choices=("reference", "submitted"),
        help="reference: harness loop, hooks ignored; submitted: training hooks honoured "
        "(default: submitted for a training_for_arch, else reference)",
    )
    parser.add_argument(
        "--competition",
        choices=("architecture", "training"),
        default=None,
        help="default: architecture for --recipe reference, training for submitted",
    )
    parser.add_argument("--out", type=Path, default=Path("prism-eval-out"), help="artifact root")
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
    parser.add_argument(
        "--baseline",
        type=Path,
        default=None,
        help="compare with: a run manifest, a run dir, or another submission (evaluated the same way)",
    )
    parser.add_argument("--force", action="store_true", help="recompute runs that already finished")
    parser.add_argument("--json", action="store_true", help="print the manifests as JSON instead of a table")
    parser.set_defaults(func=run_eval)


def default_data_dir(tokenizer: str) -> Path:
    cache = Path(os.environ.get("PRISM_CACHE_DIR", Path.home() / ".cache" / "prism"))
    return cache / "data" / f"offline-{tokenizer}"


def _data_dir(args: argparse.Namespace, tokenizer: str) -> Path:
    if args.data is not None:
        return args.data
    from prism.data import ensure_offline_corpus

    data_dir = default_data_dir(tokenizer)
    ensure_offline_corpus(data_dir, tokenizer=tokenizer)
    return data_dir


def _evaluate(path: Path, args: argparse.Namespace, recipe: str, data_dir: Path, cached: set[str]) -> list:
    from prism.evaluator.host import evaluate
    from prism.profiles import load_profile

    return evaluate(
        path,
        profile=load_profile(args.profile),
        data_dir=data_dir,
        out_dir=args.out,
        recipe_mode=recipe,  # type: ignore[arg-type]
        competition=args.competition,
        regimes=args.regime,
        seeds=args.seed,
        heldout_seed=args.heldout_seed,
        nproc_per_node=args.nproc,
        progress=not args.json,
        force=args.force,
        on_cached=lambda m: cached.add(m.run_id),
    )


def _baseline(args: argparse.Namespace, recipe: str, data_dir: Path) -> list:
    """The baseline's manifests: read from a manifest or run dir, else evaluated like the submission."""
    from prism.manifest import MANIFEST_FILENAME, read_manifest

    path = args.baseline
    if path.is_file() and path.suffix == ".json":
        return [read_manifest(path)]
    if path.is_dir() and (path / MANIFEST_FILENAME).is_file():
        return [read_manifest(path / MANIFEST_FILENAME)]
    return _evaluate(path, args, recipe, data_dir, set())


def run_eval(args: argparse.Namespace) -> int:
    from prism.commands.eval_report import family_mismatches, print_summary, redraw_with_baseline
    from prism.profiles import load_profile
    from prism.submission import load_submission

    submission = load_submission(args.path)
    recipe = args.recipe or ("submitted" if submission.kind == "training_for_arch" else "reference")
    profile = load_profile(args.profile)
    data_dir = _data_dir(args, profile.tokenizer)
    cached: set[str] = set()
    manifests = _evaluate(args.path, args, recipe, data_dir, cached)
    baseline = _baseline(args, recipe, data_dir) if args.baseline is not None else []
    out_root = Path(args.out).resolve()
    mismatches = family_mismatches(submission, manifests)
    if baseline:
        redraw_with_baseline(manifests, baseline, out_root)
    if args.json:
        print(
            json.dumps(
                [m.model_dump(mode="json") | {"cached": m.run_id in cached} for m in manifests], indent=2
            )
        )
    else:
        print_summary(
            manifests, out_root, profile=profile, cached=cached, baseline=baseline, mismatches=mismatches
        )
    failed = any(m.status.state != "succeeded" for m in manifests)
    return 1 if failed or mismatches else 0
