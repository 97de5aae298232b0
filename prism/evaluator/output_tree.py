"""The run's writable directory, walked, locked and removed without trusting its shape (host side).

The training sandbox's output dir is the submission's to fill. Besides odd files (symlinks,
FIFOs: ``artifacts.read_untrusted``) it can shape the *tree*: directories nested thousands deep
(``os.walk`` and ``shutil.rmtree`` recurse, and raise ``RecursionError``), or a few levels of
255-character names, so that every absolute path is past ``PATH_MAX`` and each ``os`` call on one
fails with ``ENAMETOOLONG``. Either made PRISM's own host code raise on the run's output, which
was recorded as the validator's fault and paused every other miner's evaluation.

So the host never walks that tree by path. :func:`walk_tree` holds one directory fd per level
and stops at :data:`MAX_DEPTH` levels, :data:`MAX_ENTRIES` entries and :data:`MAX_RELATIVE_PATH`
characters of relative path: past any of them the run is the miner's (``eval.output_tree``).
:func:`confine_output` applies the limits right after the training sandbox has exited (every
process of it is gone, so the tree no longer changes) and empties a dir over them, so every
later step (reading the outputs, locking them read-only, packing a run for a Ray worker) sees a
bounded tree. :func:`remove_tree` deletes any tree, however deep, with coreutils' ``rm``,
which walks by fd without recursion.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from prism.errors import MinerFault

#: Honest runs write a handful of files two levels deep (checkpoints under checkpoint_dir).
MAX_DEPTH = 24
MAX_ENTRIES = 20_000
#: A path under the run dir stays far inside PATH_MAX (4096) with the run dir's own prefix.
MAX_RELATIVE_PATH = 1024
CODE = "eval.output_tree"

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW


@dataclass(frozen=True)
class TreeEntry:
    """One name under the walked root: its parent dir's fd (valid while the walk is at it)."""

    parent_fd: int
    name: str
    relative: str  # posix path from the root
    kind: str  # "dir" | "file" | "symlink" | "other"
    depth: int  # 1 for the root's own entries


def _kind(entry: os.DirEntry[str]) -> str:
    mode = entry.stat(follow_symlinks=False).st_mode
    if stat.S_ISLNK(mode):
        return "symlink"
    if stat.S_ISDIR(mode):
        return "dir"
    return "file" if stat.S_ISREG(mode) else "other"


def _over(what: str) -> MinerFault:
    return MinerFault(f"the run's output dir {what}", code=CODE)


def _entries(fd: int, relative: str, depth: int, seen: list[int]) -> Iterator[TreeEntry]:
    """The entries of the dir open at ``fd`` and, depth first, of its subdirectories."""
    with os.scandir(fd) as listing:
        names = sorted((entry.name, _kind(entry)) for entry in listing)
    if names and depth > MAX_DEPTH:
        raise _over(f"nests directories deeper than {MAX_DEPTH} levels: {relative[:80]}...")
    for name, kind in names:
        seen[0] += 1
        path = f"{relative}/{name}" if relative else name
        if seen[0] > MAX_ENTRIES:
            raise _over(f"holds more than {MAX_ENTRIES} entries")
        if len(path) > MAX_RELATIVE_PATH:
            raise _over(f"has a path longer than {MAX_RELATIVE_PATH} characters: {path[:80]}...")
        yield TreeEntry(parent_fd=fd, name=name, relative=path, kind=kind, depth=depth)
        if kind != "dir":
            continue
        child = os.open(name, _DIR_FLAGS, dir_fd=fd)
        try:
            yield from _entries(child, path, depth + 1, seen)
        finally:
            os.close(child)


def walk_tree(root: Path) -> Iterator[TreeEntry]:
    """Every entry under ``root`` (a dir), parents before children, sorted by name per dir.

    Raises ``MinerFault`` (``eval.output_tree``) past the limits; symlinks are listed, never
    followed. The recursion is at most :data:`MAX_DEPTH` + 1 deep, with as many fds open.
    """
    fd = os.open(root, _DIR_FLAGS)
    try:
        yield from _entries(fd, "", 1, [0])
    finally:
        os.close(fd)


def chmod_tree(root: Path, *, file_mode: int, dir_mode: int) -> None:
    """chmod every file and dir under ``root`` (not symlinks: chmod would follow them)."""
    if root.is_symlink() or not root.is_dir():
        return
    os.chmod(root, stat.S_IRWXU)  # while walking, every dir stays listable and enterable
    dirs: list[str] = []
    for entry in walk_tree(root):
        if entry.kind == "file":
            os.chmod(entry.name, file_mode, dir_fd=entry.parent_fd)
        elif entry.kind == "dir":
            os.chmod(entry.name, stat.S_IRWXU, dir_fd=entry.parent_fd)
            dirs.append(entry.relative)
    root_fd = os.open(root, _DIR_FLAGS)
    try:
        for relative in reversed(dirs):  # children before their parents
            os.chmod(relative, dir_mode, dir_fd=root_fd)
    finally:
        os.close(root_fd)
    os.chmod(root, dir_mode)


def _coreutils(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise OSError(f"coreutils {name} not found on PATH")
    return found


def _open_up(path: Path) -> None:
    """u+rwx on every dir and file under ``path``: a read-only (or mode 000) dir cannot be listed
    or have its entries unlinked by a non-root owner. chmod -R walks by fd (fts), with no depth
    limit, and does not follow a symlink met inside the tree."""
    subprocess.run([_coreutils("chmod"), "-R", "u+rwx", "--", str(path)], check=False, capture_output=True)


def remove_tree(path: Path) -> None:
    """Delete ``path`` and everything under it, whatever its depth or modes; OSError if it stays."""
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        path.unlink()
        return
    if not path.exists():
        return
    _open_up(path)
    done = subprocess.run(
        [_coreutils("rm"), "-rf", "--", str(path)], check=False, capture_output=True, text=True
    )
    if path.exists():
        raise OSError(f"cannot remove {path}: {done.stderr.strip()[-500:]}")


def confine_output(root: Path) -> MinerFault | None:
    """Apply the tree limits to a sandbox's exited output dir; a dir over them is emptied.

    The modes are opened up first, so a dir the submission made unreadable is walked too; an
    ``OSError`` of the walk after that is the tree's doing (the miner's) as well.
    """
    if not root.is_dir() or root.is_symlink():
        return None
    _open_up(root)
    try:
        for _ in walk_tree(root):
            pass
    except MinerFault as exc:
        fault = exc
    except OSError as exc:
        fault = _over(f"could not be walked: {exc}")
    else:
        return None
    remove_tree(root)
    root.mkdir()
    return fault


__all__ = [
    "CODE",
    "MAX_DEPTH",
    "MAX_ENTRIES",
    "MAX_RELATIVE_PATH",
    "TreeEntry",
    "chmod_tree",
    "confine_output",
    "remove_tree",
    "walk_tree",
]
