"""`prism leaderboard` shows the fields rules v2 add, from a real v2 scoring result."""

from __future__ import annotations

from typing import Any

from prism_test_economics import UIDS, economics, make_policy
from rich.console import Console

from prism.commands.leaderboard import render
from prism.scoring import RULES_V2, compute_weights


def _rendered(*, new_fields: bool) -> str:
    result = compute_weights(economics(), make_policy(RULES_V2), UIDS, block=200)
    board = result.leaderboard.model_dump(mode="json")
    data: dict[str, Any] = {
        "families": board["families"], "variants": board["variants"], "submissions": len(board["submissions"]),
        "weights": {"block": 200, "profile_key": board["profile_key"], "rules_version": 2,
                    "weights": {str(k): v for k, v in result.weights.items()}},
    }  # fmt: skip
    if new_fields:
        data["comparisons"] = board["comparisons"]
    else:  # what a store written before rules v2 holds
        new = {"canonical_hotkey", "canonical_zip_sha256", "canonical_difference_bpb", "canonical_stderr_bpb",
               "lead_difference_bpb", "lead_stderr_bpb", "stderr_bpb", "paired", "pending"}  # fmt: skip
        for table in ("families", "variants"):
            data[table] = [{k: v for k, v in row.items() if k not in new} for row in data[table]]
    console = Console(record=True, width=200)
    render(data, console)
    return console.export_text()


def test_improver_paired_differences_and_comparisons_are_shown() -> None:
    lines = _rendered(new_fields=True).splitlines()
    f1 = next(line for line in lines if "alice" in line and "F1.b" in line)
    assert "dave" in f1  # the improver holding F1's canonical version
    f2 = next(line for line in lines if "lucy" in line and "F2.a" in line)
    assert "+0.0085±0.0090" in f2  # lucy's paired lead attempt and its stderr
    assert any("architecture_lead" in line and "lucy" in line and "no" in line for line in lines)
    assert any("canonical_version" in line and "+0.0100±0.0005" in line for line in lines)
    variant = next(line for line in lines if "alice" in line and "0.0250" in line)
    assert "0.0035" in variant  # the improvement's stderr


def test_a_snapshot_without_the_new_fields_shows_the_old_tables() -> None:
    text = _rendered(new_fields=False)
    assert "alice" in text and "F1.b" in text and "Weights at block 200" in text
    assert "improver" not in text and "±se" not in text and "Comparisons" not in text
