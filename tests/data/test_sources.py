"""Sources: local files, the Hub stream through a fake `datasets` edge, the offline corpus."""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from prism.data.errors import HubStreamFailed, HubUnreachable, SourceError
from prism.data.sources import HubSource, LocalFileSource, OfflineDocstringSource, limit_documents

# ---------------------------------------------------------------------------------------------
# local parquet / jsonl
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,fmt", [("a.parquet", "parquet"), ("a.jsonl", "jsonl"), ("a.jsonl.gz", "jsonl")]
)
def test_local_files_yield_rows_in_order(
    tmp_path: Path, name: str, fmt: str, make_rows, write_parquet, write_jsonl
) -> None:
    rows = make_rows(25)
    path = (write_parquet if fmt == "parquet" else write_jsonl)(tmp_path / name, rows)
    source = LocalFileSource(path, fmt=fmt)
    docs = list(source.documents())
    assert [(d.id, d.text) for d in docs] == [(r["id"], r["text"]) for r in rows]
    assert list(source.documents(skip=20)) == docs[20:]
    assert source.info.kind == "local" and not source.info.is_fineweb_edu
    assert source.info.files == [name]


def test_directory_is_read_in_sorted_order_and_optional_fields_may_be_missing(
    tmp_path: Path, make_rows, write_parquet
) -> None:
    rows = make_rows(10)
    minimal = [{"text": r["text"]} for r in rows[5:]]  # no id, no url/score/...
    write_parquet(tmp_path / "b" / "part-1.parquet", minimal)
    write_parquet(tmp_path / "a.parquet", [{**r, "extra_field": [1, 2]} for r in rows[:5]])
    docs = list(LocalFileSource(tmp_path, fmt="parquet").documents())
    assert [d.text for d in docs] == [r["text"] for r in rows]
    # A row without an id gets a content-derived one, so the split stays a function of the data.
    assert docs[5].id == "sha256:" + hashlib.sha256(rows[5]["text"].encode()).hexdigest()


def test_missing_text_is_a_clear_error(tmp_path: Path, write_jsonl) -> None:
    pq.write_table(pa.table({"id": ["x"], "content": ["no text column"]}), tmp_path / "bad.parquet")
    with pytest.raises(SourceError, match="no 'text' column") as info:
        list(LocalFileSource(tmp_path / "bad.parquet", fmt="parquet").documents())
    assert info.value.code == "data.missing_text"
    write_jsonl(tmp_path / "bad.jsonl", [{"id": "1", "text": "ok"}, {"id": "2", "body": "x"}])
    with pytest.raises(SourceError, match=r"bad.jsonl:2: row has no 'text'"):
        list(LocalFileSource(tmp_path / "bad.jsonl", fmt="jsonl").documents())
    (tmp_path / "broken.jsonl").write_text('{"text": "fine"}\n{not json\n', encoding="utf-8")
    with pytest.raises(SourceError, match=r"broken.jsonl:2: invalid JSON"):
        list(LocalFileSource(tmp_path / "broken.jsonl", fmt="jsonl").documents())
    with pytest.raises(SourceError, match="does not exist"):
        LocalFileSource(tmp_path / "nowhere", fmt="parquet")


def test_limits_bound_documents_and_bytes(tmp_path: Path, make_rows, write_jsonl) -> None:
    docs = list(LocalFileSource(write_jsonl(tmp_path / "r.jsonl", make_rows(30)), fmt="jsonl").documents())
    assert list(limit_documents(docs, max_docs=7)) == docs[:7]
    first_len = len(docs[0].text.encode())
    # The bound is checked before each document: never a half document, at most one over.
    assert list(limit_documents(docs, max_bytes=first_len)) == docs[:1]
    assert list(limit_documents(docs, max_bytes=first_len + 1)) == docs[:2]


# ---------------------------------------------------------------------------------------------
# Hub streaming through a fake `datasets.load_dataset` (the network edge)
# ---------------------------------------------------------------------------------------------


class FakeStream:
    """Mimics a streaming IterableDataset: ``skip(n)`` and iteration, optionally failing."""

    def __init__(self, rows: list[dict], *, fail_at: int | None = None, start: int = 0) -> None:
        self.rows, self.fail_at, self.start = rows, fail_at, start

    def skip(self, n: int) -> FakeStream:
        return FakeStream(self.rows, fail_at=self.fail_at, start=self.start + n)

    def __iter__(self):
        for index in range(self.start, len(self.rows)):
            if self.fail_at is not None and index == self.fail_at:
                raise ConnectionError(f"connection reset while reading row {index}")
            yield self.rows[index]


def _hub(**kwargs) -> HubSource:
    defaults = dict(revision="abc123", read_timeout_s=5.0, max_retries=2, retry_backoff_s=0.0)
    return HubSource(**{**defaults, **kwargs})


def test_hub_stream_passes_the_pinned_request_and_resumes(monkeypatch: pytest.MonkeyPatch, make_rows) -> None:
    rows = make_rows(12)
    calls: list[dict] = []

    def fake_load_dataset(path, **kwargs):
        calls.append({"path": path, **kwargs})
        return FakeStream(rows)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    source = _hub(config="sample-10BT")
    assert [d.id for d in source.documents(skip=4)] == [r["id"] for r in rows[4:]]
    assert calls == [
        {
            "path": "HuggingFaceFW/fineweb-edu",
            "name": "sample-10BT",
            "split": "train",
            "streaming": True,
            "revision": "abc123",
        }
    ]
    assert source.info.is_fineweb_edu and source.info.label() == "hf:HuggingFaceFW/fineweb-edu"


def test_hub_failure_mid_stream_reopens_at_the_next_document(
    monkeypatch: pytest.MonkeyPatch, make_rows
) -> None:
    rows = make_rows(10)
    opened = []

    def fake_load_dataset(path, **kwargs):
        opened.append(len(opened))
        # The first connection dies at row 6; the reconnection is healthy.
        return FakeStream(rows, fail_at=6 if len(opened) == 1 else None)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    docs = list(_hub().documents())
    assert [d.id for d in docs] == [r["id"] for r in rows]  # every document exactly once
    assert len(opened) == 2


def test_hub_persistent_mid_stream_failure_says_where_to_resume(
    monkeypatch: pytest.MonkeyPatch, make_rows
) -> None:
    rows = make_rows(10)
    monkeypatch.setattr(datasets, "load_dataset", lambda path, **kw: FakeStream(rows, fail_at=3))
    seen = []
    with pytest.raises(HubStreamFailed, match="--skip-docs 3") as info:
        for doc in _hub(max_retries=2).documents():
            seen.append(doc.id)
    assert seen == [r["id"] for r in rows[:3]]
    assert info.value.fault == "infrastructure" and info.value.code == "data.hub_stream_failed"


def test_unreachable_hub_fails_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    attempts = []

    def unreachable(path, **kwargs):
        attempts.append(1)
        raise ConnectionError("Failed to resolve 'huggingface.co'")

    monkeypatch.setattr(datasets, "load_dataset", unreachable)
    with pytest.raises(HubUnreachable, match=r"huggingface\.co") as info:
        list(_hub(max_retries=1).documents())
    assert len(attempts) == 2 and info.value.code == "data.hub_unreachable"


def test_hanging_hub_times_out_instead_of_hanging(monkeypatch: pytest.MonkeyPatch) -> None:
    release = threading.Event()

    def hangs(path, **kwargs):
        release.wait(30)  # a connection that never answers
        raise ConnectionError("gave up")

    monkeypatch.setattr(datasets, "load_dataset", hangs)
    started = time.monotonic()
    try:
        with pytest.raises(HubUnreachable, match=r"no data from HuggingFaceFW/fineweb-edu .* for 0.5s"):
            list(_hub(read_timeout_s=0.5).documents())
    finally:
        release.set()
    assert time.monotonic() - started < 5


def test_hub_offline_mode_fails_immediately(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: pytest.fail("must not be called"))
    with pytest.raises(HubUnreachable, match="HF_HUB_OFFLINE"):
        list(_hub().documents())


# ---------------------------------------------------------------------------------------------
# offline docstring corpus
# ---------------------------------------------------------------------------------------------

MODULE = '''"""Tools for pets."""

class Dog:
    """A good dog."""

    def bark(self):
        """Say woof."""

        def inner():
            """Nested helper."""

if True:
    def fetch():
        """Fetch the ball."""

def undocumented():
    return 1
'''


def test_offline_corpus_parses_docstrings_without_importing(tmp_path: Path) -> None:
    (tmp_path / "pets").mkdir()
    (tmp_path / "pets" / "__init__.py").write_text(
        MODULE + "raise SystemExit('imported!')\n", encoding="utf-8"
    )
    (tmp_path / "broken.py").write_text("def (:\n", encoding="utf-8")
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_x.py").write_text('"""Skipped."""\n', encoding="utf-8")
    source = OfflineDocstringSource(roots=[tmp_path])
    docs = list(source.documents())
    names = [d.text.split("\n", 1)[0] for d in docs]
    assert names == ["pets", "pets.Dog", "pets.Dog.bark", "pets.Dog.bark.inner", "pets.fetch"]
    assert docs[1].text == "pets.Dog\n\nA good dog.\n"
    assert docs[1].id == hashlib.sha256(b"pets:Dog").hexdigest()
    assert not source.info.is_fineweb_edu and source.info.kind == "offline"
    assert [d.id for d in OfflineDocstringSource(roots=[tmp_path], workers=2).documents()] == [
        d.id for d in docs
    ]


def test_jsonl_lone_surrogates_become_valid_text(tmp_path: Path) -> None:
    (tmp_path / "s.jsonl").write_text('{"id": "1", "text": "a\\ud800b"}\n', encoding="utf-8")
    docs = list(LocalFileSource(tmp_path / "s.jsonl", fmt="jsonl").documents())
    assert docs[0].text == "a?b"
