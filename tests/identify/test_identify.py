"""`prism identify` and `prism check --build` through the CLI: real sandboxed processes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from identify_helpers import EXAMPLES, V1_PROJECT, prism, prism_json, write_project

from prism.submission.archive import collect_directory

# A GPT-like model that sizes its width from the budget, but whose position table is hard-coded
# to 128 rows, and which refuses shallow budgets.
HARD_CODED = """\
import torch
from torch import nn

MAX_POSITIONS = 128


def size(ctx, width):
    return (2 * ctx.vocab_size + MAX_POSITIONS + 2) * width + 2 * width**2 + ctx.vocab_size


class Net(nn.Module):
    def __init__(self, ctx):
        super().__init__()
        width = 16
        while size(ctx, width + 16) <= ctx.max_parameters:
            width += 16
        self.embed = nn.Embedding(ctx.vocab_size, width)
        self.position = nn.Embedding(MAX_POSITIONS, width)
        self.mix = nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.Linear(width, width))
        self.head = nn.Linear(width, ctx.vocab_size)

    def forward(self, tokens):
        places = torch.arange(tokens.shape[1])
        x = self.embed(tokens) + self.position(places)
        return self.head(self.mix(x))


def build_model(ctx):
    if ctx.max_layers < 3:
        raise ValueError("this model needs at least 3 layers")
    return Net(ctx)


def get_recipe(ctx):
    return {"learning_rate": 1e-3, "batch_size": 8}
"""


def line_of(source: str, needle: str) -> int:
    return next(number for number, text in enumerate(source.splitlines(), 1) if needle in text)


def problems_by_code(report: dict) -> dict[str, list[dict]]:
    found: dict[str, list[dict]] = {}
    for problem in report["problems"]:
        found.setdefault(problem["code"], []).append(problem)
    return found


def test_identify_reports_the_family_and_every_regime_of_an_example() -> None:
    rc, report = prism_json("identify", str(EXAMPLES / "gpt"))
    assert rc == 0, report["problems"]
    assert re.fullmatch(r"fam-[0-9a-f]{16}", report["family_id"])
    assert re.fullmatch(r"ver-[0-9a-f]{16}", report["version_id"])
    (smoke,) = report["regimes"]
    # docs/submissions.md: 3 layers of width 96 at the smoke budget.
    assert (smoke["parameter_count"], smoke["layer_count"]) == (363_936, 3)
    assert smoke["parameter_count"] <= smoke["max_parameters"]
    assert smoke["forward_s"] is not None and smoke["backward_s"] is not None


def test_identify_catches_a_hard_coded_sequence_length(tmp_path: Path, regimes_profile: Path) -> None:
    project = write_project(tmp_path / "fixed", {"model.py": HARD_CODED})
    rc, report = prism_json("identify", str(project), "--profile", str(regimes_profile))
    assert rc == 1
    ok = {regime["name"]: regime["ok"] for regime in report["regimes"]}
    assert ok == {"short": True, "long": False, "tight": False}
    problems = problems_by_code(report)
    (forward,) = problems["identify.forward_failed"]
    assert "regime long" in forward["message"] and "T=512" in forward["message"]
    assert (forward["file"], forward["line"]) == ("model.py", line_of(HARD_CODED, "self.position(places)"))
    (build,) = problems["eval.build_failed"]
    assert "regime tight" in build["message"] and "at least 3 layers" in build["message"]
    assert (build["file"], build["line"]) == ("model.py", line_of(HARD_CODED, "raise ValueError"))
    # The same checks through `prism check --build`.
    result = prism("check", str(project), "--build", "--profile", str(regimes_profile))
    assert result.returncode == 1
    where = f"model.py:{line_of(HARD_CODED, 'self.position(places)')}"
    assert "identify.forward_failed" in result.stdout and where in result.stdout


def _training_variant(tmp_path: Path, architecture_id: str) -> Path:
    """The v1-layout project as a training_for_arch submission claiming ``architecture_id``."""
    files = {name: data.decode() for name, data in collect_directory(V1_PROJECT).items()}
    files["prism.yaml"] = files["prism.yaml"].replace(
        "kind: full", f"kind: training_for_arch\narchitecture_id: {architecture_id}"
    )
    return write_project(tmp_path / architecture_id, files)


def test_training_for_arch_must_build_the_family_it_names(tmp_path: Path) -> None:
    rc, report = prism_json("identify", str(_training_variant(tmp_path, "fam-0000000000000000")))
    assert rc == 1
    (mismatch,) = problems_by_code(report)["eval.family_mismatch"]
    assert "fam-0000000000000000" in mismatch["message"] and mismatch["file"] == "prism.yaml"
    measured = report["family_id"]
    assert measured.startswith("fam-") and measured != "fam-0000000000000000"

    rc, verdict = prism_json("check", str(_training_variant(tmp_path, measured)), "--build")
    assert rc == 0, verdict
    assert verdict["ok"] is True and verdict["identify"]["family_id"] == measured

    wrong = prism("check", str(_training_variant(tmp_path, "fam-1111111111111111")), "--build")
    assert wrong.returncode == 1 and "eval.family_mismatch" in wrong.stdout


@pytest.mark.slow
def test_the_training_example_targets_the_family_of_its_architecture() -> None:
    rc, report = prism_json("identify", str(EXAMPLES / "gpt_recipe"))
    assert rc == 0, report["problems"]
    assert report["family_id"] == report["architecture_id"]


@pytest.mark.slow
def test_budget_overruns_in_parameters_layers_and_state(tmp_path: Path, regimes_profile: Path) -> None:
    fixed_width = (
        HARD_CODED.replace("MAX_POSITIONS = 128", "MAX_POSITIONS = 1024")
        .replace(
            '    if ctx.max_layers < 3:\n        raise ValueError("this model needs at least 3 layers")\n', ""
        )
        .replace("        width = 16\n        while", "        width = 512\n        while False and")
        .replace(
            "nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.Linear(width, width))",
            "nn.Sequential(*(nn.Linear(width, width) for _ in range(3)))",
        )
    )
    assert "width = 512" in fixed_width and "range(3)" in fixed_width and "at least" not in fixed_width
    rc, report = prism_json(
        "identify",
        str(write_project(tmp_path / "wide", {"model.py": fixed_width})),
        "--profile",
        str(regimes_profile),
    )
    assert rc == 1
    codes = problems_by_code(report)
    assert len(codes["eval.too_many_parameters"]) == 3
    assert len(codes["eval.too_many_layers"]) == 1  # the tight regime allows 2 layers; the Sequential holds 3
    hidden = HARD_CODED.replace("MAX_POSITIONS = 128", "MAX_POSITIONS = 1024").replace(
        "        self.head = nn.Linear(width, ctx.vocab_size)\n",
        "        self.head = nn.Linear(width, ctx.vocab_size)\n"
        '        self.register_buffer("table", torch.zeros(ctx.max_parameters))\n',
    )
    rc, report = prism_json(
        "identify",
        str(write_project(tmp_path / "buffers", {"model.py": hidden})),
        "--profile",
        str(regimes_profile),
        "--regime",
        "short",
    )
    assert rc == 1
    assert list(problems_by_code(report)) == ["identify.weights_over_budget"]


@pytest.mark.slow
def test_submission_code_runs_only_in_the_sandbox(tmp_path: Path) -> None:
    marker = tmp_path / "host-marker"
    escape = (
        "import torch\n\n"
        "_os = getattr(torch, 'o' + 's')\n"
        f"_os.makedirs({str(tmp_path)!r}, exist_ok=True)\n"
        f"_os.close(_os.open({str(marker)!r}, _os.O_CREAT | _os.O_WRONLY))\n"
        "_os._exit(3)\n\n\n"
        "def build_model(ctx):\n    return torch.nn.Embedding(ctx.vocab_size, ctx.vocab_size)\n\n\n"
        "def get_recipe(ctx):\n    return {}\n"
    )
    rc, report = prism_json("identify", str(write_project(tmp_path / "escape", {"model.py": escape})))
    assert rc == 1
    assert [p["code"] for p in report["problems"]] == ["identify.no_reply"]
    if report["isolation"] == "bwrap":
        assert not marker.exists()


@pytest.mark.slow
def test_an_output_tree_over_the_limits_is_named(tmp_path: Path) -> None:
    """A submission that nests directories in the reply's dir gets the tree named, not 'no reply'."""
    nest = (
        "import json\n\nimport torch\n\n"
        "_os, _sys = getattr(torch, 'o' + 's'), getattr(torch, 's' + 'y' + 's')\n"
        "_spec = _sys.argv[_sys.argv.index('--spec') + 1]\n"
        "_fd = _os.open(_spec, _os.O_RDONLY)\n"
        "_out = _os.path.dirname(json.loads(_os.read(_fd, 1 << 20))['reply_path'])\n"
        "_os.close(_fd)\n"
        "_fd = _os.open(_out, _os.O_RDONLY | _os.O_DIRECTORY)\n"
        "for _ in range(40):\n"
        "    _os.mkdir('a', dir_fd=_fd)\n"
        "    _child = _os.open('a', _os.O_RDONLY | _os.O_DIRECTORY, dir_fd=_fd)\n"
        "    _os.close(_fd)\n"
        "    _fd = _child\n"
        "_os.close(_fd)\n\n\n"
        "def build_model(ctx):\n    return torch.nn.Embedding(ctx.vocab_size, ctx.vocab_size)\n\n\n"
        "def get_recipe(ctx):\n    return {}\n"
    )
    rc, report = prism_json("identify", str(write_project(tmp_path / "nest", {"model.py": nest})))
    assert rc == 1
    assert [p["code"] for p in report["problems"]] == ["identify.output_tree"]
    assert "deeper than" in report["problems"][0]["message"]
