"""prism.yaml problems come all at once, each with its line and a did-you-mean where one fits."""

from __future__ import annotations

from pathlib import Path

from submission_helpers import MINIMAL_MODEL, zip_of

from prism.submission import Problem, check_submission, check_submission_bytes

TRAIN = b"from prism.evaluator.interface import TrainingRecipe\n\n\ndef recipe(ctx):\n    return TrainingRecipe()\n"


def problems_of(manifest: str, **files: bytes) -> list[Problem]:
    archive = {"prism.yaml": manifest.encode(), "src/model.py": MINIMAL_MODEL, "src/train.py": TRAIN}
    archive.update({name.replace("__", "/") + ".py": content for name, content in files.items()})
    report = check_submission_bytes(zip_of(archive))
    assert not report.ok and report.submission is None
    return report.problems


def test_every_problem_at_once_with_lines_and_suggestions() -> None:
    manifest = (
        "kind: ful\n"  # 1: unknown kind
        "architecture:\n"  # 2
        "  entrypiont: src/model.py\n"  # 3: misspelt key (and so entrypoint is missing)
        "  files:\n"  # 4
        "    - src/layer.py\n"  # 5: missing file, close to src/layers.py
        "training:\n"  # 6
        "  entrypoint: train.py\n"  # 7: missing file, the same name exists under src/
        "architecture_idd: fam-1\n"  # 8: misspelt top-level key
    )
    problems = problems_of(manifest, src__layers=b"X = 1\n")
    found = [(p.code, p.line) for p in problems]
    assert found == [
        ("manifest.schema", 1),
        ("manifest.schema", 2),
        ("manifest.schema", 3),
        ("manifest.missing_file", 5),
        ("manifest.missing_file", 7),
        ("manifest.schema", 8),
    ]
    messages = {p.line: p.message for p in problems}
    assert "did you mean 'full'?" in messages[1]
    assert "missing key 'architecture.entrypoint'" in messages[2]
    assert "did you mean 'entrypoint'?" in messages[3]
    assert "did you mean 'src/layers.py'?" in messages[5]
    assert "did you mean 'src/train.py'?" in messages[7]
    assert "did you mean 'architecture_id'?" in messages[8]
    assert all(p.file == "prism.yaml" for p in problems)


def test_kind_rules_are_reported_together() -> None:
    manifest = "kind: training_for_arch\narchitecture:\n  entrypoint: src/model.py\n"
    problems = problems_of(manifest)
    assert sorted(p.code for p in problems) == [
        "manifest.architecture_id_required",
        "manifest.training_required",
    ]
    assert {p.line for p in problems} == {1}


def test_duplicate_keys_are_all_named() -> None:
    manifest = (
        "kind: full\nkind: full\narchitecture:\n  entrypoint: src/model.py\n  entrypoint: src/model.py\n"
    )
    problems = problems_of(manifest)
    assert [(p.code, p.line) for p in problems] == [("manifest.yaml", 2), ("manifest.yaml", 5)]


def test_check_prints_each_problem_with_its_line(tmp_path: Path) -> None:
    project = tmp_path / "p"
    (project / "src").mkdir(parents=True)
    (project / "prism.yaml").write_text("kind: full\narchitecture:\n  entrypoint: src/modle.py\n")
    (project / "src" / "model.py").write_bytes(MINIMAL_MODEL)
    report = check_submission(project)
    assert [str(p) for p in report.problems] == [
        "[manifest.missing_file] prism.yaml lists 'src/modle.py', which is not in the archive "
        "(did you mean 'src/model.py'?) (prism.yaml:3)"
    ]
