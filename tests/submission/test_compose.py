"""A training variant's runs train its family's canonical architecture files with its own recipe."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from prism.submission import SubmissionError, load_submission
from prism.submission.compose import compose_training_variant

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_the_canonical_architecture_files_and_the_variants_recipe(tmp_path: Path) -> None:
    canonical = load_submission(EXAMPLES / "gpt")
    variant_dir = shutil.copytree(EXAMPLES / "gpt_recipe", tmp_path / "variant")
    layers = variant_dir / "src" / "layers.py"  # the variant ships another architecture: never trained
    layers.write_text(layers.read_text() + "\nWIDER = True\n")
    variant = load_submission(variant_dir)
    composed = compose_training_variant(variant, canonical)
    assert composed.files["src/layers.py"] == canonical.files["src/layers.py"] != variant.files["src/layers.py"]
    assert composed.files["src/model.py"] == canonical.files["src/model.py"]
    assert composed.files["src/train.py"] == variant.files["src/train.py"] != canonical.files["src/train.py"]
    assert composed.architecture_fingerprint == canonical.architecture_fingerprint
    # the variant's identity is kept: its runs, manifests and scores stay its own
    assert (composed.zip_sha256, composed.kind, composed.training_fingerprint) == (
        variant.zip_sha256, "training_for_arch", variant.training_fingerprint)  # fmt: skip
    assert (composed.architecture_entrypoint, composed.training_entrypoint) == ("src/model.py", "src/train.py")


def test_a_recipe_file_on_a_canonical_architecture_path_is_refused(tmp_path: Path) -> None:
    canonical = load_submission(EXAMPLES / "gpt")
    variant_dir = shutil.copytree(EXAMPLES / "gpt_recipe", tmp_path / "variant")
    manifest = variant_dir / "prism.yaml"
    manifest.write_text(manifest.read_text().replace("training:\n  entrypoint: src/train.py",
                                                     "training:\n  entrypoint: src/train.py\n  files:\n    - src/config.py"))  # fmt: skip
    text = manifest.read_text()
    manifest.write_text(text.replace("  files:\n    - src/config.py\n    - src/layers.py", "  files:\n    - src/layers.py", 1))
    (variant_dir / "src" / "config.py").write_text((variant_dir / "src" / "config.py").read_text() + "\n# mine\n")
    with pytest.raises(SubmissionError) as conflict:
        compose_training_variant(load_submission(variant_dir), canonical)
    assert conflict.value.code == "training.path_conflict" and conflict.value.file == "src/config.py"
    with pytest.raises(SubmissionError) as not_variant:
        compose_training_variant(canonical, canonical)
    assert not_variant.value.code == "training.not_variant"
