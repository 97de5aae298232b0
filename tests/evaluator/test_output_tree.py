"""The host's walk, lock and removal of a sandbox's output tree, whatever shape it was given."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from prism.errors import MinerFault
from prism.evaluator import output_tree
from prism.evaluator.artifacts import make_read_only
from prism.evaluator.output_tree import (
    MAX_DEPTH,
    chmod_tree,
    confine_output,
    remove_tree,
    walk_tree,
)


def nest(root: Path, depth: int, name: str) -> None:
    """``depth`` nested dirs, made by fd as a sandboxed process can (no long path on its side)."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(depth):
        os.mkdir(name, dir_fd=fd)
        child = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = child
    os.close(fd)


@pytest.fixture
def out(tmp_path: Path) -> Path:
    root = tmp_path / "sandbox_out"
    root.mkdir()
    yield root
    remove_tree(tmp_path)  # pytest's own cleanup recurses, as os.walk does


def test_an_honest_tree_is_walked_parents_first_with_kinds(out: Path) -> None:
    (out / "checkpoints" / "step_8").mkdir(parents=True)
    (out / "checkpoints" / "step_8" / "model.safetensors").write_bytes(b"x")
    (out / "probe.jsonl").write_text("{}\n")
    (out / "link").symlink_to("/etc/hostname")
    os.mkfifo(out / "pipe")
    seen = [(e.relative, e.kind, e.depth) for e in walk_tree(out)]
    assert seen == [
        ("checkpoints", "dir", 1),
        ("checkpoints/step_8", "dir", 2),
        ("checkpoints/step_8/model.safetensors", "file", 3),
        ("link", "symlink", 1),
        ("pipe", "other", 1),
        ("probe.jsonl", "file", 1),
    ]
    assert confine_output(out) is None and (out / "probe.jsonl").exists()


@pytest.mark.parametrize(
    ("depth", "name", "limit"),
    [(1500, "a", "deeper than"), (MAX_DEPTH + 1, "d", "deeper than"), (20, "b" * 250, "path longer than")],
    ids=["past-the-recursion-limit", "one-past-the-depth-cap", "past-path-max"],
)
def test_a_tree_over_the_limits_is_the_miners_and_is_emptied(
    out: Path, depth: int, name: str, limit: str
) -> None:
    nest(out, depth, name)
    (out / "weights.safetensors").write_bytes(b"trained")
    with pytest.raises(MinerFault, match=limit) as raised:
        list(walk_tree(out))
    assert raised.value.code == "eval.output_tree"
    fault = confine_output(out)
    assert fault is not None and fault.code == "eval.output_tree" and limit in fault.message
    assert out.is_dir() and not any(out.iterdir())  # nothing of it is read afterwards


def test_the_deepest_allowed_tree_is_kept(out: Path) -> None:
    nest(out, MAX_DEPTH, "d")
    assert confine_output(out) is None
    assert len(list(walk_tree(out))) == MAX_DEPTH


def test_too_many_entries_are_the_miners(out: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(output_tree, "MAX_ENTRIES", 50)
    for i in range(51):
        (out / f"f{i}").write_bytes(b"")
    fault = confine_output(out)
    assert fault is not None and "more than 50 entries" in fault.message


def test_an_unreadable_dir_is_opened_up_and_walked(out: Path) -> None:
    (out / "locked" / "inner").mkdir(parents=True)
    (out / "locked" / "inner").chmod(0)
    (out / "locked").chmod(0)
    assert confine_output(out) is None
    assert [e.relative for e in walk_tree(out)] == ["locked", "locked/inner"]


def test_locking_read_only_does_not_follow_symlinks(tmp_path: Path, out: Path) -> None:
    outside = tmp_path / "host_file"
    outside.write_text("the host's")
    outside.chmod(0o600)
    (out / "sub").mkdir()
    (out / "sub" / "f").write_text("x")
    (out / "sub" / "to_host").symlink_to(outside)
    make_read_only(out)
    assert stat.S_IMODE(outside.stat().st_mode) == 0o600
    assert stat.S_IMODE((out / "sub" / "f").stat().st_mode) == 0o444
    assert stat.S_IMODE((out / "sub").stat().st_mode) == 0o555
    chmod_tree(out, file_mode=0o600, dir_mode=0o700)
    (out / "sub" / "f").write_text("writable again")


def test_any_tree_is_removed_read_only_and_deep(tmp_path: Path) -> None:
    root = tmp_path / "run"
    root.mkdir()
    nest(root, 1500, "a")
    nest(root, 20, "b" * 250)
    os.chmod(root, 0o500)
    remove_tree(root)
    assert not root.exists()
    remove_tree(root)  # already gone: nothing to do
    link = tmp_path / "link"
    link.symlink_to(tmp_path)
    remove_tree(link)
    assert not link.is_symlink() and tmp_path.is_dir()
