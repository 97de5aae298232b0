"""Validator state: one SQLite database (WAL mode) plus a content-addressed blob directory.

Layout under the store root (the directory holding the database file)::

    validator.sqlite3                     the database (WAL: -wal / -shm files beside it)
    blobs/<sha256[:2]>/<sha256>.zip       submission ZIPs, written atomically, verified on write

Durability rules:

* every write is one ``BEGIN IMMEDIATE`` transaction, so a crash (even SIGKILL) leaves either
  all of a write or none of it; unique constraints make every write idempotent, so replaying
  it after a crash never duplicates a result;
* the schema carries ``PRAGMA user_version``; ``Store.open`` applies the ordered migrations up
  to ``SCHEMA_VERSION`` and refuses a database written by a newer PRISM (``store.future_schema``);
* runs left ``running`` by a crash are put back in the queue by ``requeue_interrupted`` (call it
  once at start-up, before any worker claims runs).

The store reads manifests from disk for scoring (``records_for_scoring``); scoring itself never
touches the disk.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from prism.errors import InfrastructureFault, OperatorError
from prism.manifest import RecipeMode, RunManifest, read_manifest
from prism.scoring import Leaderboard, OwnershipEvent, SubmissionRecord
from prism.scoring.records import SubmissionKind

logger = logging.getLogger(__name__)

DB_FILENAME = "validator.sqlite3"
#: Where the validator keeps its state unless told otherwise ($PRISM_HOME, default ~/.prism).
DEFAULT_STORE_DIR = Path(os.environ.get("PRISM_HOME", "~/.prism")).expanduser() / "validator"
RunQueueState = Literal["queued", "running", "done", "failed"]
FailureFault = Literal["miner", "infrastructure"]

#: Attempts after which an infrastructure failure stops being retried (the run is then failed).
DEFAULT_MAX_ATTEMPTS = 3


class RunKey(BaseModel):
    """One evaluation cell of one submission: what the queue schedules and manifests describe."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    zip_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    profile: str
    profile_version: int
    regime: str
    seed: int
    recipe_mode: RecipeMode


class RunRow(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    key: RunKey
    state: RunQueueState
    attempts: int
    failure_code: str | None
    failure_fault: str | None
    manifest_path: str | None
    manifest_sha256: str | None


# ---------------------------------------------------------------------------------------------
# Schema and migrations. Append a migration to move the schema forward; never edit an old one.

_V1 = """
CREATE TABLE submissions (
    id INTEGER PRIMARY KEY,
    hotkey TEXT NOT NULL,
    uid INTEGER,
    zip_sha256 TEXT NOT NULL,
    commit_block INTEGER NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('full', 'architecture_only', 'training_for_arch')),
    target_architecture_id TEXT,
    training_fingerprint TEXT,
    intake_ok INTEGER CHECK (intake_ok IN (0, 1)),
    intake_codes TEXT NOT NULL DEFAULT '[]',
    zip_path TEXT,
    family_id TEXT,
    version_id TEXT,
    created_at REAL NOT NULL,
    UNIQUE (hotkey, zip_sha256)
);
CREATE TABLE runs (
    id INTEGER PRIMARY KEY,
    zip_sha256 TEXT NOT NULL,
    profile TEXT NOT NULL,
    profile_version INTEGER NOT NULL,
    regime TEXT NOT NULL,
    seed INTEGER NOT NULL,
    recipe_mode TEXT NOT NULL CHECK (recipe_mode IN ('reference', 'submitted')),
    state TEXT NOT NULL CHECK (state IN ('queued', 'running', 'done', 'failed')),
    attempts INTEGER NOT NULL DEFAULT 0,
    failure_code TEXT,
    failure_fault TEXT,
    failure_message TEXT,
    manifest_path TEXT,
    manifest_sha256 TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    UNIQUE (zip_sha256, profile, profile_version, regime, seed, recipe_mode),
    CHECK (state != 'done' OR (manifest_path IS NOT NULL AND manifest_sha256 IS NOT NULL))
);
CREATE TABLE families (
    family_id TEXT PRIMARY KEY,
    owner_hotkey TEXT NOT NULL,
    owner_zip_sha256 TEXT NOT NULL,
    founded_block INTEGER NOT NULL,
    canonical_version_id TEXT NOT NULL,
    heldout_bpb REAL NOT NULL,
    probe_bpb REAL NOT NULL,
    runs INTEGER NOT NULL,
    leader INTEGER NOT NULL
);
CREATE TABLE versions (
    version_id TEXT PRIMARY KEY,
    family_id TEXT NOT NULL,
    hotkey TEXT NOT NULL,
    zip_sha256 TEXT NOT NULL,
    commit_block INTEGER NOT NULL,
    heldout_bpb REAL,
    probe_bpb REAL,
    canonical INTEGER NOT NULL
);
CREATE TABLE training_variants (
    family_id TEXT NOT NULL,
    zip_sha256 TEXT NOT NULL,
    hotkey TEXT NOT NULL,
    version_id TEXT NOT NULL,
    commit_block INTEGER NOT NULL,
    baseline_bpb REAL NOT NULL,
    variant_bpb REAL NOT NULL,
    improvement_bpb REAL NOT NULL,
    margin_bpb REAL NOT NULL,
    qualifies INTEGER NOT NULL,
    best INTEGER NOT NULL,
    PRIMARY KEY (family_id, zip_sha256, hotkey)
);
CREATE TABLE ownership_events (
    id INTEGER PRIMARY KEY,
    block INTEGER NOT NULL,
    kind TEXT NOT NULL,
    family_id TEXT NOT NULL,
    hotkey TEXT NOT NULL,
    zip_sha256 TEXT NOT NULL,
    version_id TEXT,
    UNIQUE (block, kind, family_id, hotkey, zip_sha256)
);
CREATE TABLE weight_sets (
    id INTEGER PRIMARY KEY,
    block INTEGER NOT NULL UNIQUE,
    weights TEXT NOT NULL,
    created_at REAL NOT NULL
);
"""

# v2: the queue is polled by state (an index), and each weight set records the profile and
# rules it was computed under, so the leaderboard can say what the numbers mean.
_V2 = """
CREATE INDEX runs_by_state ON runs (state, id);
ALTER TABLE weight_sets ADD COLUMN profile_key TEXT NOT NULL DEFAULT '';
ALTER TABLE weight_sets ADD COLUMN rules_version INTEGER NOT NULL DEFAULT 0;
"""

MIGRATIONS: tuple[str, ...] = (_V1, _V2)
SCHEMA_VERSION = len(MIGRATIONS)


def _schema_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def _refuse_future_schema(conn: sqlite3.Connection) -> int:
    current = _schema_version(conn)
    if current > SCHEMA_VERSION:
        raise OperatorError(
            f"database schema version {current} is newer than this PRISM supports ({SCHEMA_VERSION}); "
            "upgrade PRISM or point --db at another file",
            code="store.future_schema",
        )
    return current


def migrate(conn: sqlite3.Connection, target: int = SCHEMA_VERSION) -> int:
    """Apply migrations ``current+1 .. target``, each in its own transaction. Returns the version."""
    current = _refuse_future_schema(conn)
    for version in range(current + 1, target + 1):
        # executescript would COMMIT implicitly; run statement by statement inside one transaction
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _statements(MIGRATIONS[version - 1]):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {version}")
            conn.execute("COMMIT")
        except sqlite3.Error:
            conn.execute("ROLLBACK")
            raise
        logger.info("store schema migrated to version %d", version)
    return _schema_version(conn)


def _statements(script: str) -> Iterator[str]:
    for statement in script.split(";"):
        if statement.strip():
            yield statement.strip()


# ---------------------------------------------------------------------------------------------


class Store:
    """The validator's durable state. Open with ``Store.open(path)``; one instance per process."""

    def __init__(self, conn: sqlite3.Connection, root: Path, clock: Callable[[], float] = time.time) -> None:
        self._conn = conn
        self.root = root
        self._clock = clock

    # --- lifecycle ----------------------------------------------------------------------------

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
            _refuse_future_schema(conn)  # before touching anything, even the journal mode
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
        return _schema_version(self._conn)

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; BEGIN IMMEDIATE takes the write lock up front (no upgrade races)."""
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield self._conn
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

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
    ) -> int:
        """Insert or refresh a submission; the earliest commit block seen is kept. Returns its id."""
        now = self._clock()
        with self._write() as conn:
            conn.execute(
                """INSERT INTO submissions (hotkey, uid, zip_sha256, commit_block, kind,
                       target_architecture_id, training_fingerprint, created_at)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?)
                   ON CONFLICT (hotkey, zip_sha256) DO UPDATE SET
                       commit_block = MIN(commit_block, excluded.commit_block),
                       uid = COALESCE(excluded.uid, uid),
                       target_architecture_id = COALESCE(excluded.target_architecture_id, target_architecture_id),
                       training_fingerprint = COALESCE(excluded.training_fingerprint, training_fingerprint)""",
                (
                    hotkey,
                    uid,
                    zip_sha256,
                    commit_block,
                    kind,
                    target_architecture_id,
                    training_fingerprint,
                    now,
                ),
            )
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

    def set_identity(self, zip_sha256: str, *, family_id: str, version_id: str) -> None:
        """Family/version measured from the running model (from the first manifest)."""
        with self._write() as conn:
            conn.execute(
                "UPDATE submissions SET family_id = ?, version_id = ? WHERE zip_sha256 = ?",
                (family_id, version_id, zip_sha256),
            )

    def submissions(self) -> list[dict[str, Any]]:
        rows = self._conn.execute("SELECT * FROM submissions ORDER BY commit_block, hotkey, zip_sha256")
        return [dict(row) for row in rows]

    # --- the run queue ------------------------------------------------------------------------

    def enqueue_runs(self, keys: Iterable[RunKey]) -> int:
        """Queue runs; already known runs (any state) are left alone. Returns how many were new."""
        now = self._clock()
        added = 0
        with self._write() as conn:
            for key in keys:
                cursor = conn.execute(
                    """INSERT OR IGNORE INTO runs (zip_sha256, profile, profile_version, regime, seed,
                           recipe_mode, state, created_at, updated_at)
                       VALUES (?, ?, ?, ?, ?, ?, 'queued', ?, ?)""",
                    (*_key_tuple(key), now, now),
                )
                added += cursor.rowcount
        return added

    def claim_next_run(self) -> RunKey | None:
        """The oldest queued run, marked running (attempts + 1); None when the queue is empty."""
        with self._write() as conn:
            row = conn.execute("SELECT * FROM runs WHERE state = 'queued' ORDER BY id LIMIT 1").fetchone()
            if row is None:
                return None
            conn.execute(
                "UPDATE runs SET state = 'running', attempts = attempts + 1, updated_at = ? WHERE id = ?",
                (self._clock(), row["id"]),
            )
        return _row_key(row)

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
                (self._clock(), *_key_tuple(key)),
            )

    def record_fetch_failure(self, *, hotkey: str, zip_sha256: str, commit_block: int, uid: int | None,
                             code: str) -> None:  # fmt: skip
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

    def runs(self, zip_sha256: str | None = None) -> list[RunRow]:
        query, args = "SELECT * FROM runs", ()
        if zip_sha256 is not None:
            query, args = query + " WHERE zip_sha256 = ?", (zip_sha256,)
        rows = self._conn.execute(query + " ORDER BY id", args).fetchall()
        return [
            RunRow(
                key=_row_key(row),
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
            _key_tuple(key),
        ).fetchone()
        if row is None:
            raise InfrastructureFault(f"run {key} was never enqueued", code="store.unknown_run")
        return row

    # --- scoring inputs -------------------------------------------------------------------------

    def records_for_scoring(self, profile: str, profile_version: int) -> list[SubmissionRecord]:
        """Every submission with a known intake verdict, with its manifests for this profile.

        A manifest whose file is missing or whose sha256 changed since it was recorded is skipped
        (logged): it is not a result, the cell stays open.
        """
        records = []
        for sub in self.submissions():
            if sub["intake_ok"] is None:
                continue
            manifests = self._manifests(sub["zip_sha256"], profile, profile_version)
            family, version = sub["family_id"], sub["version_id"]
            if family is None or version is None:
                family, version = _identity_from(manifests)
            records.append(
                SubmissionRecord(
                    hotkey=sub["hotkey"],
                    commit_block=sub["commit_block"],
                    zip_sha256=sub["zip_sha256"],
                    kind=sub["kind"],
                    target_architecture_id=sub["target_architecture_id"],
                    family_id=family,
                    version_id=version,
                    family_ops=_family_ops(manifests),
                    training_fingerprint=sub["training_fingerprint"],
                    intake_ok=bool(sub["intake_ok"]),
                    runs=tuple(manifests),
                )
            )
        return records

    def _manifests(self, zip_sha256: str, profile: str, profile_version: int) -> list[RunManifest]:
        rows = self._conn.execute(
            """SELECT manifest_path, manifest_sha256 FROM runs WHERE zip_sha256 = ? AND profile = ?
                   AND profile_version = ? AND state = 'done' ORDER BY id""",
            (zip_sha256, profile, profile_version),
        ).fetchall()
        manifests = []
        for row in rows:
            path = Path(row["manifest_path"])
            path = path if path.is_absolute() else self.root / path
            try:
                data = path.read_bytes()
            except OSError as exc:
                logger.warning("manifest %s unreadable, skipped: %s", path, exc)
                continue
            if hashlib.sha256(data).hexdigest() != row["manifest_sha256"]:
                logger.warning("manifest %s changed since it was recorded, skipped", path)
                continue
            try:
                manifests.append(read_manifest(path))
            except InfrastructureFault as exc:
                logger.warning("%s", exc)
        return manifests

    # --- scoring outputs ------------------------------------------------------------------------

    def record_standings(self, leaderboard: Leaderboard) -> None:
        """Replace the derived tables (families, versions, variants) with this snapshot."""
        with self._write() as conn:
            for table in ("families", "versions", "training_variants"):
                conn.execute(f"DELETE FROM {table}")
            for f in leaderboard.families:
                conn.execute(
                    "INSERT INTO families VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (f.family_id, f.owner_hotkey, f.owner_zip_sha256, f.founded_block, f.canonical_version_id,
                     f.heldout_bpb, f.probe_bpb, f.runs, int(f.leader)),
                )  # fmt: skip
            for v in leaderboard.versions:
                conn.execute(
                    "INSERT INTO versions VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (v.version_id, v.family_id, v.hotkey, v.zip_sha256, v.commit_block, v.heldout_bpb,
                     v.probe_bpb, int(v.canonical)),
                )  # fmt: skip
            for t in leaderboard.variants:
                conn.execute(
                    "INSERT INTO training_variants VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (t.family_id, t.zip_sha256, t.hotkey, t.version_id, t.commit_block, t.baseline_bpb,
                     t.variant_bpb, t.improvement_bpb, t.margin_bpb, int(t.qualifies), int(t.best)),
                )  # fmt: skip

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
        """The stored snapshot for display: families, versions, variants (plain rows)."""
        queries = {
            "families": "SELECT * FROM families ORDER BY leader DESC, heldout_bpb, probe_bpb, founded_block",
            "versions": "SELECT * FROM versions ORDER BY family_id, commit_block, version_id",
            "variants": "SELECT * FROM training_variants ORDER BY family_id, best DESC, improvement_bpb DESC",
        }
        out: dict[str, list[dict[str, Any]]] = {}
        for name, query in queries.items():
            out[name] = [dict(row) for row in self._conn.execute(query)]
        return out

    def weight_set(self, block: int | None = None) -> dict[str, Any] | None:
        query = "SELECT * FROM weight_sets ORDER BY block DESC LIMIT 1"
        args: tuple[Any, ...] = ()
        if block is not None:
            query, args = "SELECT * FROM weight_sets WHERE block = ?", (block,)
        row = self._conn.execute(query, args).fetchone()
        return dict(row) if row is not None else None


def _key_tuple(key: RunKey) -> tuple[str, str, int, str, int, str]:
    return (key.zip_sha256, key.profile, key.profile_version, key.regime, key.seed, key.recipe_mode)


def _row_key(row: sqlite3.Row) -> RunKey:
    return RunKey(
        zip_sha256=row["zip_sha256"],
        profile=row["profile"],
        profile_version=row["profile_version"],
        regime=row["regime"],
        seed=row["seed"],
        recipe_mode=row["recipe_mode"],
    )


def _family_ops(manifests: list[RunManifest]) -> tuple[str, ...] | None:
    """The family's op tokens as the first manifest recorded them (for the near-duplicate rule)."""
    for manifest in manifests:
        if manifest.submission.family_ops:
            return tuple(manifest.submission.family_ops)
    return None


def _identity_from(manifests: list[RunManifest]) -> tuple[str | None, str | None]:
    """Family/version of a submission whose row has none yet: the first manifest that names them."""
    for manifest in manifests:
        ids = manifest.submission
        if ids.family_id is not None and ids.version_id is not None:
            return ids.family_id, ids.version_id
    return None, None
