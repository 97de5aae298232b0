"""``prism leaderboard [--db PATH] [--json]``: what a validator's store says right now.

Shows the snapshot the validator recorded at its last scoring pass: families (owner, canonical
version, score, runs), training variants per family, and the last weight set. Read-only: a
missing store is an error, never created.

Fields of newer scoring rules (the improver holding a family's canonical version, paired
differences with their standard errors, pending comparisons) are shown when the snapshot
carries them; a store written before them shows the same tables as before.
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


def _diff(difference: float | None, stderr: float | None) -> str:
    """A paired difference with its standard error, e.g. ``+0.0085±0.0090``."""
    if difference is None:
        return "-"
    return f"{difference:+.4f}" + ("" if stderr is None else f"±{stderr:.4f}")


def _improver(f: dict[str, Any]) -> str:
    hotkey = f.get("canonical_hotkey")
    return "-" if hotkey is None or hotkey == f["owner_hotkey"] else hotkey


def _has(rows: list[dict[str, Any]], field: str) -> bool:
    """Whether any row carries ``field`` (snapshots of older rules or stores lack it)."""
    return any(row.get(field) is not None for row in rows)


def _families_table(data: dict[str, Any]) -> Any:
    from rich.table import Table

    rows = data["families"]
    split, paired = _has(rows, "canonical_hotkey"), _has(rows, "lead_difference_bpb")
    table = Table(title=f"Architecture families ({data['submissions']} submissions)")
    columns = ["#", "family", "owner", "canonical version", "held-out bpb", "probe bpb", "runs", "lead"]
    if split:
        columns.append("improver")
    if paired:
        columns.append("lead Δ±se")
    for column in columns:
        table.add_column(column)
    for rank, f in enumerate(rows, start=1):
        cells = [
            str(rank), _short(f["family_id"]), f["owner_hotkey"], _short(f["canonical_version_id"]),
            _bpb(f["heldout_bpb"]), _bpb(f["probe_bpb"]), str(f["runs"]), "*" if f["leader"] else "",
        ]  # fmt: skip
        if split:
            cells.append(_improver(f))
        if paired:
            cells.append(_diff(f.get("lead_difference_bpb"), f.get("lead_stderr_bpb")))
        table.add_row(*cells)
    return table


def _comparisons_table(comparisons: list[dict[str, Any]]) -> Any:
    from rich.table import Table

    table = Table(title="Comparisons (difference = incumbent - challenger bpb)")
    for column in ("kind", "family", "challenger", "incumbent", "state", "Δ±se", "required", "wins"):
        table.add_column(column)
    for c in comparisons:
        table.add_row(
            c["kind"], _short(c["family_id"]), c["challenger"]["hotkey"], c["incumbent"]["hotkey"],
            c["state"] if c["paired"] else f"{c['state']} (unpaired)",
            _diff(c.get("difference_bpb"), c.get("stderr_bpb")), _bpb(c.get("required_bpb")),
            "yes" if c["challenger_wins"] else "no",
        )  # fmt: skip
    return table


def render(data: dict[str, Any], console: Console | None = None) -> None:
    from rich.console import Console  # display-only dependency, loaded on use
    from rich.table import Table

    console = console or Console(width=max(Console().width, 120))
    console.print(_families_table(data))

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
    with_stderr = _has(data["variants"], "stderr_bpb")
    if with_stderr:
        variants.add_column("±se")
    for v in data["variants"]:
        ok = "pending" if v.get("pending") else ("yes" if v["qualifies"] else "no")
        cells = [
            _short(v["family_id"]), v["hotkey"], _short(v["version_id"]), _bpb(v["baseline_bpb"]),
            _bpb(v["variant_bpb"]), _bpb(v["improvement_bpb"]), _bpb(v["margin_bpb"]), ok, "*" if v["best"] else "",
        ]  # fmt: skip
        variants.add_row(*cells, *([_bpb(v.get("stderr_bpb"))] if with_stderr else []))
    console.print(variants)
    if data.get("comparisons"):
        console.print(_comparisons_table(data["comparisons"]))

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
