"""The ``Store``: opening the database, content-addressed blobs and submission rows.

The run queue, scoring inputs, paired evaluations and scoring outputs are mixins over the same
connection (``prism.store.queue``, ``.records``, ``.paired``, ``.outputs``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from prism.errors import InfrastructureFault, OperatorError
from prism.scoring.records import SubmissionKind
from prism.store.models import DB_FILENAME
from prism.store.outputs import ScoringOutputs
from prism.store.paired import PairedEvals
from prism.store.queue import RunQueue
from prism.store.records import ScoringInputs
from prism.store.schema import SCHEMA_VERSION, migrate, refuse_future_schema, schema_version

logger = logging.getLogger(__name__)


class Store(RunQueue, ScoringInputs, PairedEvals, ScoringOutputs):
    """The validator's durable state. Open with ``Store.open(path)``; one instance per process."""

    @classmethod
    def open(cls, path: str | Path, *, migrate_to: int = SCHEMA_VERSION, create: bool = True) -> Store:
        """Open the database at ``path`` (a file, or a directory holding ``validator.sqlite3``).

        ``create=False`` (read-only tools such as ``prism leaderboard``) refuses a missing store
        instead of creating an empty one.
        """
        path = Path(path).expanduser()
        if path.is_dir() or path.suffix == "":
            path = path / DB_FILENAME
        if not create and not path.exists():
            raise OperatorError(f"no PRISM store at {path} (pass --db PATH)", code="store.missing")
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = sqlite3.connect(path, isolation_level=None, timeout=30.0)
        except sqlite3.Error as exc:
            raise OperatorError(f"cannot open store {path}: {exc}", code="store.open_failed") from exc
        conn.row_factory = sqlite3.Row
        try:
            refuse_future_schema(conn)  # before touching anything, even the journal mode
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
            migrate(conn, migrate_to)
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise OperatorError(f"{path} is not a usable PRISM store: {exc}", code="store.corrupt") from exc
        except OperatorError:
            conn.close()
            raise
        return cls(conn, path.parent)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def schema_version(self) -> int:
        return schema_version(self._conn)

    def integrity_ok(self) -> bool:
        return self._conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"

    # --- blobs ----------------------------------------------------------------------------------

    def blob_path(self, sha256: str) -> Path:
        return self.root / "blobs" / sha256[:2] / f"{sha256}.zip"

    def put_blob(self, data: bytes, expected_sha256: str | None = None) -> Path:
        """Store ZIP bytes content-addressed; atomic (temp file, fsync, rename); idempotent."""
        digest = hashlib.sha256(data).hexdigest()
        if expected_sha256 is not None and digest != expected_sha256:
            raise InfrastructureFault(
                f"blob sha256 {digest} does not match expected {expected_sha256}", code="store.blob_mismatch"
            )
        target = self.blob_path(digest)
        if target.exists() and hashlib.sha256(target.read_bytes()).hexdigest() == digest:
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-", suffix=".partial")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, target)
        except OSError as exc:
            Path(tmp).unlink(missing_ok=True)
            raise InfrastructureFault(f"cannot write blob {target}: {exc}", code="store.blob_write") from exc
        return target

    # --- submissions ----------------------------------------------------------------------------

    def upsert_submission(
        self,
        *,
        hotkey: str,
        zip_sha256: str,
        commit_block: int,
        kind: SubmissionKind,
        uid: int | None = None,
        target_architecture_id: str | None = None,
        training_fingerprint: str | None = None,
        recipe_fingerprint: str | None = None,
    ) -> int:
        """Insert or refresh a submission; the earliest commit block seen is kept. Returns its id."""
        with self._write() as conn:
            conn.execute(
                """INSERT INTO submissions (hotkey, uid, zip_sha256, commit_block, kind,
                       target_architecture_id, training_fingerprint, recipe_fingerprint, created_at)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
                   ON CONFLICT (hotkey, zip_sha256) DO UPDATE SET
                       commit_block = MIN(commit_block, excluded.commit_block),
                       uid = COALESCE(excluded.uid, uid),
                       target_architecture_id = COALESCE(excluded.target_architecture_id, target_architecture_id),
                       training_fingerprint = COALESCE(excluded.training_fingerprint, training_fingerprint),
                       recipe_fingerprint = COALESCE(excluded.recipe_fingerprint, recipe_fingerprint)""",
                (hotkey, uid, zip_sha256, commit_block, kind, target_architecture_id, training_fingerprint,
                 recipe_fingerprint, self._clock()),
            )  # fmt: skip
            row = conn.execute(
                "SELECT id FROM submissions WHERE hotkey = ? AND zip_sha256 = ?", (hotkey, zip_sha256)
            ).fetchone()
        return int(row["id"])

    def record_intake(
        self, zip_sha256: str, *, ok: bool, codes: Iterable[str] = (), zip_path: Path | None = None
    ) -> None:
        """Intake verdict of a ZIP (applies to every hotkey that committed these bytes)."""
        with self._write() as conn:
            conn.execute(
                "UPDATE submissions SET intake_ok = ?, intake_codes = ?, zip_path = COALESCE(?, zip_path) "
                "WHERE zip_sha256 = ?",
                (int(ok), json.dumps(sorted(codes)), str(zip_path) if zip_path else None, zip_sha256),
            )

    def record_fetch_failure(
        self, *, hotkey: str, zip_sha256: str, commit_block: int, uid: int | None, code: str
    ) -> None:
        """A miner fault of one hotkey's download (wrong bytes, oversized, garbage): recorded on that
        hotkey's row only, never on the hash, which another hotkey may serve honestly."""
        self.upsert_submission(
            hotkey=hotkey, zip_sha256=zip_sha256, commit_block=commit_block, kind="full", uid=uid
        )
        with self._write() as conn:
            conn.execute(
                "UPDATE submissions SET intake_ok = 0, intake_codes = ? WHERE hotkey = ? AND zip_sha256 = ?",
                (json.dumps([code]), hotkey, zip_sha256),
            )

    def set_identity(self, zip_sha256: str, *, family_id: str, version_id: str) -> None:
        """Family/version measured from the running model (from the first manifest)."""
        with self._write() as conn:
            conn.execute(
                "UPDATE submissions SET family_id = ?, version_id = ? WHERE zip_sha256 = ?",
                (family_id, version_id, zip_sha256),
            )

    def set_beacon(self, zip_sha256: str, *, block_hash: str) -> None:
        """The hash of the submission's beacon block (read from the chain once it exists)."""
        with self._write() as conn:
            conn.execute(
                "UPDATE submissions SET beacon_hash = ? WHERE zip_sha256 = ? AND beacon_hash IS NULL",
                (block_hash, zip_sha256),
            )

    def beacon_of(self, zip_sha256: str) -> tuple[int, str]:
        """(beacon block, its hash) of an admitted submission whose beacon is known."""
        from prism.beacon import beacon_block

        row = self._conn.execute(
            """SELECT MIN(commit_block) AS block, MAX(beacon_hash) AS hash FROM submissions
               WHERE zip_sha256 = ? AND intake_ok = 1""",
            (zip_sha256,),
        ).fetchone()
        if row is None or row["hash"] is None:
            raise InfrastructureFault(f"no beacon known for {zip_sha256[:12]}", code="store.no_beacon")
        return beacon_block(int(row["block"])), str(row["hash"])

    def held_variants(self) -> list[tuple[str, int, str | None]]:
        """(zip, earliest commit block, target family) of training variants with held runs."""
        rows = self._conn.execute(
            """SELECT s.zip_sha256, MIN(s.commit_block) AS block, MAX(s.target_architecture_id) AS target
               FROM submissions s WHERE s.kind = 'training_for_arch' AND s.intake_ok = 1 AND EXISTS (
                   SELECT 1 FROM runs r WHERE r.zip_sha256 = s.zip_sha256 AND r.state = 'held')
               GROUP BY s.zip_sha256 ORDER BY block, s.zip_sha256"""
        )
        return [(row["zip_sha256"], int(row["block"]), row["target"]) for row in rows]

    def set_architecture_zip(self, zip_sha256: str, architecture_zip: str) -> None:
        """The canonical ZIP a training variant's runs train on (fixed once: its runs depend on it)."""
        with self._write() as conn:
            conn.execute(
                "UPDATE submissions SET architecture_zip = ? WHERE zip_sha256 = ? AND architecture_zip IS NULL",
                (architecture_zip, zip_sha256),
            )

    def architecture_zip_of(self, zip_sha256: str) -> str | None:
        row = self._conn.execute(
            "SELECT MAX(architecture_zip) AS z FROM submissions WHERE zip_sha256 = ?", (zip_sha256,)
        ).fetchone()
        return row["z"] if row is not None else None

    def awaiting_beacon(self) -> list[tuple[str, int]]:
        """(zip, earliest commit block) of admitted ZIPs with a row whose beacon hash is not known yet.
        The earliest commitment of the bytes fixes the beacon, for every hotkey that committed them."""
        rows = self._conn.execute(
            """SELECT zip_sha256, MIN(commit_block) AS block FROM submissions WHERE intake_ok = 1
               GROUP BY zip_sha256 HAVING SUM(beacon_hash IS NULL) > 0 ORDER BY block, zip_sha256"""
        )
        return [(row["zip_sha256"], int(row["block"])) for row in rows]

    def submissions(self) -> list[dict[str, Any]]:
        rows = self._conn.execute("SELECT * FROM submissions ORDER BY commit_block, hotkey, zip_sha256")
        return [dict(row) for row in rows]
