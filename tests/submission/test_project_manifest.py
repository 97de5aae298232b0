"""prism.yaml: schema, roles, defaults, and hostile YAML."""

from __future__ import annotations

import pytest
from submission_helpers import MINIMAL_MODEL, zip_of

from prism.submission import (
    ProjectManifestError,
    SubmissionError,
    load_submission_bytes,
    parse_project_manifest,
)

TRAIN = b"from prism.evaluator.interface import TrainingRecipe\n\n\ndef recipe(ctx):\n    return TrainingRecipe()\n"
HELPER = b"def helper():\n    return 1\n"


def manifest_code(files: dict[str, bytes], *, deflate: bool = True) -> str:
    with pytest.raises(SubmissionError) as info:
        load_submission_bytes(zip_of(files, deflate=deflate))
    assert isinstance(info.value, ProjectManifestError), info.value
    return info.value.code


def project(manifest: str, **extra: bytes) -> dict[str, bytes]:
    files = {"prism.yaml": manifest.encode(), "src/model.py": MINIMAL_MODEL, "src/train.py": TRAIN}
    files.update({name.replace("__", "/") + ".py": content for name, content in extra.items()})
    return files


FULL = """kind: full
architecture:
  entrypoint: src/model.py
training:
  entrypoint: src/train.py
"""


def test_full_project_layout() -> None:
    submission = load_submission_bytes(zip_of(project(FULL)))
    assert submission.kind == "full"
    assert submission.architecture_files == ("src/model.py",)
    assert submission.training_files == ("src/train.py",)
    assert submission.training_fingerprint is not None
    assert submission.architecture_id is None
    assert submission.manifest_file == "prism.yaml"
    assert submission.python_paths == ("src", ".")


def test_prism_yml_is_accepted() -> None:
    files = project(FULL)
    files["prism.yml"] = files.pop("prism.yaml")
    assert load_submission_bytes(zip_of(files)).manifest_file == "prism.yml"


def test_both_manifest_names_conflict() -> None:
    files = project(FULL)
    files["prism.yml"] = files["prism.yaml"]
    assert manifest_code(files) == "manifest.conflict"


def test_architecture_only_has_no_training() -> None:
    files = project("kind: architecture_only\narchitecture:\n  entrypoint: src/model.py\n")
    del files["src/train.py"]
    submission = load_submission_bytes(zip_of(files))
    assert submission.training_entrypoint is None
    assert submission.training_files == ()
    assert submission.training_fingerprint is None


def test_architecture_only_refuses_training_section() -> None:
    assert manifest_code(project(FULL.replace("full", "architecture_only"))) == "manifest.training_forbidden"


def test_training_for_arch() -> None:
    manifest = FULL.replace("kind: full", "kind: training_for_arch\narchitecture_id: 7ec2c3a8-example")
    submission = load_submission_bytes(zip_of(project(manifest)))
    assert submission.kind == "training_for_arch"
    assert submission.architecture_id == "7ec2c3a8-example"


def test_training_for_arch_without_architecture_id() -> None:
    assert (
        manifest_code(project(FULL.replace("full", "training_for_arch")))
        == "manifest.architecture_id_required"
    )


def test_training_for_arch_without_training() -> None:
    manifest = "kind: training_for_arch\narchitecture_id: abc\narchitecture:\n  entrypoint: src/model.py\n"
    files = project(manifest)
    del files["src/train.py"]
    assert manifest_code(files) == "manifest.training_required"


def test_architecture_id_forbidden_for_full() -> None:
    assert manifest_code(project(FULL + "architecture_id: abc\n")) == "manifest.architecture_id_forbidden"


def test_full_without_training_section_trains_from_model_module() -> None:
    files = project("kind: full\narchitecture:\n  entrypoint: src/model.py\n")
    del files["src/train.py"]
    submission = load_submission_bytes(zip_of(files))
    assert submission.training_entrypoint == "src/model.py"
    assert submission.training_fingerprint != submission.architecture_fingerprint


def test_manifest_naming_missing_file() -> None:
    manifest = FULL + "  files:\n    - src/losses.py\n"
    assert manifest_code(project(manifest)) == "manifest.missing_file"


def test_listed_file_must_be_python() -> None:
    files = project(FULL + "  files:\n    - README.md\n")
    files["README.md"] = b"# readme\n"
    assert manifest_code(files) == "manifest.not_python"


def test_unlisted_python_file_is_accepted_as_unattributed() -> None:
    submission = load_submission_bytes(zip_of(project(FULL, src__extra=HELPER)))
    assert submission.unattributed_files == ("src/extra.py",)
    # Nothing imports it, so neither fingerprint covers it.
    assert "src/extra.py" not in submission.architecture_fingerprint_files
    assert "src/extra.py" not in submission.training_fingerprint_files


def test_non_python_files_need_not_be_listed() -> None:
    files = project(FULL)
    files["README.md"] = b"notes\n"
    files["configs/small.json"] = b"{}\n"
    assert "README.md" in load_submission_bytes(zip_of(files)).files


@pytest.mark.parametrize(
    "manifest",
    [
        # the architecture entrypoint is also a training file (the training code imports the model)
        FULL + "  files:\n    - src/model.py\n",
        # the training entrypoint is also an architecture file (the model imports the recipe)
        FULL.replace(
            "  entrypoint: src/model.py\n", "  entrypoint: src/model.py\n  files:\n    - src/train.py\n"
        ),
        # one helper in both roles (PRISM v1 projects do this)
        FULL.replace("  entrypoint: src/model.py\n", "  entrypoint: src/model.py\n  files:\n    - src/h.py\n")
        + "  files:\n    - src/h.py\n",
    ],
)
def test_files_may_belong_to_both_roles(manifest: str) -> None:
    submission = load_submission_bytes(zip_of(project(manifest, src__h=HELPER)))
    shared = set(submission.architecture_files) & set(submission.training_files)
    assert len(shared) == 1
    assert shared <= set(submission.architecture_fingerprint_files) & set(
        submission.training_fingerprint_files
    )


def test_same_module_may_be_both_entrypoints() -> None:
    manifest = (
        "kind: full\narchitecture:\n  entrypoint: src/model.py\ntraining:\n  entrypoint: src/model.py\n"
    )
    files = project(manifest)
    del files["src/train.py"]
    assert load_submission_bytes(zip_of(files)).training_entrypoint == "src/model.py"


@pytest.mark.parametrize(
    "manifest",
    [
        "kind: full\narchitecture:\n  entrypoint: src/model.py\nextra_key: 1\n",
        "kind: everything\narchitecture:\n  entrypoint: src/model.py\n",
        "kind: full\n",
        "kind: full\narchitecture:\n  entrypoint: [1, 2]\n",
        "kind: full\narchitecture:\n  entrypoint: src/model.py\n  weights: big.bin\n",
        "kind: training_for_arch\narchitecture_id: 'bad id with spaces'\narchitecture:\n  entrypoint: src/model.py\n",
    ],
)
def test_schema_violations(manifest: str) -> None:
    with pytest.raises(ProjectManifestError) as info:
        load_submission_bytes(zip_of(project(manifest)))
    assert "manifest.schema" in [problem.code for problem in info.value.problems]


@pytest.mark.parametrize(
    "manifest",
    [
        "kind: full\narchitecture: [unclosed\n",
        "kind: full\n  bad indentation: here\n",
        "- just\n- a list\n",
        "",
        "kind: full\nkind: training_for_arch\narchitecture:\n  entrypoint: src/model.py\n",
        "kind: !!python/object/apply:os.system ['true']\n",
    ],
)
def test_malformed_yaml(manifest: str) -> None:
    assert manifest_code(project(manifest)) == "manifest.yaml"


def test_yaml_bomb_with_anchors_and_aliases() -> None:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for level in range(1, 9):
        prev, cur = chr(ord("a") + level - 1), chr(ord("a") + level)
        lines.append(f"{cur}: &{cur} [" + ",".join([f"*{prev}"] * 9) + "]")
    bomb = "\n".join(lines) + "\nkind: full\narchitecture:\n  entrypoint: src/model.py\n"
    assert len(bomb) < 1000  # ~9^9 = 387 million strings once expanded
    with pytest.raises(ProjectManifestError) as info:
        parse_project_manifest(bomb)
    assert info.value.code == "manifest.yaml_alias"
    assert info.value.line == 1
    assert manifest_code(project(bomb)) == "manifest.yaml_alias"


def test_deeply_nested_yaml() -> None:
    assert (
        manifest_code(project("kind: " + "[" * 5000 + "]" * 5000 + "\n"), deflate=False)
        == "manifest.too_large"
    )


def test_oversized_manifest() -> None:
    assert manifest_code(project(FULL + "# " + "x" * 70_000 + "\n"), deflate=False) == "manifest.too_large"


# ---------------------------------------------------------------------------------------------
# projects without a manifest


def test_default_single_top_level_module() -> None:
    submission = load_submission_bytes(zip_of({"net.py": MINIMAL_MODEL, "README.md": b"hi\n"}))
    assert (submission.kind, submission.architecture_entrypoint, submission.training_entrypoint) == (
        "full",
        "net.py",
        "net.py",
    )


def test_default_model_py_among_several() -> None:
    files = {"model.py": MINIMAL_MODEL, "layers.py": HELPER, "lib/util.py": HELPER}
    submission = load_submission_bytes(zip_of(files))
    assert submission.architecture_entrypoint == "model.py"
    assert submission.architecture_files == ("model.py", "layers.py", "lib/util.py")


@pytest.mark.parametrize(
    "files",
    [{"a.py": MINIMAL_MODEL, "b.py": HELPER}, {"src/model.py": MINIMAL_MODEL}, {"README.md": b"no code\n"}],
)
def test_default_needs_an_obvious_entrypoint(files: dict[str, bytes]) -> None:
    assert manifest_code(files) == "manifest.no_entrypoint"
