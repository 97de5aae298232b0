"""Hostile archives, built in code, each rejected with its own stable code; deterministic packing."""

from __future__ import annotations

import hashlib
import os
import stat
import zlib
from pathlib import Path

import pytest
from submission_helpers import MINIMAL_MODEL, RawEntry, local_record, raw_zip, zip_of

from prism.submission import (
    ArchiveError,
    IntakeLimits,
    SubmissionError,
    load_submission_bytes,
    pack_directory,
    pack_to,
)
from prism.submission.archive import read_archive


def rejected_code(data: bytes, limits: IntakeLimits | None = None) -> str:
    with pytest.raises(SubmissionError) as info:
        load_submission_bytes(data, limits=limits)
    assert isinstance(info.value, ArchiveError), info.value
    assert info.value.fault == "miner"
    return info.value.code


def with_model(*entries: RawEntry) -> bytes:
    """A valid one-module project plus the hostile entries (so only they can be the cause)."""
    return raw_zip([RawEntry.of("model.py", MINIMAL_MODEL), *entries])


def test_minimal_project_is_accepted() -> None:
    submission = load_submission_bytes(with_model())
    assert submission.kind == "full"
    assert submission.architecture_entrypoint == "model.py"


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("../evil.py", "zip.traversal"),
        ("src/../../evil.py", "zip.traversal"),
        ("/etc/evil.py", "zip.absolute_path"),
        ("C:/evil.py", "zip.absolute_path"),
        ("src\\evil.py", "zip.backslash"),
        (b"evil\x00.py", "zip.nul_in_name"),
        ("src//evil.py", "zip.bad_name"),
        ("./evil.py", "zip.bad_name"),
        ("my model.py", "zip.bad_name"),
        ("a/b/c/d/e/f/g/h/i.py", "zip.depth"),
        ("x" * 201 + ".py", "zip.path_length"),
    ],
)
def test_hostile_names(name: str | bytes, code: str) -> None:
    assert rejected_code(with_model(RawEntry.of(name, b"x = 1\n"))) == code


def test_symlink_entry() -> None:
    link = RawEntry.of("link.py", b"/etc/passwd", mode=stat.S_IFLNK | 0o777)
    assert rejected_code(with_model(link)) == "zip.symlink"


def test_device_entry() -> None:
    device = RawEntry.of("dev.py", b"", mode=stat.S_IFCHR | 0o644)
    assert rejected_code(with_model(device)) == "zip.not_regular"


def test_plain_directory_entries_are_skipped() -> None:
    directory = RawEntry.of("src/", b"", deflate=False, mode=stat.S_IFDIR | 0o755)
    submission = load_submission_bytes(with_model(directory))
    assert sorted(submission.files) == ["model.py"]


def test_duplicate_names() -> None:
    assert rejected_code(with_model(RawEntry.of("model.py", b"x = 2\n"))) == "zip.duplicate"


def test_case_colliding_names() -> None:
    assert rejected_code(with_model(RawEntry.of("MODEL.py", b"x = 2\n"))) == "zip.case_collision"


def test_file_and_directory_with_one_name() -> None:
    entries = [RawEntry.of("notes.md", b"a\n"), RawEntry.of("notes.md/inner.md", b"b\n")]
    assert rejected_code(with_model(*entries)) == "zip.duplicate"


def test_too_many_files() -> None:
    extra = [RawEntry.of(f"notes/n{i}.md", b"note\n") for i in range(200)]
    assert rejected_code(with_model(*extra)) == "zip.too_many_files"


def test_zip_bomb_with_truthful_headers() -> None:
    zeros = b"\n" * 20_000_000
    data = with_model(RawEntry.of("bomb.txt", zeros))
    assert len(data) < 100_000
    assert rejected_code(data) == "zip.ratio"


def test_total_size_counted_over_entries() -> None:
    entries = [RawEntry.of(f"notes/n{i}.txt", os.urandom(600).hex().encode()) for i in range(10)]
    assert rejected_code(with_model(*entries), IntakeLimits(max_total_bytes=10_000)) == "zip.too_large"


def test_zip_bomb_whose_headers_understate_sizes() -> None:
    bomb = RawEntry.of("bomb.txt", b"\n" * 20_000_000)
    bomb.size = 1_000  # claims 1 kB; a trusting extractor would inflate 20 MB
    bomb.crc = zlib.crc32(b"\n" * 1_000)
    assert rejected_code(with_model(bomb)) == "zip.bomb"


def test_stored_entry_longer_than_declared() -> None:
    entry = RawEntry.of("notes.md", b"hello\n" * 100, deflate=False)
    entry.size = 10
    assert rejected_code(with_model(entry)) == "zip.bomb"


def test_overlapping_entries() -> None:
    # The "better zip bomb" trick: one entry's data region contains another entry's record.
    inner = RawEntry.of("b.md", b"hello\n", deflate=False)
    outer = RawEntry.of("a.md", local_record(inner), deflate=False)
    inner.offset = 30 + len(outer.name)  # right where outer's payload starts
    inner.write_local = False
    data = raw_zip([outer, RawEntry.of("model.py", MINIMAL_MODEL), inner])
    assert rejected_code(data) == "zip.bomb"


def test_encrypted_entry() -> None:
    assert rejected_code(with_model(RawEntry.of("secret.py", b"x = 1\n", flags=0x1))) == "zip.encrypted"


def test_unsupported_compression() -> None:
    entry = RawEntry.of("notes.md", b"x\n", deflate=False, method=12)  # bzip2
    assert rejected_code(with_model(entry)) == "zip.unsupported_compression"


def test_binary_file_with_allowed_suffix() -> None:
    assert rejected_code(with_model(RawEntry.of("weights.py", b"\x00\x01\x02" * 50))) == "zip.binary"


def test_non_utf8_text() -> None:
    assert rejected_code(with_model(RawEntry.of("notes.md", "café".encode("latin-1")))) == "zip.not_utf8"


@pytest.mark.parametrize(
    "name", ["model.pyc", "__pycache__/model.cpython-311.pyc", "lib.so", "LICENSE", "x.PY"]
)
def test_disallowed_suffix(name: str) -> None:
    assert rejected_code(with_model(RawEntry.of(name, b"text\n"))) == "zip.suffix"


def test_bad_crc() -> None:
    entry = RawEntry.of("notes.md", b"hello\n")
    entry.crc ^= 0xFFFF
    assert rejected_code(with_model(entry)) == "zip.corrupt"


def test_truncated_deflate_stream() -> None:
    entry = RawEntry.of("notes.md", os.urandom(3000).hex().encode())
    entry.payload = entry.payload[: len(entry.payload) // 2]
    assert rejected_code(with_model(entry)) == "zip.corrupt"


@pytest.mark.parametrize("data", [b"", b"not a zip", b"PK\x05\x06" + b"\x00" * 18])
def test_not_a_zip(data: bytes) -> None:
    assert rejected_code(data) in {"zip.corrupt", "zip.empty"}


def test_empty_archive() -> None:
    assert rejected_code(raw_zip([])) == "zip.empty"


def test_compressed_size_limit() -> None:
    assert rejected_code(with_model(), IntakeLimits(max_compressed_bytes=100)) == "zip.too_large"


def test_read_archive_returns_sorted_text() -> None:
    files = read_archive(zip_of({"b.md": b"b\n", "a.md": b"a\n"}))
    assert list(files) == ["a.md", "b.md"]


# ---------------------------------------------------------------------------------------------
# packing


def test_pack_is_deterministic_across_copies_and_mtimes(write_project) -> None:
    files = {"prism.yaml": "kind: full\narchitecture:\n  entrypoint: model.py\n", "model.py": MINIMAL_MODEL}
    first = write_project(files, "one")
    second = write_project(files, "two")
    for path in second.rglob("*"):
        os.utime(path, (1_000_000_000, 1_000_000_000))
    assert pack_directory(first) == pack_directory(first)
    assert (
        hashlib.sha256(pack_directory(first)).hexdigest()
        == hashlib.sha256(pack_directory(second)).hexdigest()
    )


def test_pack_skips_caches_and_hidden_files(write_project, tmp_path: Path) -> None:
    root = write_project(
        {
            "model.py": MINIMAL_MODEL,
            "__pycache__/model.cpython-311.pyc": b"\x00compiled",
            ".git/HEAD": "ref: refs/heads/main\n",
            ".env": "SECRET=1\n",
        }
    )
    digest = pack_to(root, tmp_path / "out" / "s.zip")
    data = (tmp_path / "out" / "s.zip").read_bytes()
    assert digest == hashlib.sha256(data).hexdigest()
    assert list(read_archive(data)) == ["model.py"]


def test_pack_refuses_what_intake_would_reject(write_project) -> None:
    with pytest.raises(ArchiveError) as info:
        pack_directory(write_project({"model.py": MINIMAL_MODEL, "weights.bin": b"\x00\x01"}))
    assert info.value.code == "zip.suffix"
    assert info.value.file == "weights.bin"


def test_pack_refuses_symlinks(write_project) -> None:
    root = write_project({"model.py": MINIMAL_MODEL})
    (root / "alias.py").symlink_to(root / "model.py")
    with pytest.raises(ArchiveError) as info:
        pack_directory(root)
    assert info.value.code == "zip.symlink"


def test_pack_refuses_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ArchiveError) as info:
        pack_directory(tmp_path / "empty")
    assert info.value.code == "zip.empty"
