"""PRISM v1 projects pass intake unmodified; the two-script format gets one clear error."""

from __future__ import annotations

from pathlib import Path

import pytest
from submission_helpers import MINIMAL_MODEL, zip_of

from prism.submission import SubmissionError, check_submission, load_submission, load_submission_bytes
from prism.submission.archive import collect_directory

V1_PROJECT = Path(__file__).resolve().parent / "projects" / "v1_layout"


def v1_files() -> dict[str, bytes]:
    return collect_directory(V1_PROJECT)


def test_v1_layout_is_accepted_as_it_is() -> None:
    report = check_submission(V1_PROJECT)
    assert report.ok, report.problems
    submission = report.submission
    assert submission is not None
    assert submission.architecture_files == ("src/model.py", "src/layers.py")
    assert submission.training_files == ("src/train.py", "src/layers.py")
    assert submission.unattributed_files == ("src/__init__.py", "submission_singlefile.py")
    # The shared helper counts in both fingerprints; nothing imports the unlisted files.
    assert submission.architecture_fingerprint_files == ("src/model.py", "src/layers.py")
    assert submission.training_fingerprint_files == ("src/train.py", "src/layers.py")
    assert dict(submission.hooks) == {
        "configure_optimizer": "src/train.py",
        "inference_logits": "src/train.py",
        "compute_loss": "src/train.py",
        "train_step": "src/train.py",
    }


def test_shared_helper_changes_both_fingerprints() -> None:
    base = v1_files()
    before = load_submission_bytes(zip_of(base))
    edited = {**base, "src/layers.py": base["src/layers.py"] + b"\nEXTRA = 1\n"}
    after = load_submission_bytes(zip_of(edited))
    assert after.architecture_fingerprint != before.architecture_fingerprint
    assert after.training_fingerprint != before.training_fingerprint


def test_unattributed_files_outside_the_import_graph_change_no_fingerprint() -> None:
    base = v1_files()
    before = load_submission_bytes(zip_of(base))
    edited = {**base, "submission_singlefile.py": base["submission_singlefile.py"] + b"\nEXTRA = 1\n"}
    after = load_submission_bytes(zip_of(edited))
    assert after.zip_sha256 != before.zip_sha256
    assert (after.architecture_fingerprint, after.training_fingerprint) == (
        before.architecture_fingerprint,
        before.training_fingerprint,
    )


def test_unattributed_file_imported_by_the_model_joins_the_architecture_fingerprint() -> None:
    base = v1_files()
    base["src/layers.py"] = b"from units import WIDTH_STEP\n" + base["src/layers.py"]
    base["src/units.py"] = b"WIDTH_STEP = 8\n"
    submission = load_submission_bytes(zip_of(base))
    assert "src/units.py" in submission.unattributed_files
    assert "src/units.py" in submission.architecture_fingerprint_files
    # layers.py is a training file too, so the training code can import it as well.
    assert "src/units.py" in submission.training_fingerprint_files
    edited = load_submission_bytes(zip_of({**base, "src/units.py": b"WIDTH_STEP = 16\n"}))
    assert edited.architecture_fingerprint != submission.architecture_fingerprint


@pytest.mark.parametrize(
    ("importer", "reached"),
    [
        (b"import blocks.attention\n", {"blocks/__init__.py", "blocks/attention.py"}),
        (b"from blocks import attention\n", {"blocks/__init__.py", "blocks/attention.py"}),
        (b"from blocks.attention import Attention\n", {"blocks/__init__.py", "blocks/attention.py"}),
        (
            b"def later():\n    from blocks import mlp\n    return mlp\n",
            {"blocks/__init__.py", "blocks/mlp.py"},
        ),
    ],
)
def test_import_graph_forms(importer: bytes, reached: set[str]) -> None:
    files = {
        "prism.yaml": b"kind: architecture_only\narchitecture:\n  entrypoint: model.py\n",
        "model.py": importer + MINIMAL_MODEL,
        "blocks/__init__.py": b"",
        "blocks/attention.py": b"from . import shared\n\nAttention = 1\n",
        "blocks/shared.py": b"VALUE = 2\n",
        "blocks/mlp.py": b"MLP = 3\n",
        "spare.py": b"UNUSED = 4\n",
    }
    submission = load_submission_bytes(zip_of(files))
    fingerprinted = set(submission.architecture_fingerprint_files) - {"model.py"}
    # `from . import shared` in attention.py reaches shared.py through the relative import.
    expected = reached | ({"blocks/shared.py"} if "blocks/attention.py" in reached else set())
    assert fingerprinted == expected
    assert "spare.py" in submission.unattributed_files


TWO_SCRIPT = {
    "README.md": b"# a two-script bundle\n",
    "architecture.py": b"import torch\n\n\ndef build_model(ctx):\n    return torch.nn.Linear(4, 4)\n",
    "training.py": b"def train(model, ctx):\n    return {'train_loss': 0.0}\n",
}


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"prism.yaml": b"architecture: architecture.py\ntraining: training.py\n"},
        {"prism.yaml": b"kind: full\narchitecture:\n  entrypoint: architecture.py\n"},
        {"training.py": b"import pyarrow\n\n\ndef train(ctx):\n    return None\n"},
    ],
)
def test_two_script_format_gets_one_clear_error(extra: dict[str, bytes]) -> None:
    report_files = {**TWO_SCRIPT, **extra}
    with pytest.raises(SubmissionError) as info:
        load_submission_bytes(zip_of(report_files))
    problems = info.value.problems
    assert [p.code for p in problems] == ["manifest.unsupported_format"]
    assert "unsupported submission format" in problems[0].message
    assert "docs/submissions.md#forms" in problems[0].message


def test_prism_project_with_a_training_py_is_not_mistaken_for_two_script(tmp_path: Path) -> None:
    files = {
        "prism.yaml": b"kind: full\narchitecture:\n  entrypoint: architecture.py\n"
        b"training:\n  entrypoint: training.py\n",
        "architecture.py": MINIMAL_MODEL,
        "training.py": b"def train(model, ctx):\n    return None\n",
    }
    (tmp_path / "p").mkdir()
    for name, content in files.items():
        (tmp_path / "p" / name).write_bytes(content)
    assert load_submission(tmp_path / "p").training_entrypoint == "training.py"
