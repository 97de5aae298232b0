"""Paired held-out evaluations: another run's weights measured on a challenger run's windows.

One row per (challenger run, model run), written once: a re-measurement gives the same numbers
(the evaluation is deterministic), so a second write is ignored. ``failed`` rows are failures
blamed on the model (it forfeits the contest); failures on our side are not recorded, so the
validator asks again.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from prism.scoring.paired import EvalRequest
from prism.store.base import StoreBase


class PairedEvals(StoreBase):
    def record_paired_eval(
        self,
        request: EvalRequest,
        *,
        profile_key: str,
        window_bytes: Sequence[int] = (),
        nats: Sequence[float] = (),
        failure_code: str | None = None,
    ) -> bool:
        """Store one paired evaluation (or its failure). Returns False if it was already known."""
        state = "failed" if failure_code is not None else "done"
        with self._write() as conn:
            cursor = conn.execute(
                """INSERT OR IGNORE INTO paired_evals (state, failure_code, profile_key, challenger_zip,
                       challenger_mode, regime, seed, challenger_run_id, model_zip, model_mode, model_run_id,
                       window_bytes, nats, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                (state, failure_code, profile_key, request.zip_sha256, request.recipe_mode, request.regime,
                 request.seed, request.run_id, request.model_zip_sha256, request.model_recipe_mode,
                 request.model_run_id, json.dumps([int(b) for b in window_bytes]),
                 json.dumps([float(x) for x in nats]), self._clock()),
            )  # fmt: skip
        return cursor.rowcount == 1

    def paired_eval_known(self, request: EvalRequest) -> bool:
        """Has this evaluation been made (or has it failed) already?"""
        row = self._conn.execute(
            "SELECT 1 FROM paired_evals WHERE challenger_run_id = ? AND model_run_id = ?",
            (request.run_id, request.model_run_id),
        ).fetchone()
        return row is not None

    def paired_eval_counts(self) -> dict[str, int]:
        rows = self._conn.execute("SELECT state, COUNT(*) AS n FROM paired_evals GROUP BY state")
        return {row["state"]: int(row["n"]) for row in rows}
