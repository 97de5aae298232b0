"""Builders for real (and really hostile) ZIP archives, written byte by byte so tests control
every header field: names, flags, modes, declared sizes and CRCs. (Uniquely named so that
--import-mode=importlib tests of other areas cannot collide with it.)"""

from __future__ import annotations

import stat
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = REPO_ROOT / "examples"

MINIMAL_MODEL = b"""import torch


def build_model(ctx):
    return torch.nn.Embedding(ctx.vocab_size, ctx.vocab_size)


def get_recipe(ctx):
    return {"learning_rate": 1e-3, "batch_size": 4}
"""


@dataclass
class RawEntry:
    """One archive member exactly as it will be written (``payload`` is the stored/deflated data)."""

    name: bytes
    payload: bytes
    crc: int
    size: int
    method: int = 8
    flags: int = 0
    mode: int = stat.S_IFREG | 0o644
    system: int = 3
    #: Where the central directory says the local header is; None = where raw_zip writes it.
    offset: int | None = None
    #: False: raw_zip writes no local record (the entry points into another entry's data).
    write_local: bool = True

    @classmethod
    def of(cls, name: str | bytes, content: bytes, *, deflate: bool = True, **overrides) -> RawEntry:
        raw_name = name.encode() if isinstance(name, str) else name
        if deflate:
            packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
            payload = packer.compress(content) + packer.flush()
        else:
            payload = content
        entry = cls(raw_name, payload, zlib.crc32(content), len(content), 8 if deflate else 0)
        for key, value in overrides.items():
            setattr(entry, key, value)
        return entry


def _common_fields(entry: RawEntry) -> tuple[int, ...]:
    return (entry.flags, entry.method, 0, 0x21, entry.crc, len(entry.payload), entry.size, len(entry.name))


def local_record(entry: RawEntry) -> bytes:
    """Local file header, name and payload of one entry."""
    header = struct.pack("<4sH" + "HHHHIIIH" + "H", b"PK\x03\x04", 20, *_common_fields(entry), 0)
    return header + entry.name + entry.payload


def raw_zip(entries: list[RawEntry]) -> bytes:
    """A ZIP with local headers, central directory and end record, no validation at all."""
    body, directory = bytearray(), bytearray()
    for entry in entries:
        offset = len(body) if entry.offset is None else entry.offset
        if entry.write_local:
            body += local_record(entry)
        directory += (
            struct.pack(
                "<4sHH" + "HHHHIIIH" + "HHHHII",
                b"PK\x01\x02",
                (entry.system << 8) | 20,
                20,
                *_common_fields(entry),
                0,
                0,
                0,
                0,
                entry.mode << 16,
                offset,
            )
            + entry.name
        )
    end = struct.pack(
        "<4sHHHHIIH", b"PK\x05\x06", 0, 0, len(entries), len(entries), len(directory), len(body), 0
    )
    return bytes(body + directory + end)


def zip_of(files: dict[str, bytes], *, deflate: bool = True) -> bytes:
    return raw_zip([RawEntry.of(name, content, deflate=deflate) for name, content in files.items()])
