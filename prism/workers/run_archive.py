"""A run directory as one deterministic tar (a Ray worker packs it, the validator unpacks it).

A remote worker evaluates into its own scratch directory and ships the whole run directory back
(manifest, artifacts, logs, weights). Packing is deterministic: entries sorted by path, owner 0,
mtime 0, modes reduced to their permission bits, so the same run directory gives the same bytes.
Only regular files and directories travel; anything else (a symlink the sandboxed code left in
its output directory, a device, a fifo) is left out and counted. Unpacking trusts nothing in the
archive: every name must stay inside the target, every member must be a regular file or a
directory, and the total size is bounded. Violations are ``ray.result_corrupt``.
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import stat
import tarfile
import uuid
from pathlib import Path, PurePosixPath

from prism.errors import InfrastructureFault

logger = logging.getLogger(__name__)

#: Default bound on a run directory shipped back from a worker (weights included).
DEFAULT_MAX_RESULT_BYTES = 2 << 30


def _entries(root: Path) -> tuple[list[Path], int]:
    """Every directory and regular file under ``root`` in a stable order, and how many were skipped."""
    kept, skipped = [], 0
    for folder, dirs, files in os.walk(root, followlinks=False):
        dirs.sort()
        base = Path(folder)
        for name in sorted(dirs + files):
            path = base / name
            mode = path.lstat().st_mode
            if stat.S_ISDIR(mode) or stat.S_ISREG(mode):
                kept.append(path)
            else:
                skipped += 1
    return sorted(kept, key=lambda p: p.relative_to(root).as_posix()), skipped


def pack_run_dir(root: Path, *, max_bytes: int = DEFAULT_MAX_RESULT_BYTES) -> bytes:
    """The run directory as tar bytes; ``ray.result_too_large`` above ``max_bytes`` of file data."""
    entries, skipped = _entries(root)
    total = sum(p.lstat().st_size for p in entries if p.is_file())
    if total > max_bytes:
        raise InfrastructureFault(
            f"run directory {root.name} holds {total} bytes, more than the {max_bytes} a worker ships back",
            code="ray.result_too_large",
        )
    if skipped:
        logger.warning("left %d non-regular entries of %s out of its archive", skipped, root.name)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in entries:
            info = tarfile.TarInfo(path.relative_to(root).as_posix())
            info.mode = stat.S_IMODE(path.lstat().st_mode) & 0o755
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            if path.is_dir():
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
                continue
            info.size = path.lstat().st_size
            with path.open("rb") as handle:
                tar.addfile(info, handle)
    return buffer.getvalue()


def _corrupt(message: str) -> InfrastructureFault:
    return InfrastructureFault(message, code="ray.result_corrupt")


def _member_path(target: Path, member: tarfile.TarInfo) -> Path:
    name = PurePosixPath(member.name)
    if name.is_absolute() or not name.parts or any(part in ("", ".", "..") for part in name.parts):
        raise _corrupt(f"archive member {member.name!r} is not a plain relative path")
    if not (member.isreg() or member.isdir()):
        raise _corrupt(f"archive member {member.name!r} is neither a regular file nor a directory")
    return target.joinpath(*name.parts)


def _extract(data: bytes, target: Path, max_bytes: int) -> None:
    modes: list[tuple[Path, int]] = []
    total = 0
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            for member in tar:
                path = _member_path(target, member)
                modes.append((path, member.mode & 0o755))
                if member.isdir():
                    path.mkdir(parents=True, exist_ok=True)
                    continue
                total += member.size
                if total > max_bytes:
                    raise _corrupt(f"archive holds more than {max_bytes} bytes")
                path.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                if source is None:
                    raise _corrupt(f"archive member {member.name!r} has no data")
                with path.open("xb") as handle:
                    shutil.copyfileobj(source, handle)
    except (tarfile.TarError, EOFError) as exc:
        raise _corrupt(f"the run archive does not read as a tar: {exc}") from exc
    except (FileExistsError, IsADirectoryError, NotADirectoryError) as exc:
        raise _corrupt(f"archive member {exc.filename} appears twice or under a file") from exc
    # deepest first, so a read-only directory is closed after everything under it is written
    for path, mode in sorted(modes, key=lambda item: len(item[0].parts), reverse=True):
        path.chmod(mode | (stat.S_IRUSR if path.is_file() else stat.S_IRUSR | stat.S_IXUSR))


def unpack_run_dir(
    data: bytes, runs_dir: Path, run_id: str, *, max_bytes: int = DEFAULT_MAX_RESULT_BYTES
) -> Path:
    """Write the archive as ``runs_dir/run_id`` (replacing an older copy); the run directory."""
    runs_dir.mkdir(parents=True, exist_ok=True)
    staging = runs_dir / f".incoming-{run_id}-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        _extract(data, staging, max_bytes)
        final = runs_dir / run_id
        remove_tree(final)
        staging.rename(final)
    finally:
        remove_tree(staging)
    return final


def remove_tree(path: Path) -> None:
    """Remove a run or scratch directory the evaluator may have left read-only (any depth)."""
    from prism.evaluator.output_tree import remove_tree as remove_any_tree

    remove_any_tree(path)


__all__ = ["DEFAULT_MAX_RESULT_BYTES", "pack_run_dir", "remove_tree", "unpack_run_dir"]
