"""Code fingerprints: content hashes that survive re-zipping and cosmetic whitespace.

``zip_sha256`` identifies the exact bytes a miner committed. The architecture and training
fingerprints identify the *code* of each role, independent of ZIP timestamps, entry order,
compression, line endings and trailing whitespace, so the same tree re-packed by any tool gives
the same values. (Architecture *family* identity is derived later, from the running model.)

Normalization of each file: decode UTF-8, drop a leading BOM, turn CRLF and CR into LF, strip
trailing spaces and tabs from every line, drop trailing blank lines, end with exactly one LF.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

FINGERPRINT_VERSION = "prism.code.v1"


def normalize_source(content: bytes) -> bytes:
    text = content.decode("utf-8")
    text = text.removeprefix("\ufeff")
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    lines = [line.rstrip(" \t") for line in text.split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    return ("\n".join(lines) + "\n").encode("utf-8")


def code_fingerprint(role: str, entrypoint: str, paths: Sequence[str], files: Mapping[str, bytes]) -> str:
    """sha256 over the role, its entrypoint and the sorted (path, normalized content) pairs."""
    digest = hashlib.sha256()
    digest.update(f"{FINGERPRINT_VERSION}\nrole={role}\nentrypoint={entrypoint}\n".encode())
    for path in sorted(set(paths)):
        body = normalize_source(files[path])
        digest.update(f"file={path}\nbytes={len(body)}\n".encode())
        digest.update(body)
    return digest.hexdigest()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
