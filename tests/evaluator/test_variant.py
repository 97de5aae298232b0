"""End to end: a training variant trains the canonical code; its own architecture is only checked."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from prism.evaluator.host import evaluate
from prism.submission import SubmissionError, load_submission

pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_a_variant_trains_the_canonical_files_and_its_own_must_build_the_family(
    tmp_path, data_dir, tiny_profile
) -> None:
    common = dict(profile=tiny_profile(), data_dir=data_dir, out_dir=tmp_path / "runs", recipe_mode="submitted",
                  progress=False, calibration_dir=tmp_path / "cal")  # fmt: skip
    canonical = load_submission(EXAMPLES / "gpt")
    (run,) = evaluate(EXAMPLES / "gpt_recipe", architecture_from=EXAMPLES / "gpt", **common)
    assert run.status.state == "succeeded", run.status
    ids = run.submission
    assert ids.architecture_zip_sha256 == canonical.zip_sha256 and ids.kind == "training_for_arch"
    assert ids.family_id == ids.target_architecture_id  # the canonical code is the family it names
    assert ids.architecture_fingerprint == canonical.architecture_fingerprint
    # the same variant alone is another run (its id names the architecture it trained)
    (alone,) = evaluate(EXAMPLES / "gpt_recipe", **common)
    assert alone.run_id != run.run_id and alone.submission.architecture_zip_sha256 is None
    # a variant whose own files build another family is refused before anything trains
    other = shutil.copytree(EXAMPLES / "gpt_recipe", tmp_path / "other")
    mixer = load_submission(EXAMPLES / "mixer")
    for name in ("model.py", "layers.py", "config.py"):
        (other / "src" / name).unlink(missing_ok=True)
    for name, content in mixer.files.items():
        if name.endswith(".py") and "train" not in name:
            target = other / "src" / Path(name).name
            target.write_bytes(content)
    manifest = other / "prism.yaml"
    manifest.write_text(manifest.read_text().replace("    - src/config.py\n    - src/layers.py\n", "".join(
        f"    - src/{Path(n).name}\n" for n in mixer.architecture_files)))  # fmt: skip
    with pytest.raises(SubmissionError) as refused:
        evaluate(other, architecture_from=EXAMPLES / "gpt", **common)
    assert refused.value.code == "eval.family_mismatch"
