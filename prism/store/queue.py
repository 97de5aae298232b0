"""The run queue: queued, held and screened runs, claims, results and crash recovery."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterable
from pathlib import Path

from prism.errors import InfrastructureFault
from prism.store.base import StoreBase
from prism.store.models import (
    DEFAULT_MAX_ATTEMPTS,
    FailureFault,
    RunKey,
    RunQueueState,
    RunRow,
    key_tuple,
    row_key,
)

logger = logging.getLogger(__name__)


class RunQueue(StoreBase):
    def enqueue_runs(
        self,
        keys: Iterable[RunKey],
        *,
        commit_block: int = 0,
        first: RunKey | None = None,
        hold: bool = False,
    ) -> int:
        """Queue runs; already known runs (any state) are left alone. Returns how many were new.

        With ``first`` (screening), that run is queued in stage 1 and the others are ``held`` in
        stage 2 until :meth:`release_held` or :meth:`screen_held` decides them. ``hold``: every run
        is held (a training variant waits for its family's canonical version).
        """
        now = self._clock()
        added = 0
        with self._write() as conn:
            for key in keys:
                stage, state = (
                    (1, "queued") if key == first else (2, "held" if hold or first is not None else "queued")
                )
                cursor = conn.execute(
                    """INSERT OR IGNORE INTO runs (zip_sha256, profile, profile_version, regime, seed,
                           recipe_mode, state, created_at, updated_at, stage, commit_block)
                       VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                    (*key_tuple(key), state, now, now, stage, commit_block),
                )
                added += cursor.rowcount
        return added

    def claim_next_run(self, *, require_beacon: bool = False) -> RunKey | None:
        """The next queued run (stage, then the earliest commit, then the oldest), marked running
        (attempts + 1); None when nothing is runnable. ``require_beacon``: only runs whose
        submission's beacon block hash is known (official profiles)."""
        with self._write() as conn:
            row = conn.execute(
                """SELECT * FROM runs WHERE state = 'queued' AND (? = 0 OR EXISTS (
                       SELECT 1 FROM submissions s WHERE s.zip_sha256 = runs.zip_sha256 AND s.beacon_hash IS NOT NULL))
                   ORDER BY stage, commit_block, id LIMIT 1""",
                (int(require_beacon),),
            ).fetchone()
            if row is None:
                return None
            conn.execute(
                "UPDATE runs SET state = 'running', attempts = attempts + 1, updated_at = ? WHERE id = ?",
                (self._clock(), row["id"]),
            )
        return row_key(row)

    def finish_run(self, key: RunKey, manifest_path: str | Path, manifest_sha256: str) -> None:
        """Record the manifest the host wrote for a run (whatever its status: a miner failure is a
        result). Idempotent for the same manifest; a different manifest for a done run is refused."""
        with self._write() as conn:
            row = self._run_row(conn, key)
            if row["state"] == "done":
                if row["manifest_sha256"] != manifest_sha256:
                    raise InfrastructureFault(
                        f"run {key} already has manifest {row['manifest_sha256']}",
                        code="store.result_conflict",
                    )
                return
            conn.execute(
                """UPDATE runs SET state = 'done', manifest_path = ?, manifest_sha256 = ?,
                       failure_code = NULL, failure_fault = NULL, failure_message = NULL, updated_at = ?
                   WHERE id = ?""",
                (str(manifest_path), manifest_sha256, self._clock(), row["id"]),
            )

    def fail_run(
        self,
        key: RunKey,
        *,
        code: str,
        fault: FailureFault,
        message: str,
        retry: bool,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    ) -> RunQueueState:
        """A run produced no manifest. Retried (queued again) if ``retry`` and attempts remain."""
        with self._write() as conn:
            row = self._run_row(conn, key)
            state: RunQueueState = "queued" if retry and row["attempts"] < max_attempts else "failed"
            conn.execute(
                """UPDATE runs SET state = ?, failure_code = ?, failure_fault = ?, failure_message = ?,
                       updated_at = ? WHERE id = ?""",
                (state, code, fault, message, self._clock(), row["id"]),
            )
        return state

    def requeue_interrupted(self, max_attempts: int | None = None) -> int:
        """Start-up recovery: runs left ``running`` by a crash go back to the queue and half-written
        blobs are removed. Returns how many runs were re-queued.

        With ``max_attempts``, a run that has already been claimed that many times is failed as an
        infrastructure fault (``validator.interrupted``) instead: a run that keeps killing its
        validator must not block the queue forever.
        """
        for partial in (self.root / "blobs").glob("*/.tmp-*.partial"):
            partial.unlink(missing_ok=True)
        now = self._clock()
        with self._write() as conn:
            if max_attempts is not None:
                conn.execute(
                    """UPDATE runs SET state = 'failed', failure_code = 'validator.interrupted',
                           failure_fault = 'infrastructure',
                           failure_message = 'the validator died during every attempt of this run',
                           updated_at = ? WHERE state = 'running' AND attempts >= ?""",
                    (now, max_attempts),
                )
            cursor = conn.execute(
                "UPDATE runs SET state = 'queued', updated_at = ? WHERE state = 'running'", (now,)
            )
        if cursor.rowcount:
            logger.info("re-queued %d runs interrupted by a restart", cursor.rowcount)
        return cursor.rowcount

    def release_run(self, key: RunKey) -> None:
        """A run stopped by an orderly shutdown goes back to the queue without using an attempt."""
        with self._write() as conn:
            conn.execute(
                """UPDATE runs SET state = 'queued', attempts = MAX(attempts - 1, 0), updated_at = ?
                   WHERE state = 'running' AND zip_sha256 = ? AND profile = ? AND profile_version = ?
                       AND regime = ? AND seed = ? AND recipe_mode = ?""",
                (self._clock(), *key_tuple(key)),
            )

    def runs(self, zip_sha256: str | None = None) -> list[RunRow]:
        query, args = "SELECT * FROM runs", ()
        if zip_sha256 is not None:
            query, args = query + " WHERE zip_sha256 = ?", (zip_sha256,)
        rows = self._conn.execute(query + " ORDER BY id", args).fetchall()
        return [
            RunRow(
                key=row_key(row),
                state=row["state"],
                attempts=row["attempts"],
                failure_code=row["failure_code"],
                failure_fault=row["failure_fault"],
                manifest_path=row["manifest_path"],
                manifest_sha256=row["manifest_sha256"],
            )
            for row in rows
        ]

    def _run_row(self, conn: sqlite3.Connection, key: RunKey) -> sqlite3.Row:
        row = conn.execute(
            """SELECT * FROM runs WHERE zip_sha256 = ? AND profile = ? AND profile_version = ?
                   AND regime = ? AND seed = ? AND recipe_mode = ?""",
            key_tuple(key),
        ).fetchone()
        if row is None:
            raise InfrastructureFault(f"run {key} was never enqueued", code="store.unknown_run")
        return row

    # --- screening ------------------------------------------------------------------------------

    def held_submissions(self) -> list[str]:
        """Zips with runs waiting for their first cell's screening verdict."""
        rows = self._conn.execute(
            "SELECT DISTINCT zip_sha256 FROM runs WHERE state = 'held' ORDER BY zip_sha256"
        )
        return [row["zip_sha256"] for row in rows]

    def first_cell_done(self, zip_sha256: str) -> bool:
        """Has the submission's stage-1 run ended (done or failed)?"""
        row = self._conn.execute(
            "SELECT COUNT(*) AS n FROM runs WHERE zip_sha256 = ? AND stage = 1 AND state IN ('done', 'failed')",
            (zip_sha256,),
        ).fetchone()
        return bool(row["n"])

    def release_held(self, zip_sha256: str) -> int:
        """The first cell passed screening (or there was nothing to screen against): queue the rest."""
        return self._move_held(zip_sha256, "queued")

    def screen_held(self, zip_sha256: str) -> int:
        """The first cell was screened out: the held runs are never run."""
        return self._move_held(zip_sha256, "screened")

    def unscreen(self, zip_sha256: str) -> int:
        """Scores changed (an earlier submission's results came in) and the submission is no
        longer screened out: its screened runs are queued after all."""
        return self._move(zip_sha256, "screened", "queued")

    def screened_submissions(self) -> list[str]:
        rows = self._conn.execute(
            "SELECT DISTINCT zip_sha256 FROM runs WHERE state = 'screened' ORDER BY zip_sha256"
        )
        return [row["zip_sha256"] for row in rows]

    def run_stage(self, key: RunKey) -> int:
        return int(self._run_row(self._conn, key)["stage"])

    def manifest_of_run(self, run_id: str) -> Path | None:
        """The manifest of the finished run ``run_id`` (runs live in ``<runs>/<run_id>/``)."""
        rows = self._conn.execute(
            "SELECT manifest_path FROM runs WHERE state = 'done' AND manifest_path LIKE ? ORDER BY id",
            (f"%/{run_id}/%",),  # LIKE narrows; the exact directory name decides
        )
        paths = [Path(row["manifest_path"]) for row in rows]
        return next((p for p in paths if p.parent.name == run_id), None)

    def pending_reference_runs_until(self, block: int) -> int:
        """Reference runs not yet ended of submissions committed at or before ``block``: while there
        are any, the standings of that moment (its canonical versions) may still change."""
        row = self._conn.execute(
            """SELECT COUNT(*) AS n FROM runs WHERE recipe_mode = 'reference' AND commit_block <= ?
               AND state IN ('held', 'queued', 'running')""",
            (block,),
        ).fetchone()
        return int(row["n"])

    def run_key_of(self, manifest_path: Path) -> RunKey | None:
        row = self._conn.execute(
            "SELECT * FROM runs WHERE manifest_path = ?", (str(manifest_path),)
        ).fetchone()
        return row_key(row) if row is not None else None

    def _move_held(self, zip_sha256: str, state: str) -> int:
        return self._move(zip_sha256, "held", state)

    def _move(self, zip_sha256: str, source: str, target: str) -> int:
        with self._write() as conn:
            cursor = conn.execute(
                "UPDATE runs SET state = ?, updated_at = ? WHERE zip_sha256 = ? AND state = ?",
                (target, self._clock(), zip_sha256, source),
            )
        return cursor.rowcount
