"""Scoring outputs: the standings snapshot, comparisons, ownership events and weight sets."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import BaseModel

from prism.scoring import Leaderboard, OwnershipEvent
from prism.store.base import StoreBase

_DERIVED_TABLES = ("families", "versions", "training_variants", "comparisons")


def _insert(conn: Any, table: str, row: Mapping[str, Any]) -> None:
    """INSERT with named columns, so adding a column never shifts the others."""
    columns = ", ".join(row)
    marks = ", ".join("?" for _ in row)
    values = [int(v) if isinstance(v, bool) else v for v in row.values()]
    conn.execute(f"INSERT INTO {table} ({columns}) VALUES ({marks})", values)


def _fields(model: BaseModel, *names: str) -> dict[str, Any]:
    data = model.model_dump()
    return {name: data[name] for name in names}


def _nested_comparison(row: dict[str, Any]) -> dict[str, Any]:
    """A stored comparison row in the shape of ``prism.scoring.Comparison`` (sides nested)."""
    sides = {
        side: {"hotkey": row.pop(f"{side}_hotkey"), "zip_sha256": row.pop(f"{side}_zip"),
               "recipe_mode": row.pop(f"{side}_mode")}
        for side in ("challenger", "incumbent")
    }  # fmt: skip
    row.pop("id")
    return {**row, **sides, "paired": bool(row["paired"]), "challenger_wins": bool(row["challenger_wins"])}


class ScoringOutputs(StoreBase):
    def record_standings(self, leaderboard: Leaderboard) -> None:
        """Replace the derived tables (families, versions, variants, comparisons) with this snapshot."""
        with self._write() as conn:
            for table in _DERIVED_TABLES:
                conn.execute(f"DELETE FROM {table}")
            for family in leaderboard.families:
                _insert(conn, "families", family.model_dump())
            for version in leaderboard.versions:
                _insert(conn, "versions", version.model_dump())
            for variant in leaderboard.variants:
                _insert(conn, "training_variants", variant.model_dump())
            for c in leaderboard.comparisons:
                _insert(conn, "comparisons", {
                    **_fields(c, "kind", "family_id", "block", "paired", "state", "difference_bpb", "stderr_bpb",
                              "window_stderr_bpb", "required_bpb", "challenger_wins"),
                    "challenger_hotkey": c.challenger.hotkey, "challenger_zip": c.challenger.zip_sha256,
                    "challenger_mode": c.challenger.recipe_mode, "incumbent_hotkey": c.incumbent.hotkey,
                    "incumbent_zip": c.incumbent.zip_sha256, "incumbent_mode": c.incumbent.recipe_mode,
                })  # fmt: skip

    def record_ownership_events(self, events: Iterable[OwnershipEvent]) -> int:
        """Append events not seen before (idempotent). Returns how many were new."""
        added = 0
        with self._write() as conn:
            for e in events:
                cursor = conn.execute(
                    """INSERT OR IGNORE INTO ownership_events
                           (block, kind, family_id, hotkey, zip_sha256, version_id) VALUES (?, ?, ?, ?, ?, ?)""",
                    (e.block, e.kind, e.family_id, e.hotkey, e.zip_sha256, e.version_id),
                )
                added += cursor.rowcount
        return added

    def ownership_events(self) -> list[OwnershipEvent]:
        rows = self._conn.execute("SELECT * FROM ownership_events ORDER BY id").fetchall()
        return [
            OwnershipEvent(
                block=r["block"], kind=r["kind"], family_id=r["family_id"], hotkey=r["hotkey"],
                zip_sha256=r["zip_sha256"], version_id=r["version_id"],
            )
            for r in rows
        ]  # fmt: skip

    def record_weights(
        self, block: int, weights: Mapping[int, float], *, profile_key: str = "", rules_version: int = 0
    ) -> None:
        """The weight vector set (or about to be set) at ``block``; one per block, idempotent."""
        payload = json.dumps({str(uid): weights[uid] for uid in sorted(weights)})
        with self._write() as conn:
            conn.execute(
                """INSERT INTO weight_sets (block, weights, created_at, profile_key, rules_version)
                   VALUES (?, ?, ?, ?, ?)
                   ON CONFLICT (block) DO UPDATE SET weights = excluded.weights,
                       profile_key = excluded.profile_key, rules_version = excluded.rules_version""",
                (block, payload, self._clock(), profile_key, rules_version),
            )

    def last_weights(self) -> tuple[int, dict[int, float]] | None:
        row = self._conn.execute(
            "SELECT block, weights FROM weight_sets ORDER BY block DESC LIMIT 1"
        ).fetchone()
        if row is None:
            return None
        return int(row["block"]), {int(uid): float(w) for uid, w in json.loads(row["weights"]).items()}

    def standings(self) -> dict[str, list[dict[str, Any]]]:
        """The stored snapshot for display: families, versions, variants, comparisons (plain rows)."""
        queries = {
            "families": "SELECT * FROM families ORDER BY leader DESC, heldout_bpb, probe_bpb, founded_block",
            "versions": "SELECT * FROM versions ORDER BY family_id, commit_block, version_id",
            "variants": "SELECT * FROM training_variants ORDER BY family_id, best DESC, improvement_bpb DESC",
            "comparisons": "SELECT * FROM comparisons ORDER BY id",
        }
        out = {name: [dict(row) for row in self._conn.execute(query)] for name, query in queries.items()}
        out["comparisons"] = [_nested_comparison(row) for row in out["comparisons"]]
        return out

    def weight_set(self, block: int | None = None) -> dict[str, Any] | None:
        query = "SELECT * FROM weight_sets ORDER BY block DESC LIMIT 1"
        args: tuple[Any, ...] = ()
        if block is not None:
            query, args = "SELECT * FROM weight_sets WHERE block = ?", (block,)
        row = self._conn.execute(query, args).fetchone()
        return dict(row) if row is not None else None
