"""prepare -> shards + MANIFEST.json; determinism, split stability, verify refuses corruption."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from prism.data.errors import (
    BadMagic,
    DataError,
    HashMismatch,
    ManifestInvalid,
    ManifestMissing,
    ShardMissing,
    TokenizerMismatch,
    TruncatedShard,
)
from prism.data.loader import TrainLoader, heldout_windows
from prism.data.manifest import data_fingerprint, read_data_manifest
from prism.data.prepare import ensure_offline_corpus, prepare_dataset
from prism.data.shards import HEADER_SIZE, verify_data_dir
from prism.data.sources import Document
from prism.data.split import split_bucket, split_of
from prism.data.tokenizers import get_tokenizer
from prism.manifest import DatasetRecord

REPO = Path(__file__).resolve().parents[2]


class ListSource:
    """An in-memory source: lets a test control document order exactly."""

    def __init__(self, docs: list[Document]) -> None:
        from prism.data.sources import SourceInfo

        self.docs = docs
        self.info = SourceInfo(kind="local", name="memory")

    def documents(self, skip: int = 0):
        return iter(self.docs[skip:])


def _docs(rows) -> list[Document]:
    return [Document(id=str(r["id"]), text=str(r["text"])) for r in rows]


def _shard_hashes(directory: Path) -> dict[str, str]:
    manifest = read_data_manifest(directory)
    return {s.name: s.sha256 for info in manifest.splits.values() for s in info.shards}


def _split_documents(directory: Path, split: str) -> list[str]:
    """Decode a byte-tokenized split back into its documents (EOS precedes every document)."""
    manifest = read_data_manifest(directory)
    tok = get_tokenizer(manifest.tokenizer.name)
    stream = []
    for shard in manifest.splits[split].shards:
        raw = np.fromfile(directory / shard.name, dtype=np.uint8)[HEADER_SIZE:]
        stream.append(raw[: shard.tokens * 2].view(np.uint16))
    ids = np.concatenate(stream) if stream else np.array([], dtype=np.uint16)
    # Split on the EOS id, not on its text: documents may contain the literal "<|endoftext|>".
    starts = np.flatnonzero(ids == tok.eos_id)
    return [tok.decode(piece[1:]) for piece in np.split(ids, starts)[1:]]


def test_split_rule_is_the_documented_formula() -> None:
    import hashlib

    for doc_id in ("a", "<urn:uuid:1>", "日本"):
        bucket = int(hashlib.sha256(doc_id.encode()).hexdigest(), 16) % 1000
        assert split_bucket(doc_id) == bucket
        assert split_of(doc_id) == ("val" if bucket < 50 else "test" if bucket < 100 else "train")
    shares = np.array([split_bucket(f"doc-{i}") for i in range(20000)])
    assert 0.04 < np.mean(shares < 50) < 0.06 and 0.04 < np.mean((shares >= 50) & (shares < 100)) < 0.06


def test_manifest_accounts_for_every_document(byte_dir: Path, corpus_rows) -> None:
    manifest = verify_data_dir(byte_dir)
    assert manifest.documents == len(corpus_rows)
    for split in ("train", "val", "test"):
        rows = [r for r in corpus_rows if split_of(r["id"]) == split]
        info = manifest.split_info(split)
        assert info.docs == len(rows)
        assert info.bytes == sum(len(r["text"].encode()) for r in rows)
        assert info.tokens == info.bytes + info.docs  # byte tokenizer: one token per byte + one EOS per doc
        assert sum(s.tokens for s in info.shards) == info.tokens
        assert _split_documents(byte_dir, split) == [r["text"] for r in rows]
    assert len(manifest.splits["train"].shards) > 3  # several shards of 8192 tokens
    assert all(s.tokens == 8192 for s in manifest.splits["train"].shards[:-1])
    assert manifest.source.label() == "local:parquet" and manifest.source.files == ["rows.parquet"]


def test_same_input_gives_identical_shards_for_any_worker_count(tmp_path: Path, corpus_rows) -> None:
    docs = _docs(corpus_rows[:200])
    first = prepare_dataset(
        ListSource(docs), "gpt2", tmp_path / "one", shard_tokens=2048, workers=1, chunk_docs=16
    )
    second = prepare_dataset(
        ListSource(docs), "gpt2", tmp_path / "two", shard_tokens=2048, workers=2, chunk_docs=7
    )
    assert _shard_hashes(tmp_path / "one") == _shard_hashes(tmp_path / "two")
    assert (tmp_path / "one" / "MANIFEST.json").read_bytes() == (
        tmp_path / "two" / "MANIFEST.json"
    ).read_bytes()
    assert first.sha256 == second.sha256
    assert first.tokenizer.token_dtype == "uint16" and first.tokenizer.vocab_size == 50257


def test_split_is_stable_under_document_reordering(tmp_path: Path, corpus_rows) -> None:
    docs = _docs(corpus_rows[:150])
    prepare_dataset(ListSource(docs), "byte", tmp_path / "fwd", shard_tokens=4096)
    prepare_dataset(ListSource(docs[::-1]), "byte", tmp_path / "rev", shard_tokens=4096)
    for split in ("train", "val", "test"):
        assert sorted(_split_documents(tmp_path / "fwd", split)) == sorted(
            _split_documents(tmp_path / "rev", split)
        )


def test_data_fingerprint_fits_the_run_manifest(byte_dir: Path) -> None:
    manifest = read_data_manifest(byte_dir)
    fingerprint = data_fingerprint(manifest)
    record = DatasetRecord(**fingerprint, heldout_seed=4242, heldout_windows=8)
    import hashlib

    assert record.manifest_sha256 == hashlib.sha256((byte_dir / "MANIFEST.json").read_bytes()).hexdigest()
    assert not record.is_fineweb_edu and record.tokenizer.fingerprint == get_tokenizer("byte").fingerprint
    assert [s.name for s in record.heldout_shards] == [s.name for s in manifest.splits["val"].shards]


def test_refuses_to_overwrite_a_prepared_directory(byte_dir: Path, corpus_rows) -> None:
    with pytest.raises(DataError) as info:
        prepare_dataset(ListSource(_docs(corpus_rows[:5])), "byte", byte_dir)
    assert info.value.code == "data.out_exists"
    verify_data_dir(byte_dir)  # untouched


# ---------------------------------------------------------------------------------------------
# corruption: verify and the loader both refuse, each with its own error
# ---------------------------------------------------------------------------------------------


def _flip_payload_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[HEADER_SIZE + 10] ^= 0x01
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-3])


def _wrong_magic(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[0:8] = b"NOTPRISM"
    path.write_bytes(bytes(data))


def _wrong_fingerprint(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[52:84] = bytes.fromhex(get_tokenizer("gpt2").fingerprint)
    path.write_bytes(bytes(data))


def _delete(path: Path) -> None:
    path.unlink()


@pytest.mark.parametrize(
    "corrupt,error,code",
    [
        (_flip_payload_byte, HashMismatch, "data.hash_mismatch"),
        (_truncate, TruncatedShard, "data.truncated"),
        (_wrong_magic, BadMagic, "data.bad_magic"),
        (_wrong_fingerprint, TokenizerMismatch, "data.tokenizer_mismatch"),
        (_delete, ShardMissing, "data.shard_missing"),
    ],
)
def test_corrupt_shard_is_refused_by_verify_and_loader(
    tmp_path: Path, byte_dir: Path, corrupt, error, code
) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(byte_dir, broken)
    train_shard = broken / read_data_manifest(broken).splits["train"].shards[1].name
    val_shard = broken / read_data_manifest(broken).splits["val"].shards[0].name
    corrupt(train_shard)
    corrupt(val_shard)
    with pytest.raises(error) as info:
        verify_data_dir(broken)
    assert info.value.code == code and info.value.fault == "operator"
    with pytest.raises(error):
        TrainLoader(broken, batch_size=2, seq_len=16, seed=0)
    with pytest.raises(error):
        heldout_windows(broken, n_windows=2, seq_len=16, seed=0)


def test_loader_refuses_data_of_another_tokenizer(byte_dir: Path) -> None:
    with pytest.raises(TokenizerMismatch):
        TrainLoader(
            byte_dir,
            batch_size=2,
            seq_len=16,
            seed=0,
            expected_tokenizer_fingerprint=get_tokenizer("gpt2").fingerprint,
        )


def test_missing_or_invalid_manifest(tmp_path: Path, byte_dir: Path) -> None:
    with pytest.raises(ManifestMissing):
        verify_data_dir(tmp_path)
    shutil.copytree(byte_dir, tmp_path / "d")
    manifest = json.loads((tmp_path / "d" / "MANIFEST.json").read_text())
    manifest["surprise"] = 1
    (tmp_path / "d" / "MANIFEST.json").write_text(json.dumps(manifest))
    with pytest.raises(ManifestInvalid):
        verify_data_dir(tmp_path / "d")


# ---------------------------------------------------------------------------------------------
# CLI and the offline corpus
# ---------------------------------------------------------------------------------------------


def _prism(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "prism.cli", "data", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=REPO,
    )


def test_cli_prepare_verify_info(tmp_path: Path, make_rows, write_jsonl) -> None:
    src = write_jsonl(tmp_path / "rows.jsonl.gz", make_rows(60))
    out = tmp_path / "out"
    done = _prism(
        "prepare",
        "--source",
        "jsonl",
        "--path",
        str(src),
        "--tokenizer",
        "gpt2",
        "--out",
        str(out),
        "--workers",
        "1",
    )
    assert done.returncode == 0, done.stderr
    assert "train" in done.stdout and (out / "MANIFEST.json").exists()
    assert _prism("verify", str(out)).returncode == 0
    info = json.loads(_prism("info", str(out), "--json").stdout)
    assert info["fingerprint"]["source"] == "local:jsonl" and info["manifest"]["documents"] == 60
    _flip_payload_byte(out / read_data_manifest(out).splits["train"].shards[0].name)
    failed = _prism("verify", str(out))
    assert failed.returncode == 1 and "data.hash_mismatch" in failed.stderr
    unpinned = _prism(
        "prepare", "--source", "fineweb-edu", "--tokenizer", "gpt2", "--out", str(tmp_path / "x")
    )
    assert unpinned.returncode == 1 and "data.unpinned_revision" in unpinned.stderr


def test_offline_corpus_is_idempotent_and_labelled(tmp_path_factory: pytest.TempPathFactory) -> None:
    out = tmp_path_factory.mktemp("offline") / "corpus"
    manifest = ensure_offline_corpus(out, "byte", workers=2)
    assert manifest.source.kind == "offline" and not manifest.source.is_fineweb_edu
    assert data_fingerprint(manifest)["source"] == "offline:python-docstrings"
    total_bytes = sum(info.bytes for info in manifest.splits.values())
    assert total_bytes >= 2_000_000
    assert manifest.splits["val"].tokens >= 256 * 65  # enough for the local_cpu_smoke held-out set
    again = ensure_offline_corpus(out, "byte")
    assert again.sha256 == manifest.sha256
    with pytest.raises(TokenizerMismatch):
        ensure_offline_corpus(out, "gpt2")


def test_prepare_from_the_hub_records_the_pin_and_leaves_nothing_on_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_rows
) -> None:
    import datasets

    from prism.data.errors import HubStreamFailed
    from prism.data.sources import HubSource

    rows = make_rows(40)

    class Stream:
        def __init__(self, start: int = 0, fail_at: int | None = None) -> None:
            self.start, self.fail_at = start, fail_at

        def skip(self, n: int) -> Stream:
            return Stream(self.start + n, self.fail_at)

        def __iter__(self):
            for i in range(self.start, len(rows)):
                if i == self.fail_at:
                    raise ConnectionError("reset by peer")
                yield rows[i]

    monkeypatch.setattr(datasets, "load_dataset", lambda path, **kw: Stream())
    hub = HubSource(config="sample-10BT", revision="0123abcd", read_timeout_s=5, retry_backoff_s=0)
    manifest = prepare_dataset(hub, "gpt2", tmp_path / "ok", max_docs=30, skip_docs=5)
    assert manifest.documents == 30 and manifest.limits.skip_docs == 5
    fingerprint = data_fingerprint(manifest)
    assert fingerprint["source"] == "hf:HuggingFaceFW/fineweb-edu" and fingerprint["is_fineweb_edu"]
    assert (fingerprint["revision"], fingerprint["config"]) == ("0123abcd", "sample-10BT")

    monkeypatch.setattr(datasets, "load_dataset", lambda path, **kw: Stream(fail_at=12))
    with pytest.raises(HubStreamFailed, match="--skip-docs 12"):
        prepare_dataset(
            HubSource(revision="0123abcd", max_retries=1, retry_backoff_s=0), "gpt2", tmp_path / "bad"
        )
    assert not (tmp_path / "bad").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["ok"]  # no staging directory left behind
