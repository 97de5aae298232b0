"""Safe ZIP reading and deterministic ZIP writing.

Reading trusts nothing in the archive: names are checked before any data is touched, the
central directory's declared sizes are checked against the limits, and every entry is inflated
by hand in bounded chunks, so an entry whose headers understate its size is stopped as soon as
it inflates past what it declared (``zipfile`` would silently truncate it instead). Writing is
deterministic: sorted names, fixed timestamps and permissions, no directory entries, so the same
tree always gives the same bytes and the same sha256.
"""

from __future__ import annotations

import hashlib
import io
import logging
import re
import stat
import struct
import zipfile
import zlib
from collections.abc import Iterator, Mapping
from pathlib import Path, PurePosixPath

from prism.submission.errors import ArchiveError
from prism.submission.limits import IntakeLimits

logger = logging.getLogger(__name__)

FIXED_DATE_TIME = (1980, 1, 1, 0, 0, 0)
FILE_MODE = 0o644
_UNIX_REGULAR = stat.S_IFREG | FILE_MODE
_INFLATE_CHUNK = 64 * 1024
_LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")
_LOCAL_SIGNATURE = b"PK\x03\x04"
_SAFE_NAME = re.compile(r"^[A-Za-z0-9._\-/]+$")
_DRIVE_LETTER = re.compile(r"^[A-Za-z]:")
_DOS_DIRECTORY_BIT = 0x10
_ENCRYPTED_FLAG = 0x1
#: Directory names ``pack_directory`` leaves out silently (caches and tooling, never code).
_SKIPPED_DIRS = frozenset({"__pycache__", ".git", ".hg", ".svn", ".venv", "venv", ".mypy_cache"})


# ---------------------------------------------------------------------------------------------
# names


def check_entry_name(name: str, limits: IntakeLimits) -> None:
    """Reject a path an extractor could be tricked by, or one outside PRISM's naming rules."""
    if "\x00" in name:
        raise ArchiveError(
            "entry name contains a NUL byte", code="zip.nul_in_name", file=name.replace("\x00", "\\0")
        )
    if "\\" in name:
        raise ArchiveError(
            "entry name contains a backslash; use '/' separators", code="zip.backslash", file=name
        )
    if name.startswith("/") or _DRIVE_LETTER.match(name):
        raise ArchiveError("entry name is an absolute path", code="zip.absolute_path", file=name)
    parts = name.split("/")
    if ".." in parts:
        raise ArchiveError("entry name climbs out of the archive with '..'", code="zip.traversal", file=name)
    if len(name) > limits.max_path_length:
        raise ArchiveError(
            f"path is {len(name)} characters long; the limit is {limits.max_path_length}",
            code="zip.path_length",
            file=name,
        )
    if any(part in ("", ".") for part in parts) or not _SAFE_NAME.match(name):
        raise ArchiveError(
            "entry name must use only A-Z a-z 0-9 . _ - / with no empty or '.' components",
            code="zip.bad_name",
            file=name,
        )
    if len(parts) > limits.max_depth:
        raise ArchiveError(
            f"path is {len(parts)} levels deep; the limit is {limits.max_depth}", code="zip.depth", file=name
        )


def check_suffix(name: str, limits: IntakeLimits) -> None:
    suffix = PurePosixPath(name).suffix
    if suffix not in limits.allowed_suffixes:
        allowed = " ".join(limits.allowed_suffixes)
        raise ArchiveError(
            f"suffix {suffix or '(none)'!r} is not allowed; allowed: {allowed}", code="zip.suffix", file=name
        )


def check_text(name: str, data: bytes) -> None:
    """Submissions are text: reject binary payloads hiding behind an allowed suffix."""
    if b"\x00" in data:
        raise ArchiveError(
            "file contains NUL bytes; only text files are accepted", code="zip.binary", file=name
        )
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ArchiveError(
            f"file is not valid UTF-8 (byte {exc.start})", code="zip.not_utf8", file=name
        ) from None


def _check_collisions(names: list[str]) -> None:
    seen: set[str] = set()
    folded: dict[str, str] = {}
    directories: set[str] = set()
    for name in names:
        if name in seen:
            raise ArchiveError("the archive holds this name twice", code="zip.duplicate", file=name)
        seen.add(name)
        key = name.casefold()
        if key in folded:
            raise ArchiveError(
                f"names differ only in letter case: {folded[key]!r} and {name!r}",
                code="zip.case_collision",
                file=name,
            )
        folded[key] = name
        parts = key.split("/")
        directories.update("/".join(parts[:i]) for i in range(1, len(parts)))
    for key, name in folded.items():
        if key in directories:
            raise ArchiveError(
                "this name is used both as a file and as a directory", code="zip.duplicate", file=name
            )


# ---------------------------------------------------------------------------------------------
# reading


def _is_directory_entry(info: zipfile.ZipInfo) -> bool:
    return info.orig_filename.endswith("/")


def _check_entry_kind(info: zipfile.ZipInfo, name: str) -> None:
    """Only regular files (and plain directory entries, which are skipped) may appear."""
    if info.flag_bits & _ENCRYPTED_FLAG:
        raise ArchiveError("entry is encrypted", code="zip.encrypted", file=name)
    # The high 16 bits of external_attr carry a Unix st_mode when the writer set one; check them
    # whatever create_system claims, since a hostile writer controls both.
    mode = info.external_attr >> 16
    file_type = stat.S_IFMT(mode)
    if _is_directory_entry(info):
        if (file_type not in (0, stat.S_IFDIR)) or info.file_size or info.compress_size > 2:
            raise ArchiveError(
                "directory entry carries data or a non-directory type", code="zip.not_regular", file=name
            )
        return
    if file_type == stat.S_IFLNK:
        raise ArchiveError("entry is a symbolic link", code="zip.symlink", file=name)
    if file_type not in (0, stat.S_IFREG) or info.external_attr & _DOS_DIRECTORY_BIT:
        raise ArchiveError("entry is not a regular file", code="zip.not_regular", file=name)
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise ArchiveError(
            f"compression method {info.compress_type} is not supported (use stored or deflate)",
            code="zip.unsupported_compression",
            file=name,
        )


def _check_declared_sizes(infos: list[zipfile.ZipInfo], limits: IntakeLimits) -> None:
    total = 0
    for info in infos:
        size, packed = info.file_size, info.compress_size
        if size > limits.ratio_min_bytes and size > limits.max_ratio * max(packed, 1):
            raise ArchiveError(
                f"entry declares {size} bytes from {packed} compressed (over {limits.max_ratio:g}:1)",
                code="zip.ratio",
                file=info.filename,
            )
        total += size
        if total > limits.max_total_bytes:
            raise ArchiveError(
                f"files declare more than {limits.max_total_bytes} bytes uncompressed",
                code="zip.too_large",
                file=info.filename,
            )


def _data_span(data: bytes, info: zipfile.ZipInfo) -> tuple[int, int]:
    """Where the entry's compressed bytes lie, from its local header (checked against the CD)."""
    start = info.header_offset
    header = data[start : start + _LOCAL_HEADER.size]
    if len(header) != _LOCAL_HEADER.size:
        raise ArchiveError("local header lies outside the archive", code="zip.corrupt", file=info.filename)
    fields = _LOCAL_HEADER.unpack(header)
    if fields[0] != _LOCAL_SIGNATURE:
        raise ArchiveError("bad local header signature", code="zip.corrupt", file=info.filename)
    name_length, extra_length = fields[9], fields[10]
    name_start = start + _LOCAL_HEADER.size
    local_name = data[name_start : name_start + name_length]
    if local_name != info.orig_filename.encode("utf-8" if info.flag_bits & 0x800 else "cp437", "replace"):
        raise ArchiveError(
            "local header name differs from the central directory", code="zip.corrupt", file=info.filename
        )
    data_start = name_start + name_length + extra_length
    data_end = data_start + info.compress_size
    if data_end > len(data):
        raise ArchiveError(
            "entry data runs past the end of the archive", code="zip.corrupt", file=info.filename
        )
    return start, data_end


def _check_no_overlap(spans: list[tuple[int, int, str]]) -> None:
    """Overlapping entries are how the best-known zip bombs reuse one compressed stream."""
    previous_end, previous_name = -1, ""
    for start, end, name in sorted(spans):
        if start < previous_end:
            raise ArchiveError(f"entry overlaps {previous_name!r}", code="zip.bomb", file=name)
        previous_end, previous_name = end, name


def _inflate(raw: memoryview, declared: int, name: str) -> bytes:
    """Inflate a raw deflate stream, refusing to produce more than ``declared`` bytes."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    out = bytearray()
    position = 0
    while not inflater.eof:
        if inflater.unconsumed_tail:
            chunk: bytes | memoryview = inflater.unconsumed_tail
        else:
            chunk = raw[position : position + _INFLATE_CHUNK]
            position += len(chunk)
        try:
            piece = inflater.decompress(chunk, _INFLATE_CHUNK)
        except zlib.error as exc:
            raise ArchiveError(f"deflate stream is corrupt: {exc}", code="zip.corrupt", file=name) from None
        out += piece
        if len(out) > declared:
            raise ArchiveError(
                f"entry inflates past the {declared} bytes its headers declare (zip bomb)",
                code="zip.bomb",
                file=name,
            )
        if not piece and not chunk:
            break
    if not inflater.eof:
        raise ArchiveError("deflate stream is truncated", code="zip.corrupt", file=name)
    return bytes(out)


def _read_entry(data: bytes, info: zipfile.ZipInfo, span: tuple[int, int]) -> bytes:
    raw = memoryview(data)[span[1] - info.compress_size : span[1]]
    name = info.filename
    if info.compress_type == zipfile.ZIP_STORED:
        if len(raw) > info.file_size:
            raise ArchiveError(
                "stored entry is longer than its declared size (zip bomb)", code="zip.bomb", file=name
            )
        content = bytes(raw)
    else:
        content = _inflate(raw, info.file_size, name)
    if len(content) != info.file_size:
        raise ArchiveError("entry size differs from its header", code="zip.corrupt", file=name)
    if zlib.crc32(content) != info.CRC:
        raise ArchiveError("entry CRC-32 does not match its header", code="zip.corrupt", file=name)
    return content


def _open_central_directory(data: bytes) -> list[zipfile.ZipInfo]:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            return archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError, OSError, struct.error) as exc:
        raise ArchiveError(f"not a readable ZIP archive: {exc}", code="zip.corrupt") from None
    except (NotImplementedError, RuntimeError) as exc:
        raise ArchiveError(f"unsupported ZIP feature: {exc}", code="zip.corrupt") from None


def read_archive(data: bytes, limits: IntakeLimits | None = None) -> dict[str, bytes]:
    """Extract a ZIP into memory after every safety check. Returns ``{posix path: bytes}``, sorted."""
    limits = limits or IntakeLimits()
    if len(data) > limits.max_compressed_bytes:
        raise ArchiveError(
            f"archive is {len(data)} bytes; the limit is {limits.max_compressed_bytes}", code="zip.too_large"
        )
    infos = _open_central_directory(data)
    if len(infos) > limits.max_files:
        raise ArchiveError(
            f"archive holds {len(infos)} entries; the limit is {limits.max_files}", code="zip.too_many_files"
        )
    files: list[zipfile.ZipInfo] = []
    for info in infos:
        raw_name = info.orig_filename
        name = raw_name[:-1] if raw_name.endswith("/") else raw_name
        check_entry_name(name, limits)
        _check_entry_kind(info, name)
        if not _is_directory_entry(info):
            files.append(info)
    _check_collisions([info.filename for info in files])
    for info in files:
        check_suffix(info.filename, limits)
    _check_declared_sizes(files, limits)
    spans = [(*_data_span(data, info), info.filename) for info in files]
    _check_no_overlap(spans)
    extracted: dict[str, bytes] = {}
    total = 0
    for info, (start, end, _) in zip(files, spans, strict=True):
        content = _read_entry(data, info, (start, end))
        total += len(content)
        if total > limits.max_total_bytes:  # belt and braces: declared sizes were already summed
            raise ArchiveError("uncompressed total over the limit", code="zip.too_large", file=info.filename)
        check_text(info.filename, content)
        extracted[info.filename] = content
    if not extracted:
        raise ArchiveError("the archive holds no files", code="zip.empty")
    return dict(sorted(extracted.items()))


# ---------------------------------------------------------------------------------------------
# writing


def build_zip(files: Mapping[str, bytes]) -> bytes:
    """Deterministic ZIP of ``files``: sorted names, 1980-01-01 timestamps, mode 0644, deflate."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name in sorted(files):
            info = zipfile.ZipInfo(name, date_time=FIXED_DATE_TIME)
            info.create_system = 3  # Unix, so the mode bits below are meaningful
            info.external_attr = _UNIX_REGULAR << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, files[name], compresslevel=9)
    return buffer.getvalue()


def _walk_project(src: Path) -> Iterator[tuple[str, Path]]:
    """Yield (archive name, path) for every file pack_directory would include, sorted."""
    for path in sorted(src.rglob("*")):
        relative = path.relative_to(src)
        parts = relative.parts
        if any(part in _SKIPPED_DIRS or part.startswith(".") for part in parts):
            continue
        if path.is_symlink():
            raise ArchiveError(
                "symbolic links cannot be packed", code="zip.symlink", file=relative.as_posix()
            )
        if path.is_dir():
            continue
        if not path.is_file():
            raise ArchiveError("not a regular file", code="zip.not_regular", file=relative.as_posix())
        yield relative.as_posix(), path


def collect_directory(src: Path, limits: IntakeLimits | None = None) -> dict[str, bytes]:
    """Read a project directory with the same per-file rules intake applies."""
    limits = limits or IntakeLimits()
    src = Path(src)
    if not src.is_dir():
        raise ArchiveError(f"{src} is not a directory", code="zip.empty")
    files: dict[str, bytes] = {}
    total = 0
    for name, path in _walk_project(src):
        check_entry_name(name, limits)
        check_suffix(name, limits)
        if len(files) >= limits.max_files:
            raise ArchiveError(f"more than {limits.max_files} files", code="zip.too_many_files", file=name)
        content = path.read_bytes()
        total += len(content)
        if total > limits.max_total_bytes:
            raise ArchiveError(
                f"files exceed {limits.max_total_bytes} bytes", code="zip.too_large", file=name
            )
        check_text(name, content)
        files[name] = content
    _check_collisions(list(files))
    if not files:
        raise ArchiveError(f"{src} holds no files to pack", code="zip.empty")
    return files


def pack_directory(src: Path, limits: IntakeLimits | None = None) -> bytes:
    """Pack a project directory into deterministic ZIP bytes.

    Hidden files and directories, ``__pycache__`` and VCS/virtualenv folders are skipped; any
    other file intake would reject (wrong suffix, binary, symlink, bad name) stops the packing.
    """
    limits = limits or IntakeLimits()
    data = build_zip(collect_directory(src, limits))
    if len(data) > limits.max_compressed_bytes:
        raise ArchiveError(
            f"packed archive is {len(data)} bytes; the limit is {limits.max_compressed_bytes}",
            code="zip.too_large",
        )
    return data


def pack_to(src: Path, out: Path, limits: IntakeLimits | None = None) -> str:
    """Pack ``src`` into ``out`` and return the ZIP's sha256 (what a miner commits on chain)."""
    data = pack_directory(src, limits)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    logger.info("packed %s -> %s (%d bytes, sha256 %s)", src, out, len(data), digest)
    return digest
