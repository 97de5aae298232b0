"""Checkpoint return rules: every accepted shape and every rejected one, on real files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from prism.errors import MinerFault
from prism.evaluator.checkpoints import accept_checkpoint, workspace_bytes
from prism.evaluator.interface import CHECKPOINT_WORKSPACE_CAP_BYTES


@pytest.fixture
def ckpt(tmp_path: Path) -> Path:
    directory = tmp_path / "checkpoints"
    (directory / "step10").mkdir(parents=True)
    (directory / "step10" / "model.bin").write_bytes(b"x" * 100)
    (directory / "final.bin").write_bytes(b"y" * 50)
    return directory


def test_none_records_nothing(ckpt: Path) -> None:
    assert accept_checkpoint(None, ckpt) is None


def test_relative_string_is_accepted_with_workspace_size(ckpt: Path) -> None:
    accepted = accept_checkpoint("final.bin", ckpt)
    assert accepted is not None
    assert accepted.path == "final.bin"
    assert accepted.metadata == {}
    assert accepted.workspace_bytes == 150


def test_exact_dict_with_json_metadata_is_accepted(ckpt: Path) -> None:
    accepted = accept_checkpoint(
        {"path": "step10", "metadata": {"step": 10, "loss": 2.5, "tags": ["a"]}}, ckpt
    )
    assert accepted is not None
    assert accepted.path == "step10"
    assert accepted.metadata == {"step": 10, "loss": 2.5, "tags": ["a"]}


@pytest.mark.parametrize(
    ("returned", "code"),
    [
        ("/etc/passwd", "checkpoint.absolute_path"),
        ("../outside.bin", "checkpoint.traversal"),
        ("step10/../../x", "checkpoint.traversal"),
        ("missing.bin", "checkpoint.missing"),
        ("", "checkpoint.bad_path"),
        (42, "checkpoint.bad_return"),
        ({"path": "final.bin", "metadata": {}, "extra": 1}, "checkpoint.bad_return"),
        ({"path": "final.bin"}, "checkpoint.bad_return"),
        ({"path": "final.bin", "metadata": {"x": float("nan")}}, "checkpoint.bad_metadata"),
        ({"path": "final.bin", "metadata": {"x": object()}}, "checkpoint.bad_metadata"),
        ({"path": "final.bin", "metadata": {1: "non-str key"}}, "checkpoint.bad_metadata"),
        ({"path": "final.bin", "metadata": "not a dict"}, "checkpoint.bad_metadata"),
    ],
)
def test_bad_returns_are_typed_miner_faults(ckpt: Path, returned: object, code: str) -> None:
    with pytest.raises(MinerFault) as info:
        accept_checkpoint(returned, ckpt)
    assert info.value.code == code
    assert info.value.fault == "miner"


def test_symlink_path_is_rejected(ckpt: Path, tmp_path: Path) -> None:
    (tmp_path / "elsewhere.bin").write_bytes(b"z")
    os.symlink(tmp_path / "elsewhere.bin", ckpt / "link.bin")
    with pytest.raises(MinerFault) as info:
        accept_checkpoint("link.bin", ckpt)
    assert info.value.code == "checkpoint.symlink"


def test_symlinked_directory_inside_path_is_rejected(ckpt: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside_dir"
    outside.mkdir()
    (outside / "w.bin").write_bytes(b"w")
    os.symlink(outside, ckpt / "sub")
    with pytest.raises(MinerFault) as info:
        accept_checkpoint("sub/w.bin", ckpt)
    assert info.value.code == "checkpoint.symlink"


def test_a_symlink_anywhere_in_the_workspace_is_rejected_even_for_a_clean_path(ckpt: Path) -> None:
    os.symlink("/etc", ckpt / "step10" / "etc")
    with pytest.raises(MinerFault) as info:
        accept_checkpoint("final.bin", ckpt)
    assert info.value.code == "checkpoint.symlink"


def test_workspace_cap_is_exactly_ten_decimal_gigabytes(ckpt: Path) -> None:
    assert CHECKPOINT_WORKSPACE_CAP_BYTES == 10_000_000_000
    # Sparse files: the apparent size counts, so this costs no disk.
    big = ckpt / "big.bin"
    with big.open("wb") as fh:
        fh.truncate(CHECKPOINT_WORKSPACE_CAP_BYTES - 150)
    assert workspace_bytes(ckpt) == CHECKPOINT_WORKSPACE_CAP_BYTES
    assert accept_checkpoint("big.bin", ckpt) is not None  # at the cap: fine
    (ckpt / "one_more.bin").write_bytes(b"!")
    with pytest.raises(MinerFault) as info:
        accept_checkpoint("big.bin", ckpt)
    assert info.value.code == "checkpoint.workspace_exceeded"
    with pytest.raises(MinerFault):
        accept_checkpoint(None, ckpt)
