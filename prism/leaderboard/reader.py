"""Read-only access to a validator's store: SQLite opened with ``mode=ro``, files re-hashed.

``prism serve`` must never change the validator's state, so it does not use ``prism.store.Store``
(whose ``open`` sets the journal mode and migrates). Every query here is a plain ``SELECT`` on a
connection opened read-only (``file:...?mode=ro``) with ``PRAGMA query_only``; each request opens
its own connection, so a running validator is never blocked (WAL readers do not block writers)
and every answer reflects the last committed write.

Files the store points to (run manifests, ZIP blobs) are read only after checking them against
the sha256 the store recorded, as ``Store.records_for_scoring`` does: a file that changed since
it was recorded is refused, never shown.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prism.errors import InfrastructureFault, OperatorError
from prism.manifest import RunManifest
from prism.store import DB_FILENAME, SCHEMA_VERSION

#: Caps on files the store points to (a manifest is tens of KB, a ZIP at most a few MB).
MAX_MANIFEST_BYTES = 8_000_000
MAX_BLOB_BYTES = 50_000_000


@dataclass(frozen=True)
class RunEntry:
    """One finished run of the store's queue, with where its manifest lives.

    The run id is the name of the run's directory (``runs/<run_id>/prism_run_manifest.v1.json``);
    :meth:`StoreReader.manifest` checks that the manifest says the same.
    """

    run_id: str
    zip_sha256: str
    profile: str
    profile_version: int
    regime: str
    seed: int
    recipe_mode: str
    manifest_path: Path
    manifest_sha256: str

    @property
    def root(self) -> Path:
        """The run's artifact root (the directory holding the manifest)."""
        return self.manifest_path.parent


def resolve_db_path(path: str | Path) -> Path:
    """A store file, or a directory holding ``validator.sqlite3`` (as ``Store.open`` accepts)."""
    path = Path(path).expanduser()
    if path.is_dir() or path.suffix == "":
        path = path / DB_FILENAME
    if not path.is_file():
        raise OperatorError(f"no PRISM store at {path} (pass --db STATE_DIR)", code="store.missing")
    return path.resolve()


class StoreReader:
    """Read-only queries over one validator store. Cheap to create; holds no connection."""

    def __init__(self, path: str | Path) -> None:
        self.db_path = resolve_db_path(path)
        self.root = self.db_path.parent
        with self._connect() as conn:
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise OperatorError(
                f"store schema version {version} is newer than this PRISM supports ({SCHEMA_VERSION})",
                code="store.future_schema",
            )
        if version < 1:
            raise OperatorError(f"{self.db_path} is not a PRISM store (no schema)", code="store.corrupt")
        self.schema_version = version

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        uri = f"{self.db_path.as_uri()}?mode=ro"
        try:
            conn = sqlite3.connect(uri, uri=True, timeout=10.0, isolation_level=None)
        except sqlite3.Error as exc:
            raise OperatorError(
                f"cannot open {self.db_path} read-only: {exc}", code="store.open_failed"
            ) from exc
        conn.row_factory = sqlite3.Row
        try:
            conn.execute("PRAGMA query_only = ON")
            yield conn
        except sqlite3.DatabaseError as exc:
            raise InfrastructureFault(
                f"reading {self.db_path} failed: {exc}", code="store.read_failed"
            ) from exc
        finally:
            conn.close()

    def _rows(self, query: str, args: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        with self._connect() as conn:
            return [dict(row) for row in conn.execute(query, args)]

    # --- standings ----------------------------------------------------------------------------

    def families(self) -> list[dict[str, Any]]:
        return self._rows(
            "SELECT * FROM families ORDER BY leader DESC, heldout_bpb, probe_bpb, founded_block"
        )

    def versions(self, family_id: str | None = None) -> list[dict[str, Any]]:
        if family_id is None:
            return self._rows("SELECT * FROM versions ORDER BY family_id, commit_block, version_id")
        return self._rows(
            "SELECT * FROM versions WHERE family_id = ? ORDER BY commit_block, version_id", (family_id,)
        )

    def variants(self, family_id: str | None = None) -> list[dict[str, Any]]:
        order = "ORDER BY family_id, best DESC, improvement_bpb DESC, commit_block"
        if family_id is None:
            return self._rows(f"SELECT * FROM training_variants {order}")
        return self._rows(f"SELECT * FROM training_variants WHERE family_id = ? {order}", (family_id,))

    def events(self) -> list[dict[str, Any]]:
        return self._rows("SELECT block, kind, family_id, hotkey, zip_sha256, version_id FROM ownership_events "
                          "ORDER BY block, id")  # fmt: skip

    def weight_history(self, limit: int) -> list[dict[str, Any]]:
        """The newest ``limit`` weight sets, newest first, with the weights decoded."""
        rows = self._rows("SELECT * FROM weight_sets ORDER BY block DESC LIMIT ?", (limit,))
        for row in rows:
            row["weights"] = json.loads(row["weights"])
        return rows

    def hotkeys_by_uid(self) -> dict[int, str]:
        """uid -> hotkey as the submissions last recorded it (for labelling weight vectors)."""
        rows = self._rows(
            "SELECT uid, hotkey FROM submissions WHERE uid IS NOT NULL ORDER BY commit_block, id"
        )
        return {int(row["uid"]): row["hotkey"] for row in rows}

    def submission_counts(self) -> dict[str, int]:
        rows = self._rows(
            "SELECT COUNT(*) AS total, SUM(intake_ok = 1) AS accepted, SUM(intake_ok = 0) AS rejected "
            "FROM submissions"
        )
        return {key: int(value or 0) for key, value in rows[0].items()}

    def run_counts(self) -> dict[str, int]:
        rows = self._rows("SELECT state, COUNT(*) AS n FROM runs GROUP BY state ORDER BY state")
        return {row["state"]: int(row["n"]) for row in rows}

    def hotkeys_of(self, zip_sha256: str) -> list[str]:
        rows = self._rows(
            "SELECT hotkey FROM submissions WHERE zip_sha256 = ? ORDER BY commit_block, hotkey", (zip_sha256,)
        )
        return [row["hotkey"] for row in rows]

    # --- runs -----------------------------------------------------------------------------------

    def runs(self, zip_sha256: str | None = None) -> list[RunEntry]:
        """Finished runs (state ``done``: a manifest was recorded), oldest first."""
        query = "SELECT * FROM runs WHERE state = 'done'"
        args: tuple[Any, ...] = ()
        if zip_sha256 is not None:
            query, args = query + " AND zip_sha256 = ?", (zip_sha256,)
        return [self._entry(row) for row in self._rows(query + " ORDER BY id", args)]

    def run(self, run_id: str) -> RunEntry | None:
        return next((entry for entry in self.runs() if entry.run_id == run_id), None)

    def _entry(self, row: dict[str, Any]) -> RunEntry:
        path = Path(row["manifest_path"])
        path = path if path.is_absolute() else self.root / path
        return RunEntry(
            run_id=path.parent.name, zip_sha256=row["zip_sha256"], profile=row["profile"],
            profile_version=int(row["profile_version"]), regime=row["regime"], seed=int(row["seed"]),
            recipe_mode=row["recipe_mode"], manifest_path=path, manifest_sha256=row["manifest_sha256"],
        )  # fmt: skip

    def manifest_bytes(self, entry: RunEntry) -> bytes:
        """The manifest file's bytes, refused if they changed since the validator recorded them."""
        data = _read_capped(entry.manifest_path, MAX_MANIFEST_BYTES, "manifest")
        if hashlib.sha256(data).hexdigest() != entry.manifest_sha256:
            raise InfrastructureFault(
                f"manifest of {entry.run_id} changed since the validator recorded it",
                code="serve.manifest_changed",
            )
        return data

    def manifest(self, entry: RunEntry) -> RunManifest:
        """The run's manifest, parsed (strict schema) from :meth:`manifest_bytes`."""
        data = self.manifest_bytes(entry)
        try:
            manifest = RunManifest.model_validate_json(data)
        except ValueError as exc:
            raise InfrastructureFault(
                f"manifest of {entry.run_id} is invalid: {exc}", code="manifest.invalid"
            ) from exc
        if manifest.run_id != entry.run_id:
            raise InfrastructureFault(
                f"manifest in {entry.root.name} names run {manifest.run_id}", code="serve.manifest_changed"
            )
        return manifest

    def artifact(self, entry: RunEntry, relative: str) -> Path:
        """A file under the run's artifact root (the manifest's artifact paths are root-relative)."""
        root = entry.root.resolve()
        path = (root / relative).resolve()
        if not path.is_relative_to(root) or not path.is_file():
            raise InfrastructureFault(
                f"artifact {relative!r} of {entry.run_id} is missing", code="serve.no_artifact"
            )
        return path

    # --- blobs ----------------------------------------------------------------------------------

    def blob(self, zip_sha256: str) -> bytes:
        """The submission ZIP with this sha256, verified; where the store recorded it, else its blob dir."""
        rows = self._rows("SELECT zip_path FROM submissions WHERE zip_sha256 = ? AND zip_path IS NOT NULL "
                          "LIMIT 1", (zip_sha256,))  # fmt: skip
        path = (
            Path(rows[0]["zip_path"]) if rows else self.root / "blobs" / zip_sha256[:2] / f"{zip_sha256}.zip"
        )
        path = path if path.is_absolute() else self.root / path
        data = _read_capped(path, MAX_BLOB_BYTES, "submission ZIP")
        if hashlib.sha256(data).hexdigest() != zip_sha256:
            raise InfrastructureFault(
                f"blob {zip_sha256[:12]} does not match its sha256", code="store.blob_mismatch"
            )
        return data


def _read_capped(path: Path, cap: int, what: str) -> bytes:
    try:
        size = path.stat().st_size
        if size > cap:
            raise InfrastructureFault(
                f"{what} {path.name} is {size} bytes (cap {cap})", code="serve.file_too_large"
            )
        return path.read_bytes()
    except OSError as exc:
        raise InfrastructureFault(
            f"{what} {path.name} is unreadable: {exc}", code="serve.file_missing"
        ) from exc
