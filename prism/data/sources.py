"""Document sources: FineWeb-Edu from the Hub, local FineWeb-shaped files, an offline corpus.

Every source yields ``Document(id, text)`` in a deterministic order and describes itself with a
``SourceInfo`` that ends up in MANIFEST.json. ``documents(skip=n)`` resumes after the first ``n``
documents, so an interrupted preparation can continue where it stopped.
"""

from __future__ import annotations

import ast
import gzip
import hashlib
import itertools
import json
import logging
import os
import platform
import queue
import sysconfig
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict

from prism.data.errors import HubStreamFailed, HubUnreachable, SourceError

logger = logging.getLogger(__name__)

FINEWEB_EDU = "HuggingFaceFW/fineweb-edu"
DEFAULT_FINEWEB_CONFIG = "sample-10BT"


@dataclass(frozen=True, slots=True)
class Document:
    id: str
    text: str


class SourceInfo(BaseModel):
    """Provenance recorded in MANIFEST.json (no host paths: two validators must agree on it)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["hf", "local", "offline"]
    name: str
    revision: str | None = None
    config: str | None = None
    is_fineweb_edu: bool = False
    files: list[str] = []

    def label(self) -> str:
        """The short form the run manifest records, e.g. ``hf:HuggingFaceFW/fineweb-edu``."""
        return f"{self.kind}:{self.name}"


class DocumentSource(Protocol):
    info: SourceInfo

    def documents(self, skip: int = 0) -> Iterator[Document]: ...


def limit_documents(
    docs: Iterable[Document], *, max_docs: int | None = None, max_bytes: int | None = None
) -> Iterator[Document]:
    """Stop after ``max_docs`` documents or once ``max_bytes`` UTF-8 bytes have been yielded.

    The byte bound is checked before each document, so the last document may cross it: the
    bound never cuts a document in half (a cut would make the corpus depend on the bound).
    """
    total_bytes = 0
    for count, doc in enumerate(docs):
        if max_docs is not None and count >= max_docs:
            return
        if max_bytes is not None and total_bytes >= max_bytes:
            return
        total_bytes += len(doc.text.encode("utf-8"))
        yield doc


def _document_from_record(record: dict[str, Any], where: str) -> Document:
    """Build a Document from a FineWeb-Edu-shaped row; only ``text`` is required."""
    if "text" not in record:
        raise SourceError(
            f"{where}: row has no 'text' field (fields: {sorted(record)})", code="data.missing_text"
        )
    text = record["text"]
    if not isinstance(text, str):
        raise SourceError(
            f"{where}: 'text' must be a string, got {type(text).__name__}", code="data.missing_text"
        )
    doc_id = record.get("id")
    if doc_id is None or doc_id == "":
        # Content-derived ids keep the split a function of the data, independent of row order.
        doc_id = "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()
    return Document(id=str(doc_id), text=text)


def _valid_utf8(doc: Document, where: str) -> Document:
    """JSON may escape lone surrogates ("\\ud800"), which are not UTF-8; replace each with "?".

    Parquet/Arrow strings are valid UTF-8 by construction, so only jsonl needs this.
    """
    try:
        doc.text.encode("utf-8")
    except UnicodeEncodeError:
        logger.warning("%s: text holds lone surrogates; replaced with '?'", where)
        return Document(id=doc.id, text=doc.text.encode("utf-8", errors="replace").decode("utf-8"))
    return doc


# ---------------------------------------------------------------------------------------------
# Local parquet / jsonl(.gz) files
# ---------------------------------------------------------------------------------------------

LocalFormat = Literal["parquet", "jsonl"]
_EXTENSIONS: dict[str, tuple[str, ...]] = {
    "parquet": (".parquet",),
    "jsonl": (".jsonl", ".jsonl.gz", ".json.gz"),
}


class LocalFileSource:
    """FineWeb-Edu-shaped parquet or jsonl(.gz) files: a file or a directory (sorted, recursive)."""

    def __init__(
        self,
        path: Path,
        *,
        fmt: LocalFormat,
        is_fineweb_edu: bool = False,
        config: str | None = None,
        revision: str | None = None,
    ) -> None:
        self.path = Path(path)
        self.fmt = fmt
        self.files = self._list_files()
        root = self.path if self.path.is_dir() else self.path.parent
        self.info = SourceInfo(
            kind="local",
            name=fmt,
            revision=revision,
            config=config,
            is_fineweb_edu=is_fineweb_edu,
            files=[f.relative_to(root).as_posix() for f in self.files],
        )

    def _list_files(self) -> list[Path]:
        if not self.path.exists():
            raise SourceError(f"{self.path} does not exist", code="data.source_missing")
        if self.path.is_file():
            return [self.path]
        files = sorted(
            (p for p in self.path.rglob("*") if p.is_file() and p.name.endswith(_EXTENSIONS[self.fmt])),
            key=lambda p: p.relative_to(self.path).as_posix(),
        )
        if not files:
            raise SourceError(
                f"no {'/'.join(_EXTENSIONS[self.fmt])} files under {self.path}", code="data.source_missing"
            )
        return files

    def documents(self, skip: int = 0) -> Iterator[Document]:
        reader = self._parquet_documents if self.fmt == "parquet" else self._jsonl_documents
        all_docs = itertools.chain.from_iterable(reader(f) for f in self.files)
        return itertools.islice(all_docs, skip, None)

    @staticmethod
    def _parquet_documents(path: Path) -> Iterator[Document]:
        import pyarrow.parquet as pq

        try:
            parquet = pq.ParquetFile(path)
        except (OSError, ValueError) as exc:
            raise SourceError(
                f"{path}: not a readable parquet file: {exc}", code="data.source_unreadable"
            ) from exc
        names = set(parquet.schema_arrow.names)
        if "text" not in names:
            raise SourceError(
                f"{path}: no 'text' column (columns: {sorted(names)})", code="data.missing_text"
            )
        # Only read what we use: FineWeb rows carry url/dump/score columns we do not need.
        columns = [c for c in ("id", "text") if c in names]
        for row_group, batch in enumerate(parquet.iter_batches(batch_size=1024, columns=columns)):
            for row in batch.to_pylist():
                yield _document_from_record(row, f"{path} (batch {row_group})")

    @staticmethod
    def _jsonl_documents(path: Path) -> Iterator[Document]:
        opener = gzip.open if path.name.endswith(".gz") else open
        try:
            with opener(path, "rt", encoding="utf-8") as handle:
                for line_no, line in enumerate(handle, start=1):
                    if not line.strip():
                        continue
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise SourceError(
                            f"{path}:{line_no}: invalid JSON: {exc}", code="data.source_unreadable"
                        ) from exc
                    if not isinstance(record, dict):
                        raise SourceError(
                            f"{path}:{line_no}: expected a JSON object", code="data.source_unreadable"
                        )
                    doc = _document_from_record(record, f"{path}:{line_no}")
                    yield _valid_utf8(doc, f"{path}:{line_no}")
        except (OSError, EOFError, UnicodeDecodeError) as exc:
            raise SourceError(f"{path}: cannot read: {exc}", code="data.source_unreadable") from exc


# ---------------------------------------------------------------------------------------------
# FineWeb-Edu streamed from the Hugging Face Hub
# ---------------------------------------------------------------------------------------------

_END = object()


class HubSource:
    """``datasets`` streaming of a Hub dataset, bounded in time, resumable, retried mid-stream.

    The stream runs in a daemon thread that feeds a bounded queue; the consumer waits at most
    ``read_timeout_s`` for each document, so a dead network fails with ``HubUnreachable``
    instead of hanging. A mid-stream error re-opens the stream at the next document index
    (``IterableDataset.skip``) up to ``max_retries`` times in a row.
    """

    def __init__(
        self,
        *,
        dataset: str = FINEWEB_EDU,
        config: str | None = DEFAULT_FINEWEB_CONFIG,
        revision: str | None,
        split: str = "train",
        read_timeout_s: float = 60.0,
        max_retries: int = 3,
        retry_backoff_s: float = 2.0,
    ) -> None:
        self.dataset = dataset
        self.config = config
        self.revision = revision
        self.split = split
        self.read_timeout_s = read_timeout_s
        self.max_retries = max_retries
        self.retry_backoff_s = retry_backoff_s
        self.info = SourceInfo(
            kind="hf", name=dataset, revision=revision, config=config, is_fineweb_edu=dataset == FINEWEB_EDU
        )

    def _open_stream(self, skip: int) -> Iterator[dict[str, Any]]:
        """Open the streaming dataset at document ``skip``; the only place that touches the network."""
        if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
            raise HubUnreachable(
                f"HF_HUB_OFFLINE is set: cannot stream {self.dataset}; unset it or use --source parquet"
            )
        # Bound every HTTP call huggingface_hub makes by our own timeout (env read at call time).
        timeout = str(max(1, round(self.read_timeout_s)))
        os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", timeout)
        os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", timeout)
        import datasets

        stream = datasets.load_dataset(
            self.dataset, name=self.config, split=self.split, streaming=True, revision=self.revision
        )
        if skip:
            stream = stream.skip(skip)
        return iter(stream)

    def _pump(self, skip: int, out: queue.Queue, stop: threading.Event) -> None:
        """Producer thread: push rows (or the exception that ended the stream) into ``out``."""
        try:
            for row in self._open_stream(skip):
                while not stop.is_set():
                    try:
                        out.put(row, timeout=0.5)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            out.put(_END)
        except BaseException as exc:  # handed to the consumer, which decides what it means
            out.put(exc)

    def documents(self, skip: int = 0) -> Iterator[Document]:
        position = skip
        failures = 0
        while True:
            out: queue.Queue = queue.Queue(maxsize=1024)
            stop = threading.Event()
            thread = threading.Thread(target=self._pump, args=(position, out, stop), daemon=True)
            thread.start()
            try:
                while True:
                    try:
                        item = out.get(timeout=self.read_timeout_s)
                    except queue.Empty:
                        raise HubUnreachable(
                            f"no data from {self.dataset} ({self.config}, revision {self.revision}) for "
                            f"{self.read_timeout_s:g}s at document {position}; is the Hub reachable? "
                            "Prepare from local parquet instead: prism data prepare --source parquet --path ..."
                        ) from None
                    if item is _END:
                        return
                    if isinstance(item, HubUnreachable):
                        raise item
                    if isinstance(item, BaseException):
                        break  # the stream failed: retry below from `position`
                    doc = _document_from_record(item, f"{self.dataset} document {position}")
                    position += 1
                    failures = 0
                    yield doc
            finally:
                stop.set()
            failures += 1
            if failures > self.max_retries:
                error_cls = HubUnreachable if position == skip else HubStreamFailed
                raise error_cls(
                    f"streaming {self.dataset} ({self.config}, revision {self.revision}) failed "
                    f"{failures} times in a row at document {position}: {type(item).__name__}: {item}. "
                    f"Documents from {position} on can be read later with --skip-docs {position}."
                ) from item
            logger.warning(
                "stream of %s failed at document %d (%s: %s); retry %d/%d",
                self.dataset,
                position,
                type(item).__name__,
                item,
                failures,
                self.max_retries,
            )
            time.sleep(self.retry_backoff_s * failures)


# ---------------------------------------------------------------------------------------------
# Offline corpus: docstrings of the installed Python standard library
# ---------------------------------------------------------------------------------------------

_SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}
_NESTED_BODIES = ("body", "orelse", "finalbody", "handlers")


def _module_name(relative: Path) -> str:
    parts = list(relative.with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _docstrings(tree: ast.Module) -> Iterator[tuple[str, str]]:
    """(qualname, docstring) for the module and every class/function, in source order.

    Walks statement bodies only (including if/try/with blocks), never expressions: definitions
    cannot hide inside expressions and skipping them keeps the walk cheap.
    """
    doc = ast.get_docstring(tree)
    if doc:
        yield "<module>", doc

    def walk(statements: list[ast.stmt], prefix: str) -> Iterator[tuple[str, str]]:
        for node in statements:
            if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                qualname = f"{prefix}{node.name}"
                node_doc = ast.get_docstring(node)
                if node_doc:
                    yield qualname, node_doc
                yield from walk(node.body, qualname + ".")
            else:
                for field in _NESTED_BODIES:
                    children = getattr(node, field, None)
                    if isinstance(children, list) and children and isinstance(children[0], ast.stmt):
                        yield from walk(children, prefix)
                    elif field == "handlers" and children:
                        for handler in children:
                            yield from walk(handler.body, prefix)

    yield from walk(tree.body, "")


def _topic_documents(tree: ast.Module) -> Iterator[tuple[str, str]]:
    """The help topics of ``pydoc_data/topics.py`` (a dict literal of long English texts)."""
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict):
            for key, value in zip(node.value.keys, node.value.values, strict=True):
                if (
                    isinstance(key, ast.Constant)
                    and isinstance(value, ast.Constant)
                    and isinstance(value.value, str)
                ):
                    yield f"topics[{key.value}]", value.value


class OfflineDocstringSource:
    """Docstrings of the installed standard library, parsed with ``ast`` (never imported).

    Files are visited in sorted order of their path relative to the library root, so the corpus
    is a deterministic function of the Python installation (recorded as the revision). One
    document per module / class / function docstring (plus pydoc's help topics); its id is
    ``sha256("<module>:<qualname>")``. Not FineWeb-Edu, and the manifest says so.
    """

    def __init__(self, *, roots: list[Path] | None = None, workers: int = 1) -> None:
        self.roots = roots or [Path(sysconfig.get_paths()["stdlib"])]
        self.workers = workers
        self.info = SourceInfo(
            kind="offline",
            name="python-docstrings",
            revision=f"{platform.python_implementation()}-{platform.python_version()}",
            config=None,
            is_fineweb_edu=False,
        )

    def _files(self) -> Iterator[tuple[Path, Path]]:
        for root in self.roots:
            found: list[Path] = []
            # os.walk with pruning: site-packages alone can hold 100k files we never read.
            for dirpath, dirnames, filenames in os.walk(root):
                dirnames[:] = [d for d in dirnames if d not in _SKIP_DIRS]
                found.extend(Path(dirpath) / name for name in filenames if name.endswith(".py"))
            for path in sorted(found, key=lambda p: p.relative_to(root).as_posix()):
                yield root, path

    def _all_documents(self) -> Iterator[Document]:
        files = [(str(root), str(path)) for root, path in self._files()]
        if self.workers <= 1:
            per_file: Iterable[list[tuple[str, str]]] = map(_file_documents, files)
            yield from (Document(id=i, text=t) for docs in per_file for i, t in docs)
            return
        # Parsing dominates (ast.parse runs at a few MB/s); the ordered imap keeps file order.
        import multiprocessing

        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        with multiprocessing.get_context(method).Pool(self.workers) as pool:
            for docs in pool.imap(_file_documents, files, chunksize=8):
                yield from (Document(id=i, text=t) for i, t in docs)

    def documents(self, skip: int = 0) -> Iterator[Document]:
        return itertools.islice(self._all_documents(), skip, None)


def _file_documents(task: tuple[str, str]) -> list[tuple[str, str]]:
    """(id, text) of every docstring in one file; a file that does not parse contributes none."""
    root, path = Path(task[0]), Path(task[1])
    relative = path.relative_to(root)
    try:
        tree = ast.parse(path.read_bytes(), filename=str(relative))
    except (SyntaxError, ValueError, OSError) as exc:
        logger.debug("offline corpus: skipping %s (%s)", relative, exc)
        return []
    module = _module_name(relative)
    entries = _topic_documents(tree) if module == "pydoc_data.topics" else _docstrings(tree)
    out = []
    for qualname, text in entries:
        key = f"{module}:{qualname}"
        name = module if qualname == "<module>" else key.replace(":", ".")
        out.append((hashlib.sha256(key.encode("utf-8")).hexdigest(), f"{name}\n\n{text.strip()}\n"))
    return out
