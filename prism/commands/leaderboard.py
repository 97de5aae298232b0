"""``prism leaderboard [--db PATH] [--json]``: what a validator's store says right now.

Shows the snapshot the validator recorded at its last scoring pass: families (owner, canonical
version, score, runs), training variants per family, and the last weight set. Read-only: a
missing store is an error, never created.
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from prism.store import DEFAULT_STORE_DIR, Store

if TYPE_CHECKING:
    from rich.console import Console

SHORT = 12  # hex ids are 64 characters; 12 are plenty to tell them apart on screen


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("leaderboard", help="show families, training variants and weights")
    parser.add_argument("--db", default=str(DEFAULT_STORE_DIR), help="store file or directory")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(func=run_leaderboard)


def collect(store: Store) -> dict[str, Any]:
    """Everything the leaderboard shows, as plain JSON-able data."""
    weight_set = store.weight_set()
    weights = None
    if weight_set is not None:
        weights = {
            "block": weight_set["block"],
            "profile_key": weight_set["profile_key"],
            "rules_version": weight_set["rules_version"],
            "weights": json.loads(weight_set["weights"]),
        }
    return {
        **store.standings(),
        "weights": weights,
        "events": [e.model_dump() for e in store.ownership_events()],
        "submissions": len(store.submissions()),
    }


def _short(value: str | None) -> str:
    return "-" if value is None else value[:SHORT]


def _bpb(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def render_leaderboard(store: Store, console: Console | None = None) -> None:
    """Print the store's leaderboard as rich tables (also used by ``prism localnet``)."""
    render(collect(store), console)


def render(data: dict[str, Any], console: Console | None = None) -> None:
    from rich.console import Console  # display-only dependency, loaded on use
    from rich.table import Table

    console = console or Console(width=max(Console().width, 120))
    families = Table(title=f"Architecture families ({data['submissions']} submissions)")
    for column in ("#", "family", "owner", "canonical version", "held-out bpb", "probe bpb", "runs", "lead"):
        families.add_column(column)
    for rank, f in enumerate(data["families"], start=1):
        families.add_row(
            str(rank), _short(f["family_id"]), f["owner_hotkey"], _short(f["canonical_version_id"]),
            _bpb(f["heldout_bpb"]), _bpb(f["probe_bpb"]), str(f["runs"]), "*" if f["leader"] else "",
        )  # fmt: skip
    console.print(families)

    variants = Table(title="Training variants per family")
    for column in (
        "family",
        "hotkey",
        "version",
        "baseline",
        "variant",
        "improvement",
        "margin",
        "ok",
        "best",
    ):
        variants.add_column(column)
    for v in data["variants"]:
        variants.add_row(
            _short(v["family_id"]), v["hotkey"], _short(v["version_id"]), _bpb(v["baseline_bpb"]),
            _bpb(v["variant_bpb"]), _bpb(v["improvement_bpb"]), _bpb(v["margin_bpb"]),
            "yes" if v["qualifies"] else "no", "*" if v["best"] else "",
        )  # fmt: skip
    console.print(variants)

    weights = data["weights"]
    if weights is None:
        console.print("No weights recorded yet.")
        return
    # a title line of its own: table titles wrap to the (narrow) width of a two-column table
    console.print(f"Weights at block {weights['block']} ({weights['profile_key'] or 'unknown profile'})")
    table = Table()
    table.add_column("uid")
    table.add_column("weight")
    for uid, weight in sorted(weights["weights"].items(), key=lambda kv: int(kv[0])):
        table.add_row(uid, f"{weight:.6f}")
    console.print(table)


def run_leaderboard(args: argparse.Namespace) -> int:
    with Store.open(args.db, create=False) as store:
        data = collect(store)
    if args.json:
        print(json.dumps(data, indent=2, sort_keys=True))
    else:
        render(data)
    return 0
