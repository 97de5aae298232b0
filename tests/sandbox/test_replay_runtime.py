"""The replay's private runtime copy (prism.evaluator.replay_runtime): real files, real sandbox.

The replay must share no page-cache inode with the main held-out process, so it runs on copies
(new inodes) of the interpreter, the stdlib, the packages and the libraries, bound over the
original paths. These tests build the real copy once (in the default cache, reused across
sessions) and check that it is a copy, that torch runs from it inside bwrap, and that the cache is
reused, rebuilt on a change and pruned.
"""

from __future__ import annotations

import os
import sys
import sysconfig
import threading
from pathlib import Path

import pytest

import prism
from prism.errors import InfrastructureFault
from prism.evaluator import replay_runtime as rr
from prism.evaluator.sandbox import IsolationProbe, SandboxLimits, SandboxSpec, run_sandboxed

TORCH_SO = "libtorch_cpu.so"


@pytest.fixture(scope="module")
def runtime() -> rr.Runtime:
    return rr.build_runtime()


def _torch_library() -> Path:
    import torch

    return Path(torch.__file__).resolve().parent / "lib" / TORCH_SO


def _stdlib_file() -> Path:
    return Path(sysconfig.get_paths()["stdlib"]).resolve() / "os.py"


def _identity(path: Path) -> tuple[int, int]:
    info = os.stat(path)
    return info.st_dev, info.st_ino


@pytest.mark.parametrize("original", [_torch_library, _stdlib_file], ids=["torch-so", "stdlib"])
def test_the_copy_has_new_inodes(runtime: rr.Runtime, original) -> None:  # type: ignore[no-untyped-def]
    source = original()
    copied = runtime.runtime_root / source.relative_to("/")
    assert copied.is_file() and not copied.is_symlink()
    assert copied.stat().st_size == source.stat().st_size
    assert _identity(copied) != _identity(source)  # a copy, not the same inode (nor a hardlink)
    assert copied.stat().st_nlink == 1


def test_the_prism_copy_is_separate(runtime: rr.Runtime) -> None:
    package = Path(prism.__file__).resolve().parent
    copied = runtime.prism_root / package.relative_to("/") / "__init__.py"
    assert _identity(copied) != _identity(package / "__init__.py")
    assert runtime.prism_root.parent.name.startswith("prism-")
    assert runtime.runtime_root.parent.name.startswith("runtime-")


SCRIPT = """
import os, sys
import numpy, torch
import prism.evaluator.heldout, prism.evaluator.program_exec
a = torch.randn(32, 32, dtype=torch.float64)
print("MATMUL", bool(torch.allclose(a @ torch.eye(32, dtype=torch.float64), a)))
for path in sys.argv[1:]:
    info = os.stat(path)
    print("INODE", path, info.st_dev, info.st_ino)
print("SHARE", os.path.exists("/usr/share"))
"""


def test_a_process_on_the_replay_binds_runs_torch(
    runtime: rr.Runtime, bwrap_isolation: IsolationProbe, tmp_path: Path
) -> None:
    binds = rr.replay_binds(bwrap_isolation)
    assert binds is not None
    probes = [_torch_library(), _stdlib_file(), Path(prism.__file__).resolve()]
    spec = SandboxSpec(
        argv=[sys.executable, "-c", SCRIPT, *map(str, probes)],
        binds=list(binds),
        limits=SandboxLimits(
            wall_s=180, memory_bytes=3 << 30, pids=256, cpu_s=300, fsize_bytes=1 << 20, nofile=1024, log_bytes=1 << 20
        ),
    )  # fmt: skip
    result = run_sandboxed(spec, log_path=tmp_path / "replay.log", isolation=bwrap_isolation)
    log = (tmp_path / "replay.log").read_text()
    assert result.exit_code == 0, log
    assert "MATMUL True" in log
    assert "SHARE False" in log  # nothing of the host's /usr beyond the copied libraries
    seen = {parts[1]: (int(parts[2]), int(parts[3])) for parts in (line.split() for line in log.splitlines()) if parts[:1] == ["INODE"]}  # fmt: skip
    for path in probes:
        copy_root = runtime.prism_root if "prism" in path.parts[-2:] else runtime.runtime_root
        assert seen[str(path)] != _identity(path), f"the replay reads the host's own {path}"
        assert seen[str(path)] == _identity(copy_root / path.relative_to("/"))


def test_a_second_build_reuses_the_cache(runtime: rr.Runtime) -> None:
    again = rr.build_runtime()
    assert again.runtime_root == runtime.runtime_root and again.prism_root == runtime.prism_root
    copied = runtime.runtime_root / _stdlib_file().relative_to("/")
    assert _identity(rr.build_runtime().runtime_root / _stdlib_file().relative_to("/")) == _identity(copied)


def _tree(root: Path) -> Path:
    (root / "pkg" / "sub").mkdir(parents=True)
    (root / "pkg" / "a.py").write_text("A = 1\n")
    (root / "pkg" / "sub" / "b.bin").write_bytes(b"\0" * 10000)
    os.symlink("a.py", root / "pkg" / "link.py")
    return root / "pkg"


def test_the_cache_is_reused_rebuilt_on_change_and_pruned(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(rr.RUNTIME_DIR_ENV, str(tmp_path / "cache"))
    package = _tree(tmp_path / "src")
    first = rr.ensure_copy("demo", (package,), (package,), frozenset())
    copied = first / package.relative_to("/")
    assert (copied / "link.py").is_symlink() and os.readlink(copied / "link.py") == "a.py"
    assert _identity(copied / "a.py") != _identity(package / "a.py")
    inode = _identity(copied / "sub" / "b.bin")
    assert rr.ensure_copy("demo", (package,), (package,), frozenset()) == first
    assert _identity(copied / "sub" / "b.bin") == inode  # reused, not rebuilt
    roots = [first]
    for version in (2, 3):
        (package / "a.py").write_text(f"A = {version}\n")
        os.utime(package / "a.py", ns=(version * 10**18, version * 10**18))
        roots.append(rr.ensure_copy("demo", (package,), (package,), frozenset()))
    assert len(set(roots)) == 3
    kept = sorted(p.name for p in (tmp_path / "cache").glob("demo-*"))
    assert kept == sorted(r.parent.name for r in roots[1:])  # the newest two
    assert not list((tmp_path / "cache").glob(".build-*"))


def test_concurrent_builders_build_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(rr.RUNTIME_DIR_ENV, str(tmp_path / "cache"))
    package = _tree(tmp_path / "src")
    found: list[Path] = []

    def build() -> None:
        found.append(rr.ensure_copy("demo", (package,), (package,), frozenset()))

    threads = [threading.Thread(target=build) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(found)) == 1 and len(list((tmp_path / "cache").glob("demo-*"))) == 1


def test_degraded_mode_keeps_the_host_files(degraded_isolation: IsolationProbe) -> None:
    assert rr.replay_binds(degraded_isolation) is None


def test_a_cache_a_heldout_process_can_read_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(rr.RUNTIME_DIR_ENV, str(Path(sys.prefix).resolve() / "prism-replay-cache"))
    with pytest.raises(InfrastructureFault) as caught:
        rr.build_runtime()
    assert caught.value.code == rr.FAILURE_CODE
    assert not (Path(sys.prefix) / "prism-replay-cache").exists()
