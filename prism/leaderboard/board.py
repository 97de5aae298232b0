"""What the public leaderboard shows, as plain JSON-able data (the HTML pages render the same data).

Numbers come from the validator's stored standings (``prism.store.Store.record_standings``) and
from run manifests the validator wrote and recorded. Two columns are shown only where the store
or the manifests carry them (``None`` otherwise, rendered as ``-``):

* the paired comparisons of newer scoring rules: ``PAIRED_FAMILY_FIELDS`` on a family's
  standings row (the difference that decided the lead, and the canonical version's, each with
  its standard error; the improver holding the canonical version) and ``stderr_bpb`` /
  ``pending`` on a variant's;
* the compute ratio (training compute the host measured, over this validator's calibration):
  the first of ``COMPUTE_RATIO_FIELDS`` on the standings row, else the mean ``compute.ratio``
  of the canonical version's reference-recipe manifests when every one of them records it.
"""

from __future__ import annotations

import hashlib
import logging
import statistics
from collections.abc import Iterable, Mapping
from typing import Any

from prism.errors import InfrastructureFault, PrismError
from prism.leaderboard.bundle import FamilyCode, build_family_zip
from prism.leaderboard.reader import RunEntry, StoreReader
from prism.manifest import RunManifest

logger = logging.getLogger(__name__)

PAIRED_FAMILY_FIELDS = ("lead_difference_bpb", "lead_stderr_bpb", "canonical_difference_bpb",
                        "canonical_stderr_bpb", "canonical_hotkey")  # fmt: skip
COMPUTE_RATIO_FIELDS = ("compute_ratio",)
API = "/api/v1"


def first_present(row: Mapping[str, Any], names: Iterable[str]) -> Any:
    """The first non-null value among ``names`` in a plain row dict (columns other PRISMs may add)."""
    return next((row[name] for name in names if row.get(name) is not None), None)


class Board:
    """Leaderboard views over a :class:`StoreReader`, with caches keyed by content hashes."""

    def __init__(self, reader: StoreReader) -> None:
        self.reader = reader
        self._manifests: dict[tuple[str, str, int, int], RunManifest] = {}
        self._bundles: dict[tuple[str, str, str], tuple[bytes, FamilyCode]] = {}

    # --- manifests and bundles ------------------------------------------------------------------

    def manifest(self, entry: RunEntry) -> RunManifest:
        """Parsed once per file version: a file touched since (size or mtime) is read and re-hashed."""
        try:
            stat = entry.manifest_path.stat()
        except OSError as exc:
            raise InfrastructureFault(
                f"manifest of {entry.run_id} is gone: {exc}", code="serve.file_missing"
            ) from exc
        key = (str(entry.manifest_path), entry.manifest_sha256, stat.st_mtime_ns, stat.st_size)
        if key not in self._manifests:
            self._manifests[key] = self.reader.manifest(entry)
        return self._manifests[key]

    def _manifests_of(self, zip_sha256: str) -> list[tuple[RunEntry, RunManifest]]:
        out = []
        for entry in self.reader.runs(zip_sha256):
            try:
                out.append((entry, self.manifest(entry)))
            except PrismError as exc:
                logger.warning("run %s skipped: %s", entry.run_id, exc)
        return out

    def family_code(self, family: Mapping[str, Any]) -> tuple[bytes, FamilyCode]:
        """The bundle of the family's canonical version (built once per canonical ZIP)."""
        canonical = self._canonical_version(family)
        key = (family["family_id"], canonical["version_id"], canonical["zip_sha256"])
        if key not in self._bundles:
            try:
                self._bundles[key] = build_family_zip(
                    self.reader.blob(canonical["zip_sha256"]),
                    family_id=family["family_id"],
                    canonical_version_id=canonical["version_id"],
                    owner_hotkey=family["owner_hotkey"],
                )
            except PrismError as exc:
                raise InfrastructureFault(
                    f"the canonical code of {family['family_id']} cannot be bundled: {exc}",
                    code="serve.bundle_failed",
                ) from exc
        return self._bundles[key]

    def code_for(self, family_id: str) -> tuple[bytes, FamilyCode] | None:
        family = next((f for f in self.reader.families() if f["family_id"] == family_id), None)
        return None if family is None else self.family_code(family)

    def _canonical_version(self, family: Mapping[str, Any]) -> dict[str, Any]:
        versions = self.reader.versions(family["family_id"])
        canonical = [
            v for v in versions if v["canonical"] and v["version_id"] == family["canonical_version_id"]
        ]
        if not canonical:
            raise InfrastructureFault(
                f"family {family['family_id']} has no stored canonical version", code="serve.no_canonical"
            )
        return canonical[0]

    # --- views ----------------------------------------------------------------------------------

    def family_rows(self) -> list[dict[str, Any]]:
        rows = []
        for rank, family in enumerate(self.reader.families(), start=1):
            rows.append({**self._family_summary(family), "rank": rank})
        return rows

    def _family_summary(self, family: Mapping[str, Any]) -> dict[str, Any]:
        fid = family["family_id"]
        summary = {
            "family_id": fid, "owner_hotkey": family["owner_hotkey"],
            "owner_zip_sha256": family["owner_zip_sha256"], "founded_block": family["founded_block"],
            "canonical_version_id": family["canonical_version_id"], "heldout_bpb": family["heldout_bpb"],
            "probe_bpb": family["probe_bpb"], **{name: family.get(name) for name in PAIRED_FAMILY_FIELDS},
            "compute_ratio": first_present(family, COMPUTE_RATIO_FIELDS), "runs": family["runs"],
            "leader": bool(family["leader"]), "code": self._code_info(family),
        }  # fmt: skip
        if summary["compute_ratio"] is None:
            summary["compute_ratio"] = self._compute_ratio(family)
        return summary

    def _code_info(self, family: Mapping[str, Any]) -> dict[str, Any] | None:
        try:
            data, code = self.family_code(family)
        except PrismError as exc:
            logger.warning("%s", exc)
            return None
        return {
            "url": f"{API}/families/{family['family_id']}/code.zip",
            "sha256": hashlib.sha256(data).hexdigest(),
            "bytes": len(data),
            "source_zip_sha256": code.source_zip_sha256,
            "files": code.code_files(),
        }

    def _compute_ratio(self, family: Mapping[str, Any]) -> float | None:
        """Mean ``compute.ratio`` of the canonical version's reference runs, if every one records it."""
        try:
            zip_sha256 = self._canonical_version(family)["zip_sha256"]
        except PrismError:
            return None
        ratios = []
        for _, manifest in self._manifests_of(zip_sha256):
            if manifest.recipe_mode != "reference":
                continue
            value = (manifest.model_dump().get("compute") or {}).get("ratio")
            if value is None:
                return None
            ratios.append(float(value))
        return statistics.fmean(ratios) if ratios else None

    def variant_rows(self, family_id: str | None = None) -> list[dict[str, Any]]:
        return [
            {**row, "qualifies": bool(row["qualifies"]), "best": bool(row["best"]),
             "stderr_bpb": row.get("stderr_bpb"), "pending": bool(row.get("pending"))}
            for row in self.reader.variants(family_id)
        ]  # fmt: skip

    def weights(self, limit: int) -> list[dict[str, Any]]:
        hotkeys = self.reader.hotkeys_by_uid()
        return [
            {"block": row["block"], "profile_key": row.get("profile_key", ""),
             "rules_version": row.get("rules_version", 0), "created_at": row["created_at"],
             "weights": [{"uid": int(uid), "hotkey": hotkeys.get(int(uid)), "weight": float(w)}
                         for uid, w in sorted(row["weights"].items(), key=lambda kv: int(kv[0]))]}
            for row in self.reader.weight_history(limit)
        ]  # fmt: skip

    def leaderboard(self) -> dict[str, Any]:
        latest = self.weights(1)
        return {
            "families": self.family_rows(),
            "variants": self.variant_rows(),
            "weights": latest[0] if latest else None,
            "events": self.reader.events(),
            "submissions": self.reader.submission_counts(),
            "runs": self.reader.run_counts(),
            "schema_version": self.reader.schema_version,
        }

    def family(self, family_id: str) -> dict[str, Any] | None:
        family = next((f for f in self.reader.families() if f["family_id"] == family_id), None)
        if family is None:
            return None
        versions = self.reader.versions(family_id)
        variants = self.variant_rows(family_id)
        shas = dict.fromkeys([*(v["zip_sha256"] for v in versions), *(v["zip_sha256"] for v in variants)])
        runs = [run for sha in shas for run in self.run_rows(sha)]
        return {
            "family": self._family_summary(family),
            "versions": [{**v, "canonical": bool(v["canonical"])} for v in versions],
            "variants": variants,
            "runs": runs,
        }

    def run_rows(self, zip_sha256: str | None = None) -> list[dict[str, Any]]:
        rows = []
        for entry, manifest in self._manifests_of(zip_sha256) if zip_sha256 else self._all_manifests():
            rows.append(run_summary(entry, manifest))
        return rows

    def _all_manifests(self) -> list[tuple[RunEntry, RunManifest]]:
        shas = dict.fromkeys(entry.zip_sha256 for entry in self.reader.runs())
        return [pair for sha in shas for pair in self._manifests_of(sha)]

    def run(self, run_id: str) -> tuple[RunEntry, RunManifest] | None:
        entry = self.reader.run(run_id)
        return None if entry is None else (entry, self.manifest(entry))


def run_summary(entry: RunEntry, manifest: RunManifest) -> dict[str, Any]:
    failure = manifest.status.failure
    return {
        "run_id": entry.run_id, "zip_sha256": entry.zip_sha256, "family_id": manifest.submission.family_id,
        "version_id": manifest.submission.version_id, "kind": manifest.submission.kind,
        "recipe_mode": manifest.recipe_mode, "regime": manifest.regime.name, "seed": manifest.seed,
        "profile_key": manifest.comparability.profile_key, "state": manifest.status.state,
        "failure_code": failure.code if failure else None, "heldout_bpb": manifest.metrics.heldout_bpb,
        "probe_bpb": manifest.metrics.probe_bpb, "score_eligible": manifest.validation.score_eligible,
        "reasons": list(manifest.validation.reasons), "plots": plot_names(manifest),
        "manifest_url": f"{API}/runs/{entry.run_id}/manifest.json",
    }  # fmt: skip


def plot_names(manifest: RunManifest) -> dict[str, str]:
    """Artifact field -> file for every loss-curve image the manifest names (SVG, and PNG where written)."""
    return {
        name: value
        for name, value in manifest.artifacts.model_dump().items()
        if isinstance(value, str) and name.startswith("plot") and value.lower().endswith((".svg", ".png"))
    }
