"""``MANIFEST.json`` of a prepared data directory, and the fingerprint a run manifest records.

The manifest is written last (atomically), so its presence marks a complete directory. It holds
no timestamps or host paths: two validators preparing the same input get byte-identical
manifests, hence the same ``manifest_sha256`` in their run manifests.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, PrivateAttr, ValidationError

from prism.data.errors import ManifestInvalid, ManifestMissing
from prism.data.sources import SourceInfo
from prism.data.split import SPLIT_MODULUS, SPLIT_RULE, TEST_BUCKETS, TRAIN_BUCKETS, VAL_BUCKETS

MANIFEST_NAME = "MANIFEST.json"
DATA_FORMAT = "prism_data.v1"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ShardInfo(_Strict):
    name: str
    sha256: str
    tokens: int
    bytes: int
    docs: int


class SplitInfo(_Strict):
    tokens: int = 0
    bytes: int = 0
    docs: int = 0
    shards: list[ShardInfo] = []


class TokenizerInfo(_Strict):
    name: str
    fingerprint: str
    vocab_size: int
    eos_id: int
    token_dtype: Literal["uint16", "uint32"]


class SplitRuleInfo(_Strict):
    rule: str = SPLIT_RULE
    modulus: int = SPLIT_MODULUS
    ranges: dict[str, tuple[int, int]] = {"val": VAL_BUCKETS, "test": TEST_BUCKETS, "train": TRAIN_BUCKETS}


class PrepareLimits(_Strict):
    max_docs: int | None = None
    max_bytes: int | None = None
    skip_docs: int = 0


class DataManifest(_Strict):
    format: Literal["prism_data.v1"] = DATA_FORMAT
    shard_format_version: int
    source: SourceInfo
    limits: PrepareLimits
    split: SplitRuleInfo
    tokenizer: TokenizerInfo
    shard_tokens: int
    documents: int
    splits: dict[str, SplitInfo]

    _sha256: str | None = PrivateAttr(default=None)

    def to_json_bytes(self) -> bytes:
        return (json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True) + "\n").encode("utf-8")

    @property
    def sha256(self) -> str:
        """sha256 of the MANIFEST.json bytes (as read from disk, or as this object writes them)."""
        return self._sha256 or hashlib.sha256(self.to_json_bytes()).hexdigest()

    def split_info(self, split: str) -> SplitInfo:
        return self.splits.get(split, SplitInfo())


def write_data_manifest(manifest: DataManifest, directory: Path) -> Path:
    target = Path(directory) / MANIFEST_NAME
    tmp = target.with_suffix(".json.tmp")
    tmp.write_bytes(manifest.to_json_bytes())
    tmp.replace(target)
    return target


def read_data_manifest(directory: Path) -> DataManifest:
    """Parse ``DIR/MANIFEST.json`` (no shard checks: see ``verify_data_dir``)."""
    path = Path(directory) / MANIFEST_NAME
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ManifestMissing(
            f"{path} not found: prepare the directory first (prism data prepare --out {directory})"
        ) from None
    except OSError as exc:
        raise ManifestMissing(f"cannot read {path}: {exc}") from exc
    try:
        manifest = DataManifest.model_validate_json(raw)
    except (ValidationError, ValueError) as exc:
        raise ManifestInvalid(f"{path} is not a valid {DATA_FORMAT} manifest: {exc}") from exc
    manifest._sha256 = hashlib.sha256(raw).hexdigest()
    return manifest


def data_fingerprint(manifest: DataManifest, *, heldout_split: str = "val") -> dict[str, object]:
    """What a run manifest records about its data (fields of ``prism.manifest.DatasetRecord``).

    ``heldout_seed`` and ``heldout_windows`` belong to the evaluation, not the data, so the
    evaluator adds them.
    """

    def shard_refs(split: str) -> list[dict[str, object]]:
        return [
            {"name": s.name, "sha256": s.sha256, "tokens": s.tokens}
            for s in manifest.split_info(split).shards
        ]

    tok = manifest.tokenizer
    return {
        "source": manifest.source.label(),
        "is_fineweb_edu": manifest.source.is_fineweb_edu,
        "revision": manifest.source.revision,
        "config": manifest.source.config,
        "manifest_sha256": manifest.sha256,
        "split_rule": manifest.split.rule,
        "tokenizer": {
            "name": tok.name,
            "fingerprint": tok.fingerprint,
            "vocab_size": tok.vocab_size,
            "eos_id": tok.eos_id,
        },
        "train_shards": shard_refs("train"),
        "heldout_shards": shard_refs(heldout_split),
    }
