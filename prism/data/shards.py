"""Token shard files: a fixed 256-byte header, the token ids, then one byte length per token.

Layout (little-endian)::

    offset  size  field
    0       8     magic b"PRISMTOK"
    8       4     format version (1)
    12      4     header size (256)
    16      4     token item size in bytes (2 = uint16, 4 = uint32)
    20      4     vocab size
    24      4     EOS id
    28      8     token count N
    36      8     document count (= EOS tokens: each document is preceded by one EOS)
    44      8     UTF-8 bytes covered (sum of the byte lengths)
    52      32    tokenizer fingerprint (raw sha256 digest)
    84      172   zero padding
    256     N*s   token ids
    256+N*s N     uint8 UTF-8 byte length of each token (EOS = 0)

Both arrays are memory-mapped by the loader. The byte lengths let bits-per-byte count the exact
bytes a window's targets cover with one vectorized gather, even when a GPT-2 token holds part of
a multi-byte character.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from prism.data.errors import (
    BadMagic,
    HashMismatch,
    HeaderMismatch,
    ShardMissing,
    TokenizerMismatch,
    TruncatedShard,
    UnsupportedFormat,
)
from prism.data.manifest import DataManifest, ShardInfo, TokenizerInfo

MAGIC = b"PRISMTOK"
SHARD_FORMAT_VERSION = 1
HEADER_SIZE = 256
_HEADER = struct.Struct("<8sIIIIIQQQ32s")
_HASH_CHUNK = 8 << 20


@dataclass(frozen=True)
class ShardHeader:
    version: int
    itemsize: int
    vocab_size: int
    eos_id: int
    tokens: int
    docs: int
    bytes: int
    fingerprint: str

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.uint16 if self.itemsize == 2 else np.uint32)

    @property
    def file_size(self) -> int:
        return HEADER_SIZE + self.tokens * (self.itemsize + 1)


def token_dtype_for(vocab_size: int) -> str:
    return "uint16" if vocab_size <= 1 << 16 else "uint32"


def shard_name(split: str, index: int) -> str:
    return f"{split}_{index:06d}.bin"


def write_shard(
    path: Path, tokens: np.ndarray, byte_lengths: np.ndarray, tokenizer: TokenizerInfo
) -> ShardInfo:
    """Write one shard and return its manifest entry (sha256 of the whole file)."""
    dtype = np.dtype(tokenizer.token_dtype)
    tokens = np.ascontiguousarray(tokens, dtype=dtype)
    byte_lengths = np.ascontiguousarray(byte_lengths, dtype=np.uint8)
    if tokens.shape != byte_lengths.shape or tokens.ndim != 1:
        raise ValueError("tokens and byte_lengths must be 1-D arrays of the same length")
    docs = int(np.count_nonzero(tokens == tokenizer.eos_id))
    covered = int(byte_lengths.sum(dtype=np.int64))
    header = _HEADER.pack(
        MAGIC,
        SHARD_FORMAT_VERSION,
        HEADER_SIZE,
        dtype.itemsize,
        tokenizer.vocab_size,
        tokenizer.eos_id,
        tokens.size,
        docs,
        covered,
        bytes.fromhex(tokenizer.fingerprint),
    ).ljust(HEADER_SIZE, b"\0")
    digest = hashlib.sha256()
    with open(path, "wb") as handle:
        for part in (header, tokens.tobytes(), byte_lengths.tobytes()):
            digest.update(part)
            handle.write(part)
    return ShardInfo(
        name=path.name, sha256=digest.hexdigest(), tokens=int(tokens.size), bytes=covered, docs=docs
    )


def read_shard_header(path: Path) -> ShardHeader:
    """Parse and sanity-check the header; checks the file size against the token count."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            raw = handle.read(HEADER_SIZE)
    except FileNotFoundError:
        raise ShardMissing(f"shard {path} is missing") from None
    except OSError as exc:
        raise ShardMissing(f"cannot read shard {path}: {exc}") from exc
    if len(raw) >= len(MAGIC) and raw[: len(MAGIC)] != MAGIC:
        raise BadMagic(f"{path} does not start with {MAGIC!r}: not a PRISM token shard")
    if len(raw) < HEADER_SIZE:
        raise TruncatedShard(f"{path} is {size} bytes, shorter than the {HEADER_SIZE}-byte header")
    _magic, version, header_size, itemsize, vocab, eos, tokens, docs, covered, fp = _HEADER.unpack_from(raw)
    if version != SHARD_FORMAT_VERSION or header_size != HEADER_SIZE or itemsize not in (2, 4):
        raise UnsupportedFormat(
            f"{path}: shard format version {version}, header {header_size} B, item size {itemsize}; "
            f"this PRISM reads version {SHARD_FORMAT_VERSION} with a {HEADER_SIZE}-byte header"
        )
    header = ShardHeader(version, itemsize, vocab, eos, tokens, docs, covered, fp.hex())
    if size != header.file_size:
        raise TruncatedShard(
            f"{path} is {size} bytes but its header announces {tokens} tokens ({header.file_size} bytes)"
        )
    return header


def check_header_against(path: Path, header: ShardHeader, entry: ShardInfo, tokenizer: TokenizerInfo) -> None:
    """The header must agree with the tokenizer and the counts recorded in MANIFEST.json."""
    if header.fingerprint != tokenizer.fingerprint or header.vocab_size != tokenizer.vocab_size:
        raise TokenizerMismatch(
            f"{path} was written by tokenizer {header.fingerprint[:16]}... (vocab {header.vocab_size}), "
            f"the manifest says {tokenizer.name} {tokenizer.fingerprint[:16]}... (vocab {tokenizer.vocab_size})"
        )
    if header.dtype != np.dtype(tokenizer.token_dtype) or header.eos_id != tokenizer.eos_id:
        raise HeaderMismatch(f"{path}: token dtype or EOS id differ from the manifest")
    if (header.tokens, header.docs, header.bytes) != (entry.tokens, entry.docs, entry.bytes):
        raise HeaderMismatch(
            f"{path}: header counts (tokens {header.tokens}, docs {header.docs}, bytes {header.bytes}) "
            f"differ from MANIFEST.json ({entry.tokens}, {entry.docs}, {entry.bytes})"
        )


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def verify_shard(
    path: Path, entry: ShardInfo, tokenizer: TokenizerInfo, *, check_hash: bool = True
) -> ShardHeader:
    header = read_shard_header(path)
    check_header_against(path, header, entry, tokenizer)
    if check_hash:
        actual = file_sha256(path)
        if actual != entry.sha256:
            raise HashMismatch(
                f"{path} has sha256 {actual}, MANIFEST.json records {entry.sha256}: the shard is corrupt"
            )
    return header


def verify_data_dir(
    directory: Path,
    *,
    check_hashes: bool = True,
    splits: tuple[str, ...] | None = None,
    expected_tokenizer_fingerprint: str | None = None,
) -> DataManifest:
    """Re-check MANIFEST.json and every shard's header, size and (by default) sha256."""
    from prism.data.manifest import read_data_manifest

    directory = Path(directory)
    manifest = read_data_manifest(directory)
    tok = manifest.tokenizer
    if expected_tokenizer_fingerprint is not None and tok.fingerprint != expected_tokenizer_fingerprint:
        raise TokenizerMismatch(
            f"{directory} was prepared with tokenizer {tok.name} ({tok.fingerprint[:16]}...), "
            f"expected fingerprint {expected_tokenizer_fingerprint[:16]}..."
        )
    if manifest.shard_format_version != SHARD_FORMAT_VERSION:
        raise UnsupportedFormat(f"{directory}: shard format {manifest.shard_format_version} is not supported")
    for split, info in manifest.splits.items():
        if splits is not None and split not in splits:
            continue
        for entry in info.shards:
            if Path(entry.name).name != entry.name:
                raise HeaderMismatch(f"{directory}: shard name {entry.name!r} must be a plain file name")
            verify_shard(directory / entry.name, entry, tok, check_hash=check_hashes)
    return manifest
