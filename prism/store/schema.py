"""The store's schema as ordered migrations. Append one to move forward; never edit an old one."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator

from prism.errors import OperatorError

logger = logging.getLogger(__name__)

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

# v3 (issues 10 and 12): runs wait ("held") for their submission's first cell or the chain beacon
# and may be "screened"; the queue is ordered by stage and commit; submissions carry their beacon
# block hash and a normalised recipe fingerprint; paired held-out evaluations get their own table;
# family standings keep the paired numbers and every comparison is kept for the leaderboard. SQLite cannot change a CHECK, so runs is rebuilt.
_V3 = """
CREATE TABLE runs_v3 (
    id INTEGER PRIMARY KEY,
    zip_sha256 TEXT NOT NULL,
    profile TEXT NOT NULL,
    profile_version INTEGER NOT NULL,
    regime TEXT NOT NULL,
    seed INTEGER NOT NULL,
    recipe_mode TEXT NOT NULL CHECK (recipe_mode IN ('reference', 'submitted')),
    state TEXT NOT NULL CHECK (state IN ('held', 'queued', 'running', 'done', 'failed', 'screened')),
    attempts INTEGER NOT NULL DEFAULT 0,
    failure_code TEXT,
    failure_fault TEXT,
    failure_message TEXT,
    manifest_path TEXT,
    manifest_sha256 TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    stage INTEGER NOT NULL DEFAULT 2,
    commit_block INTEGER NOT NULL DEFAULT 0,
    UNIQUE (zip_sha256, profile, profile_version, regime, seed, recipe_mode),
    CHECK (state != 'done' OR (manifest_path IS NOT NULL AND manifest_sha256 IS NOT NULL))
);
INSERT INTO runs_v3 (id, zip_sha256, profile, profile_version, regime, seed, recipe_mode, state, attempts,
    failure_code, failure_fault, failure_message, manifest_path, manifest_sha256, created_at, updated_at)
    SELECT id, zip_sha256, profile, profile_version, regime, seed, recipe_mode, state, attempts,
    failure_code, failure_fault, failure_message, manifest_path, manifest_sha256, created_at, updated_at FROM runs;
UPDATE runs_v3 SET commit_block = COALESCE(
    (SELECT MIN(s.commit_block) FROM submissions s WHERE s.zip_sha256 = runs_v3.zip_sha256), 0);
DROP TABLE runs;
ALTER TABLE runs_v3 RENAME TO runs;
CREATE INDEX runs_by_state ON runs (state, stage, commit_block, id);
ALTER TABLE submissions ADD COLUMN beacon_hash TEXT;
ALTER TABLE submissions ADD COLUMN recipe_fingerprint TEXT;
ALTER TABLE submissions ADD COLUMN architecture_zip TEXT;
CREATE TABLE paired_evals (
    id INTEGER PRIMARY KEY,
    state TEXT NOT NULL CHECK (state IN ('done', 'failed')),
    failure_code TEXT,
    profile_key TEXT NOT NULL,
    challenger_zip TEXT NOT NULL,
    challenger_mode TEXT NOT NULL,
    regime TEXT NOT NULL,
    seed INTEGER NOT NULL,
    challenger_run_id TEXT NOT NULL,
    model_zip TEXT NOT NULL,
    model_mode TEXT NOT NULL,
    model_run_id TEXT NOT NULL,
    window_bytes TEXT NOT NULL DEFAULT '[]',
    nats TEXT NOT NULL DEFAULT '[]',
    created_at REAL NOT NULL,
    UNIQUE (challenger_run_id, model_run_id)
);
ALTER TABLE families ADD COLUMN canonical_hotkey TEXT;
ALTER TABLE families ADD COLUMN canonical_zip_sha256 TEXT;
ALTER TABLE families ADD COLUMN lead_difference_bpb REAL;
ALTER TABLE families ADD COLUMN lead_stderr_bpb REAL;
ALTER TABLE families ADD COLUMN canonical_difference_bpb REAL;
ALTER TABLE families ADD COLUMN canonical_stderr_bpb REAL;
ALTER TABLE training_variants ADD COLUMN stderr_bpb REAL NOT NULL DEFAULT 0;
ALTER TABLE training_variants ADD COLUMN paired INTEGER NOT NULL DEFAULT 0;
ALTER TABLE training_variants ADD COLUMN pending INTEGER NOT NULL DEFAULT 0;
CREATE TABLE comparisons (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    family_id TEXT NOT NULL,
    block INTEGER NOT NULL,
    challenger_hotkey TEXT NOT NULL,
    challenger_zip TEXT NOT NULL,
    challenger_mode TEXT NOT NULL,
    incumbent_hotkey TEXT NOT NULL,
    incumbent_zip TEXT NOT NULL,
    incumbent_mode TEXT NOT NULL,
    paired INTEGER NOT NULL,
    state TEXT NOT NULL,
    difference_bpb REAL,
    stderr_bpb REAL,
    window_stderr_bpb REAL,
    required_bpb REAL,
    challenger_wins INTEGER NOT NULL
)
"""

MIGRATIONS: tuple[str, ...] = (_V1, _V2, _V3)
SCHEMA_VERSION = len(MIGRATIONS)


def schema_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def refuse_future_schema(conn: sqlite3.Connection) -> int:
    current = schema_version(conn)
    if current > SCHEMA_VERSION:
        raise OperatorError(
            f"database schema version {current} is newer than this PRISM supports ({SCHEMA_VERSION}); "
            "upgrade PRISM or point --db at another file",
            code="store.future_schema",
        )
    return current


def migrate(conn: sqlite3.Connection, target: int = SCHEMA_VERSION) -> int:
    """Apply migrations ``current+1 .. target``, each in its own transaction. Returns the version."""
    current = refuse_future_schema(conn)
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
    return schema_version(conn)


def _statements(script: str) -> Iterator[str]:
    for statement in script.split(";"):
        if statement.strip():
            yield statement.strip()
