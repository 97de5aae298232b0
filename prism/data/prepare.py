"""``prism data prepare``: documents -> split -> tokens -> shards + MANIFEST.json.

Documents are read in source order, cut into chunks, tokenized by a process pool and written
back in the same order, so the shards are byte-identical for any worker count. Each document is
stored as ``[EOS] + ids`` in the shard stream of its split; a split's stream is cut into shards
of exactly ``shard_tokens`` tokens (the last one shorter). The whole directory is built next to
the target and renamed into place at the end: a crash never leaves a directory that looks done.
"""

from __future__ import annotations

import collections
import logging
import multiprocessing
import os
import shutil
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from prism.data.errors import DataError
from prism.data.manifest import (
    DataManifest,
    PrepareLimits,
    ShardInfo,
    SplitInfo,
    SplitRuleInfo,
    TokenizerInfo,
    read_data_manifest,
    write_data_manifest,
)
from prism.data.shards import SHARD_FORMAT_VERSION, shard_name, token_dtype_for, verify_data_dir, write_shard
from prism.data.sources import Document, DocumentSource, OfflineDocstringSource, limit_documents
from prism.data.split import SPLITS, split_of
from prism.data.tokenizers import Tokenizer, get_tokenizer

logger = logging.getLogger(__name__)

DEFAULT_SHARD_TOKENS = 100_000_000
DEFAULT_CHUNK_DOCS = 512
DEFAULT_CHUNK_CHARS = 1 << 20
OFFLINE_CORPUS_MAX_BYTES = 3_000_000

# One chunk's output: per split (tokens in the shard dtype, uint8 byte lengths, documents),
# then the chunk's UTF-8 text bytes and token count.
ChunkResult = tuple[dict[str, tuple[np.ndarray, np.ndarray, int]], int, int]

_worker_tokenizer: Tokenizer | None = None


def _init_worker(tokenizer_name: str) -> None:
    global _worker_tokenizer
    _worker_tokenizer = get_tokenizer(tokenizer_name)


def tokenize_chunk(tokenizer: Tokenizer, chunk: list[tuple[str, str]]) -> ChunkResult:
    """Tokenize one chunk of (id, text) documents into per-split ``[EOS] + ids`` streams.

    Runs in the worker: the split, the byte lengths and the cast to the (usually uint16) shard
    dtype all happen here, so the parent only concatenates and writes.
    """
    lengths_table = tokenizer.token_byte_lengths()
    dtype = np.dtype(token_dtype_for(tokenizer.vocab_size))
    eos = np.array([tokenizer.eos_id], dtype=np.uint32)
    per_split: dict[str, list[np.ndarray]] = collections.defaultdict(list)
    encoded = tokenizer.encode_batch([text for _, text in chunk])
    text_bytes = 0
    for (doc_id, text), ids in zip(chunk, encoded, strict=True):
        per_split[split_of(doc_id)].extend((eos, ids))
        text_bytes += len(text.encode("utf-8"))
    out: dict[str, tuple[np.ndarray, np.ndarray, int]] = {}
    for split, parts in per_split.items():
        tokens = np.concatenate(parts)
        out[split] = (tokens.astype(dtype), lengths_table[tokens], len(parts) // 2)
    n_tokens = sum(t.size for t, _, _ in out.values())
    return out, text_bytes, n_tokens


def _tokenize_in_worker(chunk: list[tuple[str, str]]) -> ChunkResult:
    assert _worker_tokenizer is not None, "worker initializer did not run"
    return tokenize_chunk(_worker_tokenizer, chunk)


def _chunks(docs: Iterable[Document], chunk_docs: int, chunk_chars: int) -> Iterator[list[tuple[str, str]]]:
    """Group documents into chunks of at most ``chunk_docs`` documents or ~``chunk_chars`` characters.

    The character bound keeps work balanced across workers when documents are long (a handful
    of 50 kB pages would otherwise be one chunk and one busy worker).
    """
    chunk: list[tuple[str, str]] = []
    chars = 0
    for doc in docs:
        chunk.append((doc.id, doc.text))
        chars += len(doc.text)
        if len(chunk) >= chunk_docs or chars >= chunk_chars:
            yield chunk
            chunk, chars = [], 0
    if chunk:
        yield chunk


def _tokenized_chunks(
    chunks: Iterator[list[tuple[str, str]]], tokenizer_name: str, workers: int
) -> Iterator[ChunkResult]:
    """Tokenize chunks in order; with workers > 1 a pool keeps a bounded number in flight.

    ``Pool.imap`` would drain the whole (possibly endless) document stream into its task queue,
    so submission is throttled by hand to ``4 * workers`` outstanding chunks.
    """
    if workers <= 1:
        tokenizer = get_tokenizer(tokenizer_name)
        for chunk in chunks:
            yield tokenize_chunk(tokenizer, chunk)
        return
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    context = multiprocessing.get_context(method)
    with context.Pool(workers, initializer=_init_worker, initargs=(tokenizer_name,)) as pool:
        pending: collections.deque = collections.deque()
        for chunk in chunks:
            pending.append(pool.apply_async(_tokenize_in_worker, (chunk,)))
            if len(pending) >= 4 * workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


class _SplitWriter:
    """Buffers one split's token stream and writes it as fixed-size shards."""

    def __init__(self, split: str, directory: Path, tokenizer: TokenizerInfo, shard_tokens: int) -> None:
        self.split = split
        self.directory = directory
        self.tokenizer = tokenizer
        self.shard_tokens = shard_tokens
        self.buffer: list[tuple[np.ndarray, np.ndarray]] = []
        self.buffered = 0
        self.shards: list[ShardInfo] = []

    def add(self, tokens: np.ndarray, lengths: np.ndarray) -> None:
        self.buffer.append((tokens, lengths))
        self.buffered += tokens.size
        if self.buffered >= self.shard_tokens:
            self._flush(final=False)

    def _flush(self, *, final: bool) -> None:
        if not self.buffer:
            return
        tokens = np.concatenate([t for t, _ in self.buffer])
        lengths = np.concatenate([b for _, b in self.buffer])
        start = 0
        while tokens.size - start >= self.shard_tokens or (final and start < tokens.size):
            end = min(start + self.shard_tokens, tokens.size)
            path = self.directory / shard_name(self.split, len(self.shards))
            self.shards.append(write_shard(path, tokens[start:end], lengths[start:end], self.tokenizer))
            start = end
        self.buffer = [(tokens[start:], lengths[start:])] if start < tokens.size else []
        self.buffered = tokens.size - start

    def finish(self) -> SplitInfo:
        self._flush(final=True)
        return SplitInfo(
            tokens=sum(s.tokens for s in self.shards),
            bytes=sum(s.bytes for s in self.shards),
            docs=sum(s.docs for s in self.shards),
            shards=self.shards,
        )


def _progress(enabled: bool, total_docs: int | None):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = [
        TextColumn("[bold]prepare"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(
            "docs  {task.fields[mb]:.1f} MB  {task.fields[tokens]:,} tokens  {task.fields[rate]:,.0f} tok/s"
        ),
        TimeElapsedColumn(),
    ]
    progress = Progress(*columns, disable=not enabled, transient=False)
    task = progress.add_task("prepare", total=total_docs, mb=0.0, tokens=0, rate=0.0)
    return progress, task


def _claim_output_dir(out_dir: Path, overwrite: bool) -> Path:
    """Refuse to clobber a prepared directory; return the sibling staging directory to build in."""
    if out_dir.exists():
        if not out_dir.is_dir():
            raise DataError(f"--out {out_dir} exists and is not a directory", code="data.out_exists")
        if any(out_dir.iterdir()) and not overwrite:
            raise DataError(
                f"--out {out_dir} is not empty (pass --overwrite to replace it)", code="data.out_exists"
            )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = out_dir.with_name(f".{out_dir.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    return staging


def _publish(staging: Path, out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and any(out_dir.iterdir()):
        if not overwrite:
            shutil.rmtree(staging, ignore_errors=True)
            raise DataError(f"{out_dir} was filled while preparing; not replacing it", code="data.out_exists")
        shutil.rmtree(out_dir)
    elif out_dir.exists():
        out_dir.rmdir()
    staging.rename(out_dir)


def prepare_dataset(
    source: DocumentSource,
    tokenizer_name: str,
    out_dir: Path,
    *,
    max_docs: int | None = None,
    max_bytes: int | None = None,
    skip_docs: int = 0,
    shard_tokens: int = DEFAULT_SHARD_TOKENS,
    workers: int = 1,
    chunk_docs: int = DEFAULT_CHUNK_DOCS,
    progress: bool = False,
    overwrite: bool = False,
) -> DataManifest:
    """Tokenize ``source`` into ``out_dir`` and return the written manifest."""
    if shard_tokens < 1024:
        raise DataError("--shard-tokens must be at least 1024", code="data.bad_option")
    out_dir = Path(out_dir)
    tokenizer = get_tokenizer(tokenizer_name)
    tok_info = TokenizerInfo(
        name=tokenizer.name,
        fingerprint=tokenizer.fingerprint,
        vocab_size=tokenizer.vocab_size,
        eos_id=tokenizer.eos_id,
        token_dtype=token_dtype_for(tokenizer.vocab_size),
    )
    staging = _claim_output_dir(out_dir, overwrite)
    try:
        writers = {split: _SplitWriter(split, staging, tok_info, shard_tokens) for split in SPLITS}
        docs = limit_documents(source.documents(skip_docs), max_docs=max_docs, max_bytes=max_bytes)
        n_docs = n_text_bytes = n_tokens = 0
        started = time.perf_counter()
        bar, task = _progress(progress, max_docs)
        with bar:
            for result, text_bytes, chunk_tokens in _tokenized_chunks(
                _chunks(docs, chunk_docs, DEFAULT_CHUNK_CHARS), tokenizer_name, workers
            ):
                for split in SPLITS:  # fixed order keeps the output independent of dict order
                    if split in result:
                        tokens, lengths, docs_in_chunk = result[split]
                        writers[split].add(tokens, lengths)
                        n_docs += docs_in_chunk
                n_text_bytes += text_bytes
                n_tokens += chunk_tokens
                elapsed = max(time.perf_counter() - started, 1e-9)
                bar.update(
                    task, completed=n_docs, mb=n_text_bytes / 1e6, tokens=n_tokens, rate=n_tokens / elapsed
                )
        if n_docs == 0:
            raise DataError("the source yielded no documents", code="data.empty_source")
        manifest = DataManifest(
            shard_format_version=SHARD_FORMAT_VERSION,
            source=source.info,
            limits=PrepareLimits(max_docs=max_docs, max_bytes=max_bytes, skip_docs=skip_docs),
            split=SplitRuleInfo(),
            tokenizer=tok_info,
            shard_tokens=shard_tokens,
            documents=n_docs,
            splits={split: writer.finish() for split, writer in writers.items()},
        )
        write_data_manifest(manifest, staging)
        _publish(staging, out_dir, overwrite)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info(
        "prepared %s: %d documents, %d tokens (%s) in %.1fs",
        out_dir,
        n_docs,
        n_tokens,
        tokenizer.name,
        time.perf_counter() - started,
    )
    return read_data_manifest(out_dir)


def ensure_offline_corpus(
    out_dir: Path, tokenizer: str = "byte", *, max_bytes: int = OFFLINE_CORPUS_MAX_BYTES, workers: int = 2
) -> DataManifest:
    """Prepare the offline docstring corpus into ``out_dir`` unless a valid one is already there.

    Idempotent and safe when several processes race: each builds in its own staging directory
    and the loser of the final rename verifies and reuses the winner's directory.
    """
    out_dir = Path(out_dir)
    expected = get_tokenizer(tokenizer).fingerprint
    if (out_dir / "MANIFEST.json").exists():
        manifest = verify_data_dir(out_dir, expected_tokenizer_fingerprint=expected)
        if manifest.source.kind == "offline" and manifest.limits.max_bytes == max_bytes:
            return manifest
        raise DataError(
            f"{out_dir} holds a different corpus ({manifest.source.label()}); choose another directory",
            code="data.out_exists",
        )
    try:
        return prepare_dataset(
            OfflineDocstringSource(workers=workers),
            tokenizer,
            out_dir,
            max_bytes=max_bytes,
            workers=workers,
            shard_tokens=DEFAULT_SHARD_TOKENS,
        )
    except (DataError, OSError) as exc:
        if (out_dir / "MANIFEST.json").exists():  # another process won the race
            logger.debug("offline corpus prepared concurrently (%s); reusing it", exc)
            return verify_data_dir(out_dir, expected_tokenizer_fingerprint=expected)
        raise
