"""Fixtures for the data-stage tests: small FineWeb-shaped corpora written to tmp dirs."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

SENTENCES = [
    "The mitochondria is the powerhouse of the cell.",
    "Photosynthesis converts light energy into chemical energy.",
    "Le théorème de Pythagore relie les côtés d'un triangle rectangle.",
    "Die Quantenmechanik beschreibt das Verhalten sehr kleiner Teilchen.",
    "水は摂氏百度で沸騰します。",
    "Вода кипит при ста градусах Цельсия.",
    "El agua hierve a cien grados centígrados.",
    "Numbers like 3.14159 and 2,718 appear in math class.",
    "Some rows contain the literal marker <|endoftext|> inside the text.",
    "Emoji 🙂 and accents: naïve café, façade, coöperate.",
]


def _make_rows(n_docs: int, *, seed: int = 7) -> list[dict[str, object]]:
    """FineWeb-Edu-shaped rows: id, text and a few optional fields."""
    rng = random.Random(seed)
    rows = []
    for i in range(n_docs):
        text = " ".join(rng.choice(SENTENCES) for _ in range(rng.randint(3, 12)))
        rows.append(
            {
                "id": f"<urn:uuid:doc-{i:05d}>",
                "text": text,
                "dump": "CC-MAIN-2024-10",
                "url": f"https://example.org/{i}",
                "language": "en",
                "score": rng.random() * 5,
                "int_score": rng.randint(0, 5),
            }
        )
    return rows


def _write_parquet(path: Path, rows: list[dict[str, object]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def _write_jsonl(path: Path, rows: list[dict[str, object]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode("utf-8")
    if path.name.endswith(".gz"):
        payload = gzip.compress(payload, mtime=0)
    path.write_bytes(payload)
    return path


@pytest.fixture(scope="session")
def make_rows():
    return _make_rows


@pytest.fixture(scope="session")
def write_parquet():
    return _write_parquet


@pytest.fixture(scope="session")
def write_jsonl():
    return _write_jsonl


@pytest.fixture(scope="module")
def corpus_rows() -> list[dict[str, object]]:
    return _make_rows(400)


@pytest.fixture(scope="module")
def byte_dir(tmp_path_factory: pytest.TempPathFactory, corpus_rows: list[dict[str, object]]) -> Path:
    """The corpus prepared with the byte tokenizer into small shards (several per split)."""
    from prism.data.prepare import prepare_dataset
    from prism.data.sources import LocalFileSource

    root = tmp_path_factory.mktemp("byte_data")
    source = LocalFileSource(_write_parquet(root / "in" / "rows.parquet", corpus_rows), fmt="parquet")
    prepare_dataset(source, "byte", root / "out", shard_tokens=8192)
    return root / "out"
