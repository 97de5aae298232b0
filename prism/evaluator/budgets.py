"""Budgets counted by the host from the trained weights file (host side, no torch).

The training process writes ``weights.safetensors``; the host reads its header itself and counts
**every tensor in it, each storage once** (safetensors stores every tensor in its own byte range;
overlapping or unaccounted bytes are refused). The held-out process loads the file strictly into
the rebuilt model, so all trained state must be in it: a model cannot train more parameters than
the file holds. Layers are re-counted from the tensor names (an integer-indexed child holding
tensors is a layer, as ``nn.ModuleList``/``nn.Sequential`` stacks are named).

The budget counts what the file can carry, not only elements: each tensor counts
``max(elements, bytes / 4)`` values (two float32 packed into one int64 count as two), tensor
names count ``ceil(len / 4)`` values each (a name is storage too), and tensors without elements
are refused (a name on an empty tensor would be free storage). The file must also open with the
safetensors library itself, so nothing the host accepts can fail to load later.

Tensors that are **byte-identical** to another (same dtype, same shape, same bytes) are counted
once: that is what a tied weight is once ``save_weights`` has cloned it (``head.weight =
emb.weight`` writes two keys for one storage, which the model's own count reads as one). Two equal
copies carry no more values than one; a repeat still costs its name and one value for the
reference (which tensor it repeats: under 17 bits among at most ``MAX_TENSORS`` tensors), and a
tensor that differs from another in a single bit is not a repeat and is counted in full. Layers
are re-counted the same way: siblings of a stack whose tensors are all repeats of each other
(``nn.ModuleList([block] * n)``, one module ``n`` times) are one layer, as the model's own count
reads them.

What the training process says about its own size is evidence; this count is the verdict:
over budget is ``budget.parameters_exceeded`` / ``budget.layers_exceeded`` (miner faults), and a
file that is not plain safetensors is ``budget.weights_invalid``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import stat
import struct
from dataclasses import dataclass, field
from pathlib import Path

from prism.errors import MinerFault
from prism.evaluator.framing import loads_untrusted

MAX_HEADER_BYTES = 100_000_000
MAX_TENSORS = 100_000
MAX_NAME_CHARS = 512
MAX_DIM = 2**40  # far above any real tensor; keeps every product of dims within 64 bits
BYTES_PER_VALUE = 4  # the budget's unit: one float32
HASH_CHUNK_BYTES = 1 << 24
HEADER_ALIGNMENT = 8  # safetensors pads its header with spaces to a multiple of 8 bytes
DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
}  # fmt: skip
INTEGER_DTYPES = frozenset({"BOOL", "U8", "I8", "I16", "U16", "I32", "U32", "I64", "U64"})
#: Metadata the writer may leave (safetensors' own); anything else could carry data uncounted.
ALLOWED_METADATA = ({}, {"format": "pt"})
_CONTENT = object()  # the key a tensor's contents sit under in the name tree (not a string: no name part)


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int
    repeat_of: str | None = None  # the counted tensor this one is byte-identical to

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def counted_values(self) -> int:
        """What this tensor costs in the budget: its elements or its bytes in float32 units (an
        integer tensor: its bytes, since shifts and masks take an int32 apart into four int8
        values), plus its name. A repeat of another tensor costs one value (the reference), plus its name."""
        if self.repeat_of is not None:
            return 1 + -(-len(self.name.encode()) // BYTES_PER_VALUE)
        nbytes = self.end - self.begin
        values = nbytes if self.dtype in INTEGER_DTYPES else max(self.numel, -(-nbytes // BYTES_PER_VALUE))
        return values + -(-len(self.name.encode()) // BYTES_PER_VALUE)


@dataclass(frozen=True)
class WeightsInventory:
    """What the host found in a weights file."""

    tensors: tuple[TensorEntry, ...]
    file_bytes: int
    parameter_count: int  # elements, as a model's parameter count reads (repeats of a tensor once)
    layer_count: int
    counted_values: int = 0  # what the budget charges (TensorEntry.counted_values, summed)
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    tied_values: int = 0  # elements of tensors byte-identical to a counted one (not counted again)

    @property
    def file_elements(self) -> int:
        """Every element in the file, repeats included."""
        return self.parameter_count + self.tied_values


def _invalid(message: str) -> MinerFault:
    return MinerFault(
        f"the trained weights file is not plain safetensors: {message}", code="budget.weights_invalid"
    )


def _read_header(path: Path) -> tuple[dict, int, int]:  # type: ignore[type-arg]
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as fh:
        info = os.fstat(fh.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise _invalid("not a regular file")
        prefix = fh.read(8)
        if len(prefix) != 8:
            raise _invalid("truncated header")
        (size,) = struct.unpack("<Q", prefix)
        if size > MAX_HEADER_BYTES or 8 + size > info.st_size:
            raise _invalid(f"header of {size} bytes does not fit the file")
        raw = fh.read(size)
    try:
        header = loads_untrusted(raw.decode("utf-8").rstrip(" "))
    except ValueError as exc:
        raise _invalid(f"header is not JSON ({exc})") from exc
    if not isinstance(header, dict):
        raise _invalid("header is not an object")
    _check_canonical(raw, header)
    return header, 8 + size, info.st_size


def _check_canonical(raw: bytes, header: dict) -> None:  # type: ignore[type-arg]
    """The header must be the compact JSON safetensors writes, then at most 7 spaces of
    alignment: any other spelling of the same header (whitespace, escapes, duplicate keys) is
    room for values the budget never counts, which the held-out process can read back."""
    body = raw.rstrip(b" ")
    canonical = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    if body != canonical:
        raise _invalid("header is not in the compact form safetensors writes (extra whitespace or escapes)")
    if len(raw) - len(body) >= HEADER_ALIGNMENT:
        raise _invalid(f"header is padded with {len(raw) - len(body)} spaces (alignment needs fewer than 8)")


def _entry(name: object, spec: object) -> TensorEntry:
    if not isinstance(name, str) or not name or len(name) > MAX_NAME_CHARS or not name.isprintable():
        raise _invalid(f"bad tensor name {str(name)[:80]!r}")
    if not isinstance(spec, dict) or set(spec) != {"dtype", "shape", "data_offsets"}:
        raise _invalid(f"tensor {name!r} has a malformed entry")
    dtype, shape, offsets = spec["dtype"], spec["shape"], spec["data_offsets"]
    if dtype not in DTYPE_BYTES:
        raise _invalid(f"tensor {name!r} has unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(isinstance(n, int) and 0 <= n <= MAX_DIM for n in shape):
        raise _invalid(f"tensor {name!r} has a bad shape")
    if 0 in shape:
        raise _invalid(
            f"tensor {name!r} has no elements (empty tensors are refused: their names would be free)"
        )
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
        raise _invalid(f"tensor {name!r} has bad data_offsets")
    entry = TensorEntry(name, dtype, tuple(shape), offsets[0], offsets[1])
    if entry.end - entry.begin != entry.numel * DTYPE_BYTES[dtype]:
        raise _invalid(f"tensor {name!r}: its byte range does not match its shape and dtype")
    return entry


def _check_layout(entries: list[TensorEntry], data_bytes: int) -> None:
    """Byte ranges must tile the data section exactly: no overlap (a shared storage), no gap,
    nothing after the last tensor (bytes no tensor accounts for could carry weights uncounted)."""
    cursor = 0
    for entry in sorted(entries, key=lambda e: (e.begin, e.end)):
        if entry.begin != cursor:
            raise _invalid(f"tensor {entry.name!r} starts at byte {entry.begin}, expected {cursor}")
        cursor = entry.end
    if cursor != data_bytes:
        raise _invalid(f"{data_bytes - cursor} bytes after the last tensor")


def count_layers_from_names(names: list[str], contents: dict[str, str] | None = None) -> int:
    """Largest stack of integer-indexed children holding tensors (nested stacks add up).

    ``contents`` names what each tensor holds (tensors with equal contents are byte-identical;
    by default every tensor is its own): siblings of one stack holding the same tensors under
    the same names are one layer (one module listed ``n`` times).
    """
    tree: dict = {}  # type: ignore[type-arg]
    for name in names:
        node = tree
        for part in name.split("."):
            node = node.setdefault(part, {})
        node[_CONTENT] = (contents or {}).get(name, name)

    def signature(node: dict, prefix: str = "") -> frozenset[tuple[str, str]]:  # type: ignore[type-arg]
        items: set[tuple[str, str]] = set()
        for key, child in node.items():
            if key == _CONTENT:
                items.add((prefix, child))
            else:
                items |= signature(child, f"{prefix}.{key}")
        return frozenset(items)

    def depth(node: dict) -> int:  # type: ignore[type-arg]
        total, seen = 0, set()
        for key, child in node.items():
            if key != _CONTENT and key.isdigit():
                sig = signature(child)
                if sig in seen:
                    continue
                seen.add(sig)
                total += depth(child) if any(k.isdigit() for k in child if k != _CONTENT) else 1
        return total

    best, stack = 0, [tree]
    while stack:
        node = stack.pop()
        best = max(best, depth(node))
        stack.extend(child for key, child in node.items() if key != _CONTENT)
    return best if best else (1 if names else 0)


def inspect_weights(path: Path) -> WeightsInventory:
    """Parse and check a weights file; raise ``budget.weights_invalid`` for anything but plain tensors."""
    try:
        header, data_start, file_bytes = _read_header(path)
    except OSError as exc:
        raise _invalid(f"cannot read it ({exc})") from exc
    metadata = header.pop("__metadata__", {})
    if metadata not in ALLOWED_METADATA:
        raise _invalid("it carries metadata beyond safetensors' own")
    if len(header) > MAX_TENSORS:
        raise _invalid(f"{len(header)} tensors (at most {MAX_TENSORS})")
    entries = [_entry(name, spec) for name, spec in header.items()]
    _check_layout(entries, file_bytes - data_start)
    _check_loadable(path)
    contents = _contents(path, data_start, entries)
    first: dict[str, str] = {}
    for i, entry in enumerate(entries):
        original = first.setdefault(contents[entry.name], entry.name)
        if original != entry.name:
            entries[i] = dataclasses.replace(entry, repeat_of=original)
    return WeightsInventory(
        tensors=tuple(entries),
        file_bytes=file_bytes,
        parameter_count=sum(e.numel for e in entries if e.repeat_of is None),
        layer_count=count_layers_from_names([e.name for e in entries], contents),
        shapes={e.name: e.shape for e in entries},
        counted_values=sum(e.counted_values for e in entries),
        tied_values=sum(e.numel for e in entries if e.repeat_of is not None),
    )


def _contents(path: Path, data_start: int, entries: list[TensorEntry]) -> dict[str, str]:
    """What each tensor holds: its own name where no other tensor has its dtype and shape, else
    a SHA-256 of (dtype, shape, bytes), so byte-identical tensors, and only those, share one."""
    kinds: dict[tuple[str, tuple[int, ...]], int] = {}
    for entry in entries:
        kinds[(entry.dtype, entry.shape)] = kinds.get((entry.dtype, entry.shape), 0) + 1
    contents = {e.name: f"name:{e.name}" for e in entries}
    shared = [e for e in entries if kinds[(e.dtype, e.shape)] > 1]
    if not shared:
        return contents
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, "rb") as fh:
            for entry in shared:
                digest = hashlib.sha256(f"{entry.dtype}{list(entry.shape)}".encode())
                fh.seek(data_start + entry.begin)
                left = entry.end - entry.begin
                while left:
                    chunk = fh.read(min(left, HASH_CHUNK_BYTES))
                    if not chunk:
                        raise _invalid(f"tensor {entry.name!r} is cut short")
                    digest.update(chunk)
                    left -= len(chunk)
                contents[entry.name] = f"sha256:{digest.hexdigest()}"
    except OSError as exc:
        raise _invalid(f"cannot read it ({exc})") from exc
    return contents


def _check_loadable(path: Path) -> None:
    """The library the held-out process loads with must accept the file too (headers only)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as handle:
            for name in handle.keys():  # noqa: SIM118 (safe_open is not a mapping)
                handle.get_slice(name).get_shape()
    except Exception as exc:  # the library's own error types vary by version; any refusal is the file's
        raise _invalid(f"safetensors refuses it ({str(exc)[:200]})") from exc


def check_budgets(inventory: WeightsInventory, *, max_parameters: int, max_layers: int) -> None:
    counted = max(inventory.counted_values, inventory.parameter_count)
    if counted > max_parameters:
        tied = inventory.tied_values
        repeats = f"; {tied:,} more in tensors identical to another, counted once" if tied else ""
        raise MinerFault(
            f"the trained weights count {counted:,} values ({inventory.parameter_count:,} elements in "
            f"{len(inventory.tensors)} tensors{repeats}), above max_parameters={max_parameters:,} (every tensor "
            "in the weights file counts, buffers too; 4 bytes are one value and tensor names count)",
            code="budget.parameters_exceeded",
        )
    if inventory.layer_count > max_layers:
        raise MinerFault(
            f"the trained weights hold {inventory.layer_count} layers, above max_layers={max_layers}",
            code="budget.layers_exceeded",
        )


__all__ = [
    "TensorEntry",
    "WeightsInventory",
    "check_budgets",
    "count_layers_from_names",
    "inspect_weights",
]
