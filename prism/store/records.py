"""Scoring inputs from the store: submissions with their manifests and paired measurements.

Manifests and window-loss files are read from disk and checked against the sha256 recorded when
the run finished; a file that is missing or changed is skipped (logged): it is not a result and
its cell stays open. Scoring itself never touches the disk.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from prism.errors import InfrastructureFault
from prism.manifest import RecipeMode, RunManifest, read_manifest
from prism.scoring import SubmissionRecord
from prism.scoring.paired import ModelEval, PairedCell, PairedMeasurement
from prism.store.base import StoreBase

logger = logging.getLogger(__name__)


class WindowLosses:
    """One run's per-window held-out nats and bytes (``heldout_windows.json``, hash-checked)."""

    def __init__(self, run_id: str, window_bytes: tuple[int, ...], nats: tuple[float, ...]) -> None:
        self.run_id, self.window_bytes, self.nats = run_id, window_bytes, nats


class ScoringInputs(StoreBase):
    def records_for_scoring(self, profile: str, profile_version: int) -> list[SubmissionRecord]:
        """Every submission with a known intake verdict, with its manifests for this profile and
        the paired measurements made on its windows."""
        profile_key = f"{profile}@{profile_version}"
        records = []
        for sub in self._conn.execute("SELECT * FROM submissions ORDER BY commit_block, hotkey, zip_sha256"):
            if sub["intake_ok"] is None:
                continue
            located = self.located_manifests(sub["zip_sha256"], profile, profile_version)
            manifests = [manifest for manifest, _ in located]
            family, version = sub["family_id"], sub["version_id"]
            if family is None or version is None:
                family, version = _identity_from(manifests)
            records.append(
                SubmissionRecord(
                    hotkey=sub["hotkey"], commit_block=sub["commit_block"], zip_sha256=sub["zip_sha256"],
                    kind=sub["kind"], target_architecture_id=sub["target_architecture_id"], family_id=family,
                    version_id=version, family_ops=_family_ops(manifests), beacon_hash=sub["beacon_hash"],
                    training_fingerprint=sub["training_fingerprint"], recipe_fingerprint=sub["recipe_fingerprint"],
                    intake_ok=bool(sub["intake_ok"]), runs=tuple(manifests),
                    paired=self._paired_measurements(sub["zip_sha256"], profile_key, located),
                )
            )  # fmt: skip
        return records

    def located_manifests(
        self, zip_sha256: str, profile: str, profile_version: int
    ) -> list[tuple[RunManifest, Path]]:
        """The finished runs' manifests of one ZIP under one profile, with where each lies."""
        rows = self._conn.execute(
            """SELECT manifest_path, manifest_sha256 FROM runs WHERE zip_sha256 = ? AND profile = ?
                   AND profile_version = ? AND state = 'done' ORDER BY id""",
            (zip_sha256, profile, profile_version),
        ).fetchall()
        manifests = []
        for row in rows:
            path = self._resolve(row["manifest_path"])
            if _verified_bytes(path, row["manifest_sha256"]) is None:
                continue
            try:
                manifests.append((read_manifest(path), path))
            except InfrastructureFault as exc:
                logger.warning("%s", exc)
        return manifests

    def window_losses(self, manifest: RunManifest, manifest_path: Path) -> WindowLosses | None:
        """The run's per-window losses, if its manifest names them and the file is unchanged."""
        artifacts = manifest.artifacts
        if artifacts.window_losses is None or artifacts.window_losses_sha256 is None:
            return None
        data = _verified_bytes(manifest_path.parent / artifacts.window_losses, artifacts.window_losses_sha256)
        if data is None:
            return None
        try:
            payload = json.loads(data)
            return WindowLosses(
                manifest.run_id, tuple(int(b) for b in payload["window_bytes"]),
                tuple(float(x) for x in payload["nats"]),
            )  # fmt: skip
        except (ValueError, KeyError, TypeError) as exc:
            logger.warning("window losses of %s unreadable, skipped: %s", manifest.run_id, exc)
            return None

    def _paired_measurements(
        self, zip_sha256: str, profile_key: str, located: list[tuple[RunManifest, Path]]
    ) -> tuple[PairedMeasurement, ...]:
        """Per recipe mode: each run's own window losses plus every model measured on its windows."""
        rows = self._conn.execute(
            "SELECT * FROM paired_evals WHERE challenger_zip = ? AND profile_key = ? ORDER BY id",
            (zip_sha256, profile_key),
        ).fetchall()
        by_run: dict[str, list[Any]] = {}
        for row in rows:
            by_run.setdefault(row["challenger_run_id"], []).append(row)
        cells: dict[RecipeMode, list[PairedCell]] = {}
        for manifest, path in located:
            cell = self._cell(manifest, path, zip_sha256, by_run.get(manifest.run_id, []))
            if cell is not None:
                cells.setdefault(manifest.recipe_mode, []).append(cell)
        return tuple(
            PairedMeasurement(
                profile_key=profile_key, zip_sha256=zip_sha256, recipe_mode=mode, cells=tuple(found)
            )
            for mode, found in sorted(cells.items())
        )

    def _cell(self, manifest: RunManifest, path: Path, zip_sha256: str, rows: list[Any]) -> PairedCell | None:
        if manifest.status.state != "succeeded":
            return None
        own = self.window_losses(manifest, path)
        if own is None:
            return None
        evals = [ModelEval(zip_sha256=zip_sha256, recipe_mode=manifest.recipe_mode, run_id=manifest.run_id,
                           nats=own.nats)]  # fmt: skip
        for row in rows:
            if row["model_run_id"] == own.run_id:
                continue
            if row["state"] == "failed":  # the model's own fault: it forfeits (prism.scoring.paired)
                evals.append(ModelEval(zip_sha256=row["model_zip"], recipe_mode=row["model_mode"],
                                       run_id=row["model_run_id"], failure_code=row["failure_code"]))  # fmt: skip
                continue
            if tuple(json.loads(row["window_bytes"])) != own.window_bytes:
                logger.warning(
                    "paired eval %s on %s has other windows, skipped", row["model_run_id"], own.run_id
                )
                continue
            evals.append(ModelEval(zip_sha256=row["model_zip"], recipe_mode=row["model_mode"],
                                   run_id=row["model_run_id"], nats=tuple(float(x) for x in json.loads(row["nats"]))))  # fmt: skip
        return PairedCell(regime=manifest.regime.name, seed=manifest.cell_seed, run_id=manifest.run_id,
                          window_bytes=own.window_bytes, evals=tuple(evals))  # fmt: skip

    def _resolve(self, stored: str) -> Path:
        path = Path(stored)
        return path if path.is_absolute() else self.root / path


def _verified_bytes(path: Path, sha256: str) -> bytes | None:
    try:
        data = path.read_bytes()
    except OSError as exc:
        logger.warning("%s unreadable, skipped: %s", path, exc)
        return None
    if hashlib.sha256(data).hexdigest() != sha256:
        logger.warning("%s changed since it was recorded, skipped", path)
        return None
    return data


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
