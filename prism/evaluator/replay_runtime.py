"""A private copy of the held-out runtime for the replay process (host side, no torch).

The main held-out process sees every held-out window; the replay must learn nothing from it. The
page cache is per inode and shared by every process of the machine, so a main process that reads
chosen cold pages of a big bound file leaves them warm, and a replay that reads the same inode
later can tell warm from cold by timing its own reads: a relay of the windows (docs/security.md,
"Lookahead"). The replay therefore runs on files the main process cannot read: a copy (new
inodes, never hardlinks) of the interpreter, the stdlib, the imported and allowlisted packages,
prism, and the shared objects the process maps, bound over their original paths, so nothing of
the host's ``/usr`` or Python prefix is visible to it at all.

The copy is built once per host and runtime fingerprint (sha256 of the selected files' paths,
sizes and mtimes) under ``$PRISM_REPLAY_RUNTIME_DIR`` (default ``~/.cache/prism/replay-runtime``),
in a temporary directory renamed into place under an ``flock``, and the newest two of each kind
are kept. prism is a separate, cheaply rebuilt copy: editing prism does not redo the large one.
"""

from __future__ import annotations

import contextlib
import fcntl
import fnmatch
import functools
import hashlib
import json
import logging
import os
import shutil
import site
import struct
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from prism.errors import InfrastructureFault
from prism.evaluator import sandbox as sb

logger = logging.getLogger(__name__)

RUNTIME_DIR_ENV = "PRISM_REPLAY_RUNTIME_DIR"
FAILURE_CODE = "sandbox.replay_runtime_failed"
#: Fingerprints kept per kind: the current one, and the one a still running replay may use.
KEEP = 2
#: What a held-out / replay process imports (prism.evaluator.heldout imports several lazily).
PROBE_IMPORTS = (
    "prism.evaluator.heldout",
    "prism.evaluator.program_exec",
    "prism.evaluator.loading",
    "prism.evaluator.context",
    "prism.evaluator.graph",
    "prism.evaluator.graph_program",
    "prism.evaluator.untrusted",
    "torch",
    "numpy",
    "safetensors",
    "safetensors.torch",
)
OPTIONAL_IMPORTS = ("einops",)
#: A submission may import any submodule of these: copied whole, with their ``<name>.libs``.
ALLOWLISTED = ("torch", "numpy", "einops")
#: Top-level system paths bound by the sandbox when they are real directories (sandbox.py).
SYSTEM_DIRS = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
#: Loader files the sandbox binds from the host /etc; the replay gets copies.
ETC_FILES = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime")
#: GPU driver libraries are dlopened late (first kernel, JIT): copied with any mapped sibling.
DRIVER_GLOBS = ("libcuda*", "libnvidia*", "libnvrtc*", "libcudnn*", "libcublas*")
#: Locale data glibc may read for the sandbox's LANG=C.UTF-8.
LOCALE_DIRS = ("/usr/lib/locale/C.utf8", "/usr/lib/locale/C.UTF-8")
_PROBE_TIMEOUT_S = 600.0

_PROBE = r"""
import importlib, json, sys
for name in sys.argv[1].split(","):
    importlib.import_module(name)
for name in sys.argv[2].split(","):
    try:
        importlib.import_module(name)
    except ImportError:
        pass
import os, sysconfig
dynload = os.path.join(sysconfig.get_paths()["platstdlib"], "lib-dynload")
for name in sorted(os.listdir(dynload)):  # their libraries too: a submission may import any
    try:
        importlib.import_module(name.split(".")[0])
    except Exception:
        pass
import torch
a = torch.ones(64, 64)
float((a @ a).sum())
if torch.cuda.is_available():  # map the driver's libraries too
    b = a.cuda()
    float((b @ b).sum())
files = set()
for module in list(sys.modules.values()):
    path = getattr(module, "__file__", None)
    if isinstance(path, str):
        files.add(path)
maps = set()
with open("/proc/self/maps") as handle:
    for line in handle:
        parts = line.split(None, 5)
        if len(parts) == 6 and parts[5].startswith("/"):
            maps.add(parts[5].strip())
print(json.dumps({"files": sorted(files), "maps": sorted(maps)}))
"""


@dataclass(frozen=True)
class Selection:
    """What to copy: ``trees`` whole, ``files`` (files or symlinks) one by one; ``roots`` are the
    directories bound over their originals (everything of them not copied becomes invisible)."""

    roots: tuple[Path, ...]
    trees: tuple[Path, ...]
    files: tuple[Path, ...]
    excluded: frozenset[Path] = frozenset()


@dataclass(frozen=True)
class Runtime:
    """A built copy: ``runtime`` (interpreter, stdlib, packages, libraries) and ``prism``."""

    runtime_root: Path
    prism_root: Path
    selection: Selection
    prism_dirs: tuple[Path, ...]

    def binds(self) -> tuple[sb.Bind, ...]:
        """Each copied root over its original path; the sandbox sorts them parents first."""
        binds = [sb.Bind(src=_inside(self.runtime_root, r), dest=r) for r in self.selection.roots]
        for name in ETC_FILES:
            copied = _inside(self.runtime_root, Path("/etc") / name)
            if copied.exists():
                binds.append(sb.Bind(src=copied, dest=Path("/etc") / name))
        binds += [sb.Bind(src=_inside(self.prism_root, p), dest=p) for p in self.prism_dirs]
        return tuple(binds)


# ---------------------------------------------------------------------------------------------
# selection


def _inside(root: Path, original: Path) -> Path:
    """Where ``original`` (absolute) lives in a copy rooted at ``root``."""
    return root / original.relative_to("/")


def _under(path: Path, roots: Iterable[Path]) -> Path | None:
    """The root ``path`` lies in (or is), else None."""
    for root in roots:
        if path == root or root in path.parents:
            return root
    return None


def _site_dirs() -> list[Path]:
    """site-packages directories: whole subtrees the stdlib copy leaves out."""
    dirs = [*site.getsitepackages()]
    user = site.getusersitepackages()
    if site.ENABLE_USER_SITE and user:
        dirs.append(user)
    return [Path(d).resolve() for d in dirs if Path(d).is_dir()]


def bind_roots() -> tuple[Path, ...]:
    """The directories the sandbox shows a held-out process (/usr, real system dirs, the Python
    prefix): the replay gets a copy over each, so it sees none of the host's originals."""
    prism_dirs = set(sb.prism_package_dirs())
    roots = [Path("/usr")]
    roots += [Path(d) for d in SYSTEM_DIRS if Path(d).is_dir() and not Path(d).is_symlink()]
    roots += [b.src for b in sb.python_binds() if b.src not in prism_dirs]
    return tuple(roots)


def run_probe() -> dict[str, list[str]]:
    """Import what the held-out process imports in a host subprocess (trusted code) and report the
    module files and mapped shared objects: the copy then holds everything it needs."""
    parents = dict.fromkeys(str(p.parent) for p in sb.prism_package_dirs())
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(parents), "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "-c", _PROBE, ",".join(PROBE_IMPORTS), ",".join(OPTIONAL_IMPORTS)]
    done = subprocess.run(
        argv, capture_output=True, text=True, env=env, cwd="/", timeout=_PROBE_TIMEOUT_S, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"the runtime probe failed (exit {done.returncode}): {done.stderr[-2000:]}")
    report = json.loads(done.stdout.strip().splitlines()[-1])
    return {"files": list(report["files"]), "maps": list(report["maps"])}


def _elf_interpreter(executable: Path) -> Path | None:
    """PT_INTERP of a 64-bit little-endian ELF file (the dynamic loader's path), else None."""
    with executable.open("rb") as handle:
        data = handle.read(1 << 16)
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        return None
    (phoff,) = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    for i in range(phnum):
        entry = phoff + i * phentsize
        if entry + 56 > len(data):
            break
        if struct.unpack_from("<I", data, entry)[0] == 3:  # PT_INTERP
            (offset,), (size,) = (
                struct.unpack_from("<Q", data, entry + 8),
                struct.unpack_from("<Q", data, entry + 32),
            )
            with executable.open("rb") as handle:
                handle.seek(offset)
                return Path(handle.read(size).rstrip(b"\0").decode())
    return None


def _link_chain(path: Path) -> list[Path]:
    """``path`` and every symlink hop to the file it names (parents resolved at each hop)."""
    chain: list[Path] = []
    current = path.parent.resolve() / path.name
    while current not in chain:
        chain.append(current)
        if not current.is_symlink():
            break
        hop = current.parent / os.readlink(current)
        current = hop.parent.resolve() / hop.name
    return chain


def _sibling_links(targets: set[Path]) -> list[Path]:
    """Symlinks in the same directories that resolve to one of ``targets`` (sonames)."""
    links: list[Path] = []
    for folder in sorted({t.parent for t in targets}):
        with contextlib.suppress(OSError), os.scandir(folder) as entries:
            for entry in entries:
                path = Path(entry.path)
                if entry.is_symlink() and path.resolve() in targets:
                    links.append(path)
    return links


def _driver_siblings(targets: set[Path]) -> list[Path]:
    """GPU driver libraries next to a mapped one (dlopened later than the probe can see)."""
    found: list[Path] = []
    for folder in sorted(
        {t.parent for t in targets if any(fnmatch.fnmatch(t.name, g) for g in DRIVER_GLOBS)}
    ):
        for entry in folder.iterdir():
            if any(fnmatch.fnmatch(entry.name, g) for g in DRIVER_GLOBS):
                found.append(entry)
    return found


def _site_entry(path: Path, site_dirs: list[Path]) -> Path | None:
    """The top-level entry of a site-packages directory that ``path`` belongs to."""
    for folder in site_dirs:
        if folder in path.parents:
            return folder / path.relative_to(folder).parts[0]
    return None


def _package_trees(report: dict[str, list[str]], site_dirs: list[Path], prism_dirs: set[Path]) -> set[Path]:
    """Whole site-packages entries: every imported top-level package, every one holding a mapped
    library, and the allowlisted packages (with their auditwheel ``.libs``)."""
    trees: set[Path] = set()
    for raw in (*report["files"], *report["maps"]):
        entry = _site_entry(Path(raw).resolve(), site_dirs)
        if entry is not None and entry.exists():
            trees.add(entry)
    for folder in site_dirs:
        for name in ALLOWLISTED:
            trees.update(p for p in (folder / name, folder / f"{name}.libs") if p.exists())
    return {t for t in trees if t.suffix != ".pth" and not _under(t, prism_dirs)}


def _library_files(report: dict[str, list[str]], roots: tuple[Path, ...]) -> set[Path]:
    """Mapped shared objects under the bound roots, their soname links, the loader, the
    interpreter and libpython."""
    mapped = {Path(m).resolve() for m in report["maps"] if Path(m).is_file()}
    mapped = {m for m in mapped if _under(m, roots)}
    files = set(mapped) | set(_sibling_links(mapped)) | set(_driver_siblings(mapped))
    executable = Path(sys.executable)
    files.update(_link_chain(executable))
    interpreter = _elf_interpreter(executable.resolve())
    if interpreter is not None:
        files.update(_link_chain(interpreter))
    libdir, library = sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("LDLIBRARY")
    if libdir and library and (Path(libdir) / library).exists():
        files.update(_link_chain(Path(libdir) / library))
    venv_cfg = executable.parent.parent / "pyvenv.cfg"
    if venv_cfg.is_file():
        files.add(venv_cfg.resolve())
    return {f for f in files if _under(f, roots)}


def select(report: dict[str, list[str]]) -> Selection:
    """Decide what the copy holds from a probe report (see :func:`run_probe`)."""
    roots, site_dirs = bind_roots(), _site_dirs()
    prism_dirs = set(sb.prism_package_dirs())
    stdlib = {Path(sysconfig.get_paths()[k]).resolve() for k in ("stdlib", "platstdlib")}
    trees = stdlib | _package_trees(report, site_dirs, prism_dirs)
    trees |= {Path(d) for d in LOCALE_DIRS if Path(d).is_dir()}
    trees = {t for t in trees if _under(t, roots)}
    files = {f for f in _library_files(report, roots) if not _under(f, trees)}
    etc = {Path("/etc") / n for n in ETC_FILES if (Path("/etc") / n).exists()}
    return Selection(
        roots=roots,
        trees=tuple(sorted(trees)),
        files=tuple(sorted(files | etc)),
        excluded=frozenset(site_dirs) | frozenset(prism_dirs),
    )


# ---------------------------------------------------------------------------------------------
# fingerprint and copy


def _walk(path: Path, excluded: frozenset[Path]) -> Iterator[Path]:
    """Files and symlinks of a tree (not following links), minus ``excluded`` subtrees."""
    if path.is_symlink() or not path.is_dir():
        yield path
        return
    for folder, dirs, names in os.walk(path):
        base = Path(folder)
        dirs[:] = sorted(d for d in dirs if base / d not in excluded)
        for name in sorted(names + [d for d in dirs if (base / d).is_symlink()]):
            yield base / name


def fingerprint(items: Iterable[Path], excluded: frozenset[Path] = frozenset()) -> str:
    """sha256 over (path, size, mtime_ns) of every file; ``__pycache__`` is left out, since the
    host writes bytecode as it imports and that must not force a rebuild (it is still copied)."""
    digest = hashlib.sha256()
    for item in items:
        for path in _walk(item, excluded):
            if "__pycache__" in path.parts:
                continue
            with contextlib.suppress(FileNotFoundError):
                info = path.lstat()
                digest.update(f"{path}\0{info.st_size}\0{info.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _copy_item(source: Path, root: Path, excluded: frozenset[Path]) -> None:
    """Copy a file, symlink or tree to ``root/<source>``: real copies (new inodes), links as links."""
    target = _inside(root, source)
    target.parent.mkdir(parents=True, exist_ok=True)
    if source.is_symlink():
        if not target.is_symlink():
            os.symlink(os.readlink(source), target)
    elif source.is_dir():

        def ignore(folder: str, names: list[str]) -> list[str]:
            return [n for n in names if Path(folder) / n in excluded]

        shutil.copytree(source, target, symlinks=True, ignore=ignore, dirs_exist_ok=True)
    elif source.exists():
        shutil.copy2(source, target)  # a copy, never a hardlink: the page cache is per inode


def _cache_root() -> Path:
    raw = os.environ.get(RUNTIME_DIR_ENV)
    return Path(raw).expanduser() if raw else Path.home() / ".cache" / "prism" / "replay-runtime"


@contextlib.contextmanager
def _locked(cache: Path) -> Iterator[None]:
    """One builder per cache directory at a time (pytest-xdist workers, validator workers)."""
    cache.mkdir(parents=True, exist_ok=True)
    with (cache / ".lock").open("a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _prune(cache: Path, kind: str) -> None:
    """Keep the newest ``KEEP`` copies of a kind; remove builds a crashed builder left (called
    under the lock, so no build is in progress)."""
    for stale in cache.glob(f".build-{kind}-*"):
        shutil.rmtree(stale, ignore_errors=True)
    built = sorted(cache.glob(f"{kind}-*"), key=lambda p: p.stat().st_mtime_ns, reverse=True)
    for old in built[KEEP:]:
        shutil.rmtree(old, ignore_errors=True)


def ensure_copy(
    kind: str, items: tuple[Path, ...], roots: tuple[Path, ...], excluded: frozenset[Path]
) -> Path:
    """The root of the copy of ``items`` for their current fingerprint, built if missing."""
    cache = _cache_root()
    final = cache / f"{kind}-{fingerprint(items, excluded)[:32]}"
    if not final.is_dir():
        with _locked(cache):
            if not final.is_dir():
                _build(cache, kind, final, items, roots, excluded)
                _prune(cache, kind)
    os.utime(final)  # the newest in use is kept by the next prune
    return final / "root"


def _build(
    cache: Path,
    kind: str,
    final: Path,
    items: tuple[Path, ...],
    roots: tuple[Path, ...],
    excluded: frozenset[Path],
) -> None:
    """Copy into a temporary directory, then rename it into place (atomic)."""
    started = time.monotonic()
    building = Path(tempfile.mkdtemp(prefix=f".build-{kind}-", dir=cache))
    try:
        root = building / "root"
        for folder in roots:
            _inside(root, folder).mkdir(parents=True, exist_ok=True)
        for item in items:
            _copy_item(item, root, excluded)
        size = sum(p.lstat().st_size for p in _walk(root, frozenset()))
        manifest = {"items": [str(i) for i in items], "bytes": size, "seconds": time.monotonic() - started}
        (building / "manifest.json").write_text(json.dumps(manifest, indent=1), encoding="utf-8")
        os.rename(building, final)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    logger.info(
        "replay runtime %s: %.0f MB copied in %.1f s", final.name, size / 1e6, time.monotonic() - started
    )


# ---------------------------------------------------------------------------------------------
# entry points


@functools.cache
def _selection() -> Selection:
    """The probe runs once per host process: what is imported does not change while it runs."""
    return select(run_probe())


def _check_private(cache: Path) -> None:
    """The copy is private only if no held-out process can read it: not under a bound path."""
    shown = [Path("/usr"), Path("/etc"), *(b.src for b in sb.python_binds())]
    if _under(cache.resolve(), shown):
        raise InfrastructureFault(
            f"{RUNTIME_DIR_ENV} ({cache}) lies under {_under(cache.resolve(), shown)}, which every held-out "
            "process can read: the replay's copy would not be private",
            code=FAILURE_CODE,
        )


def build_runtime() -> Runtime:
    """The replay's private runtime for this host, built (or reused) now."""
    _check_private(_cache_root())
    try:
        selection = _selection()
        prism_dirs = tuple(sb.prism_package_dirs())
        items = (*selection.trees, *selection.files)
        runtime_root = ensure_copy("runtime", items, selection.roots, selection.excluded)
        prism_root = ensure_copy("prism", prism_dirs, prism_dirs, frozenset())
    except (OSError, RuntimeError, ValueError, KeyError, subprocess.SubprocessError) as exc:
        raise InfrastructureFault(
            f"cannot build the replay's private runtime copy: {exc}", code=FAILURE_CODE
        ) from exc
    return Runtime(runtime_root, prism_root, selection, prism_dirs)


@functools.cache
def _warn_degraded() -> None:
    logger.warning(
        "degraded sandbox: the replay reads the same host files as the main held-out process "
        "(a page-cache timing channel stays open); degraded runs are never score-eligible"
    )


def replay_binds(isolation: sb.IsolationProbe) -> tuple[sb.Bind, ...] | None:
    """The binds that replace ``python_binds()`` for a replay process, or None where binds
    cannot be remapped (degraded mode: today's shared files, logged once)."""
    if isolation.mode != "bwrap":
        _warn_degraded()
        return None
    return build_runtime().binds()


def private_copy(source: Path, target: Path) -> Path:
    """A per-run copy of a directory (the submission, the weights): new inodes the main process
    never read. Raises InfrastructureFault when it cannot be made."""
    try:
        shutil.copytree(source, target, symlinks=True)
    except OSError as exc:
        raise InfrastructureFault(f"cannot copy {source} for the replay: {exc}", code=FAILURE_CODE) from exc
    return target


__all__ = [
    "FAILURE_CODE",
    "RUNTIME_DIR_ENV",
    "Runtime",
    "Selection",
    "build_runtime",
    "ensure_copy",
    "fingerprint",
    "private_copy",
    "replay_binds",
    "run_probe",
    "select",
]
