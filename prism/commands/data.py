"""`prism data ...`: prepare token shards, verify a prepared directory, show what it holds.

prism data prepare --source offline --tokenizer byte --out data/offline-byte
prism data prepare --source fineweb-edu --config sample-10BT --revision SHA --tokenizer gpt2 --out DIR
prism data prepare --source parquet --path DIR_OR_FILE --tokenizer gpt2 --out DIR [--fineweb-edu]
prism data verify DIR [--no-hashes]
prism data info DIR [--json]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

logger = logging.getLogger(__name__)

SOURCES = ("fineweb-edu", "parquet", "jsonl", "offline")


def register(subparsers: argparse._SubParsersAction) -> None:
    data = subparsers.add_parser("data", help="prepare and verify token shards (see docs/data.md)")
    commands = data.add_subparsers(dest="data_command", metavar="DATA_COMMAND")
    data.set_defaults(func=lambda args: data.print_help() or 2)

    prepare = commands.add_parser("prepare", help="tokenize a source into shards + MANIFEST.json")
    prepare.add_argument("--source", choices=SOURCES, required=True)
    prepare.add_argument("--path", type=Path, help="file or directory for --source parquet/jsonl")
    prepare.add_argument(
        "--dataset", default="HuggingFaceFW/fineweb-edu", help="Hub dataset (fineweb-edu source)"
    )
    prepare.add_argument("--config", default=None, help="dataset config, e.g. sample-10BT")
    prepare.add_argument("--revision", default=None, help="pinned dataset revision (commit sha)")
    prepare.add_argument(
        "--fineweb-edu", action="store_true", help="declare local parquet/jsonl files to be FineWeb-Edu rows"
    )
    prepare.add_argument("--tokenizer", choices=("byte", "gpt2"), required=True)
    prepare.add_argument("--out", type=Path, required=True, help="output directory (must be empty or absent)")
    prepare.add_argument("--max-docs", type=int, default=None, help="stop after this many documents")
    prepare.add_argument("--max-bytes", type=int, default=None, help="stop after this many UTF-8 text bytes")
    prepare.add_argument("--skip-docs", type=int, default=0, help="start after this many source documents")
    prepare.add_argument("--shard-tokens", type=int, default=None, help="tokens per shard (default 100M)")
    prepare.add_argument(
        "--workers", type=int, default=min(os.cpu_count() or 1, 8), help="tokenizer processes"
    )
    prepare.add_argument("--timeout", type=float, default=60.0, help="Hub read timeout in seconds")
    prepare.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    prepare.add_argument("--no-progress", action="store_true", help="no progress bar")
    prepare.set_defaults(func=run_prepare)

    verify = commands.add_parser("verify", help="recheck every shard header and sha256 against MANIFEST.json")
    verify.add_argument("directory", type=Path)
    verify.add_argument("--no-hashes", action="store_true", help="check headers and sizes only")
    verify.set_defaults(func=run_verify)

    info = commands.add_parser("info", help="summarize a prepared directory")
    info.add_argument("directory", type=Path)
    info.add_argument(
        "--json", action="store_true", help="print MANIFEST.json plus the run-manifest fingerprint"
    )
    info.set_defaults(func=run_info)


def _build_source(args: argparse.Namespace):
    from prism.data.errors import DataError
    from prism.data.sources import HubSource, LocalFileSource, OfflineDocstringSource

    if args.source == "offline":
        return OfflineDocstringSource(workers=args.workers)
    if args.source in ("parquet", "jsonl"):
        if args.path is None:
            raise DataError(f"--source {args.source} needs --path", code="data.bad_option")
        return LocalFileSource(
            args.path,
            fmt=args.source,
            is_fineweb_edu=args.fineweb_edu,
            config=args.config,
            revision=args.revision,
        )
    if args.revision is None:
        raise DataError(
            "--source fineweb-edu needs --revision (a commit sha of the dataset repository) so every "
            "validator streams the same rows; pass --revision main only for experiments",
            code="data.unpinned_revision",
        )
    return HubSource(
        dataset=args.dataset,
        config=args.config or "sample-10BT",
        revision=args.revision,
        read_timeout_s=args.timeout,
    )


def run_prepare(args: argparse.Namespace) -> int:
    from prism.data.prepare import DEFAULT_SHARD_TOKENS, prepare_dataset

    manifest = prepare_dataset(
        _build_source(args),
        args.tokenizer,
        args.out,
        max_docs=args.max_docs,
        max_bytes=args.max_bytes,
        skip_docs=args.skip_docs,
        shard_tokens=args.shard_tokens or DEFAULT_SHARD_TOKENS,
        workers=args.workers,
        progress=not args.no_progress and sys.stderr.isatty(),
        overwrite=args.overwrite,
    )
    _print_summary(manifest, args.out)
    return 0


def run_verify(args: argparse.Namespace) -> int:
    from prism.data.shards import verify_data_dir

    manifest = verify_data_dir(args.directory, check_hashes=not args.no_hashes)
    shards = sum(len(s.shards) for s in manifest.splits.values())
    what = "headers and sizes" if args.no_hashes else "headers, sizes and sha256"
    print(f"ok: {shards} shards in {args.directory} ({what}); manifest sha256 {manifest.sha256}")
    return 0


def run_info(args: argparse.Namespace) -> int:
    from prism.data.manifest import data_fingerprint, read_data_manifest

    manifest = read_data_manifest(args.directory)
    if args.json:
        payload = {"manifest": manifest.model_dump(mode="json"), "fingerprint": data_fingerprint(manifest)}
        print(json.dumps(payload, indent=2, sort_keys=True))
    else:
        _print_summary(manifest, args.directory)
    return 0


def _print_summary(manifest, directory: Path) -> None:
    src = manifest.source
    tok = manifest.tokenizer
    print(
        f"{directory}: {src.label()} (revision {src.revision}, config {src.config}, fineweb-edu {src.is_fineweb_edu})"
    )
    print(
        f"  tokenizer {tok.name} vocab {tok.vocab_size} eos {tok.eos_id} {tok.token_dtype} fp {tok.fingerprint[:16]}"
    )
    for split in ("train", "val", "test"):
        info = manifest.split_info(split)
        ratio = info.bytes / info.tokens if info.tokens else 0.0
        print(
            f"  {split:5s} {info.docs:>10,} docs {info.tokens:>15,} tokens {info.bytes:>15,} bytes "
            f"({ratio:.3f} B/token) in {len(info.shards)} shards"
        )
    print(f"  manifest sha256 {manifest.sha256}")
