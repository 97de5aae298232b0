"""End-to-end intake: the examples, the single-file form, fingerprints, hooks, write_to."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from submission_helpers import EXAMPLES, MINIMAL_MODEL, zip_of

from prism.errors import OperatorError
from prism.submission import (
    ArchiveError,
    IntakeLimits,
    check_submission,
    load_submission,
    load_submission_bytes,
    pack_directory,
)
from prism.submission.archive import read_archive


@pytest.mark.parametrize("name", ["tiny", "gpt", "single_file.py"])
def test_examples_pass(name: str) -> None:
    report = check_submission(EXAMPLES / name)
    assert report.ok, report.problems
    assert report.submission is not None and report.submission.kind == "full"


def test_tiny_example_layout_matches_its_manifest() -> None:
    submission = load_submission(EXAMPLES / "tiny")
    assert submission.architecture_entrypoint == "src/model.py"
    assert submission.architecture_files == ("src/model.py", "src/layers.py")
    assert submission.training_entrypoint == "src/train.py"
    assert submission.training_files == ("src/train.py", "src/losses.py")
    assert submission.python_paths == ("src", ".")


def test_gpt_example_declares_its_optimizer_hook() -> None:
    assert dict(load_submission(EXAMPLES / "gpt").hooks) == {"configure_optimizer": "src/train.py"}


def test_single_file_becomes_its_deterministic_zip(tmp_path: Path) -> None:
    source = (EXAMPLES / "single_file.py").read_bytes()
    from_path = load_submission(EXAMPLES / "single_file.py")
    from_bytes = load_submission_bytes(source, filename="single_file.py")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "single_file.py").write_bytes(source)
    assert (
        from_path.zip_sha256
        == from_bytes.zip_sha256
        == hashlib.sha256(pack_directory(tmp_path / "d")).hexdigest()
    )
    assert from_path.zip_sha256 == hashlib.sha256(from_path.zip_bytes).hexdigest()
    assert read_archive(from_path.zip_bytes) == {"single_file.py": source}
    assert (from_path.kind, from_path.architecture_entrypoint) == ("full", "single_file.py")


def test_directory_zip_and_bytes_agree() -> None:
    data = pack_directory(EXAMPLES / "tiny")
    a = load_submission(EXAMPLES / "tiny")
    b = load_submission_bytes(data)
    assert a.zip_sha256 == b.zip_sha256 == hashlib.sha256(data).hexdigest()
    assert (a.architecture_fingerprint, a.training_fingerprint) == (
        b.architecture_fingerprint,
        b.training_fingerprint,
    )


def _foreign_zip(files: dict[str, bytes], *, reverse: bool, date: tuple[int, ...], level: int) -> bytes:
    """A ZIP written the way other tools do: any order, real timestamps, other compression."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=level) as archive:
        for name in sorted(files, reverse=reverse):
            archive.writestr(zipfile.ZipInfo(name, date_time=date), files[name])
    return buffer.getvalue()


def test_fingerprints_survive_rezipping_and_whitespace() -> None:
    original = load_submission(EXAMPLES / "tiny")
    files = dict(original.files)
    rezipped = load_submission_bytes(_foreign_zip(files, reverse=True, date=(2024, 5, 6, 7, 8, 10), level=1))
    crlf = {
        name: content.replace(b"\n", b"  \r\n") + b"\r\n\r\n" if name.endswith(".py") else content
        for name, content in files.items()
    }
    windows = load_submission_bytes(_foreign_zip(crlf, reverse=False, date=(2025, 1, 1, 0, 0, 0), level=6))
    assert rezipped.zip_sha256 != original.zip_sha256
    for other in (rezipped, windows):
        assert other.architecture_fingerprint == original.architecture_fingerprint
        assert other.training_fingerprint == original.training_fingerprint


def test_fingerprints_follow_their_own_role() -> None:
    base = dict(load_submission(EXAMPLES / "tiny").files)
    changed_training = {**base, "src/losses.py": base["src/losses.py"] + b"\nSCALE = 2\n"}
    changed_architecture = {**base, "src/layers.py": base["src/layers.py"] + b"\nWIDTH = 2\n"}
    original = load_submission_bytes(zip_of(base))
    after_training = load_submission_bytes(zip_of(changed_training))
    after_architecture = load_submission_bytes(zip_of(changed_architecture))
    assert after_training.architecture_fingerprint == original.architecture_fingerprint
    assert after_training.training_fingerprint != original.training_fingerprint
    assert after_architecture.architecture_fingerprint != original.architecture_fingerprint
    assert after_architecture.training_fingerprint == original.training_fingerprint


def test_hooks_prefer_training_entrypoint_then_architecture() -> None:
    model = MINIMAL_MODEL + b"\n\ndef infer(model, batch, ctx):\n    return model(batch)\n"
    model += b"\n\ndef compute_loss(model, batch, ctx):\n    return None\n"
    train = (
        b"from losses import compute_loss\n\n\ndef train_step(model, batch, optimizer, ctx):\n    return None\n"
        b"\n\ndef configure_optimizer(model, recipe, ctx):\n    return None\n\n\ndef not_a_hook():\n    pass\n"
    )
    files = {
        "prism.yaml": b"kind: full\narchitecture:\n  entrypoint: model.py\n"
        b"training:\n  entrypoint: train.py\n  files: [losses.py]\n",
        "model.py": model,
        "train.py": train,
        "losses.py": b"def compute_loss(model, batch, ctx):\n    return None\n",
    }
    hooks = dict(load_submission_bytes(zip_of(files)).hooks)
    assert hooks == {
        "configure_optimizer": "train.py",
        "infer": "model.py",
        "compute_loss": "train.py",
        "train_step": "train.py",
    }


def test_write_to_materializes_every_file(tmp_path: Path) -> None:
    submission = load_submission(EXAMPLES / "tiny")
    dest = tmp_path / "out" / "submission"
    submission.write_to(dest)
    written = {p.relative_to(dest).as_posix(): p.read_bytes() for p in dest.rglob("*") if p.is_file()}
    assert written == dict(submission.files)
    with pytest.raises(OperatorError):
        submission.write_to(dest)


def test_check_report_json_shape() -> None:
    report = check_submission(EXAMPLES / "gpt").to_dict()
    assert report["ok"] is True and report["problems"] == []
    assert report["submission"]["hooks"] == {"configure_optimizer": "src/train.py"}
    assert len(report["submission"]["zip_sha256"]) == 64


def test_check_collects_archive_error_as_one_problem(tmp_path: Path) -> None:
    path = tmp_path / "bad.zip"
    path.write_bytes(b"definitely not a zip")
    report = check_submission(path)
    assert not report.ok and report.submission is None
    assert [p.code for p in report.problems] == ["zip.corrupt"]


def test_missing_path_is_an_operator_error(tmp_path: Path) -> None:
    with pytest.raises(OperatorError):
        load_submission(tmp_path / "nope.zip")


def test_oversized_file_refused_before_reading(tmp_path: Path) -> None:
    path = tmp_path / "big.zip"
    path.write_bytes(b"\0" * 2048)
    report = check_submission(path, IntakeLimits(max_compressed_bytes=1024))
    assert [p.code for p in report.problems] == ["zip.too_large"]


def test_single_file_with_bad_name_is_rejected() -> None:
    with pytest.raises(ArchiveError) as info:
        load_submission_bytes(MINIMAL_MODEL, filename="my model.py")
    assert info.value.code == "zip.bad_name"


def check_submission_from(tmp_path: Path, files: dict[str, bytes]):
    path = tmp_path / "s.zip"
    path.write_bytes(zip_of(files))
    return check_submission(path)


def test_intake_never_runs_submission_code(tmp_path: Path) -> None:
    marker = tmp_path / "executed"
    # Module-level code that would leave a mark if anything imported or ran it (the gate rejects
    # the `open`, but intake must not get as far as running it either way).
    source = MINIMAL_MODEL + f"\nopen({str(marker)!r}, 'w').write('ran')\n".encode()
    report = check_submission_from(tmp_path, {"model.py": source})
    assert [p.code for p in report.problems] == ["static.forbidden_call"]
    assert not marker.exists()


def test_intake_imports_neither_torch_nor_bittensor() -> None:
    code = (
        "import sys, json; from prism.submission import load_submission;"
        f"load_submission({str(EXAMPLES / 'gpt')!r});"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'bittensor'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert json.loads(out.stdout) == []
