"""The AST gate: friendly to ordinary training code, refuses direct escapes, reports every problem."""

from __future__ import annotations

import tempfile
import textwrap
from pathlib import Path

import pytest
from submission_helpers import MINIMAL_MODEL, zip_of

from prism.submission import StaticGateError, SubmissionError, load_submission_bytes
from prism.submission.intake import CheckReport, check_submission

FRIENDLY = '''\
"""A model module as people actually write them."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from layers import Mixer
from prism.evaluator.interface import PrismContext, TrainingRecipe

torch.backends.cuda.matmul.allow_tf32 = True
torch.backends.cudnn.allow_tf32 = True


@dataclass
class Config:
    width: int = 64
    extra: list[int] = field(default_factory=list)
    note: Optional[str] = None


class Net(nn.Module):
    """Docstring with the word eval( and open( inside is just text."""

    def __init__(self, vocab: int, config: Config) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, config.width)
        self.mix = Mixer(config.width)
        self.act = getattr(nn, "GELU")()
        self.scale = 1 / math.sqrt(config.width)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        x = self.mix(self.emb(input)) * self.scale
        return F.linear(x, self.emb.weight)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(width={self.emb.embedding_dim})"


def build_model(ctx: PrismContext) -> nn.Module:
    model = Net(ctx.vocab_size, Config())
    model.eval()
    return torch.compile(model) if ctx.device == "cuda" else model


def get_recipe(ctx: PrismContext) -> TrainingRecipe:
    np.random.default_rng(ctx.seed)
    return TrainingRecipe(learning_rate=1e-3, batch_size=8)


if __name__ == "__main__":
    print(build_model)
'''
LAYERS = b"import torch\n\n\nclass Mixer(torch.nn.Linear):\n    def __init__(self, width):\n        super().__init__(width, width)\n"


def gate_problems(model: str, **files: bytes) -> list[tuple[str, str | None, int | None]]:
    """All problems `prism check` reports, as (code, file, line)."""
    contents = {"model.py": textwrap.dedent(model).encode(), **{f"{k}.py": v for k, v in files.items()}}
    report = check_from_bytes(zip_of(contents))
    return [(p.code, p.file, p.line) for p in report.problems]


def check_from_bytes(data: bytes) -> CheckReport:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "s.zip"
        path.write_bytes(data)
        return check_submission(path)


BASE = "import torch\n\ndef build_model(ctx):\n    return torch.nn.Linear(2, 2)\n\ndef get_recipe(ctx):\n    return {}\n"


def test_ordinary_training_code_passes() -> None:
    submission = load_submission_bytes(zip_of({"model.py": FRIENDLY.encode(), "layers.py": LAYERS}))
    assert submission.architecture_entrypoint == "model.py"


def test_prism_challenge_and_sibling_stem_imports_pass() -> None:
    files = {
        "prism.yaml": b"kind: full\narchitecture:\n  entrypoint: src/model.py\n  files: [src/blocks/attention.py]\n"
        b"training:\n  entrypoint: src/train.py\n",
        "src/model.py": b"import torch\nfrom blocks.attention import Attention\nfrom train import recipe\n\n"
        b"def build_model(ctx):\n    return Attention(ctx.vocab_size)\n\ndef get_recipe(ctx):\n    return recipe(ctx)\n",
        "src/blocks/attention.py": b"import torch\n\nclass Attention(torch.nn.Embedding):\n    def __init__(self, v):\n"
        b"        super().__init__(v, v)\n",
        "src/train.py": b"from prism_challenge.evaluator.interface import TrainingRecipe\n"
        b"from prism_challenge.evaluator import interface\n\ndef recipe(ctx):\n"
        b"    return TrainingRecipe(learning_rate=3e-4, batch_size=2)\n",
    }
    submission = load_submission_bytes(zip_of(files))
    assert submission.python_paths == ("src", ".")


def test_stem_import_of_a_file_off_the_import_path() -> None:
    files = {
        "prism.yaml": b"kind: full\narchitecture:\n  entrypoint: src/model.py\n  files: [src/blocks/attention.py]\n",
        "src/model.py": b"from attention import Attention\n" + BASE.encode(),
        "src/blocks/attention.py": b"Attention = None\n",
    }
    report = check_from_bytes(zip_of(files))
    assert [(p.code, p.file, p.line) for p in report.problems] == [
        ("static.unreachable_module", "src/model.py", 1)
    ]
    assert "src/blocks/attention.py" in report.problems[0].message


@pytest.mark.parametrize(
    ("snippet", "code"),
    [
        ("import os", "static.forbidden_import"),
        ("import os.path as p", "static.forbidden_import"),
        ("from subprocess import run", "static.forbidden_import"),
        ("import socket", "static.forbidden_import"),
        ("import ctypes", "static.forbidden_import"),
        ("import importlib", "static.forbidden_import"),
        ("import pickle", "static.forbidden_import"),
        ("import marshal", "static.forbidden_import"),
        ("import sys", "static.forbidden_import"),
        ("import inspect", "static.forbidden_import"),
        ("import gc", "static.forbidden_import"),
        ("import builtins", "static.forbidden_import"),
        ("import shutil", "static.forbidden_import"),
        ("import multiprocessing", "static.forbidden_import"),
        ("import requests", "static.forbidden_import"),
        ("import prism.chain", "static.forbidden_import"),
        ("from prism import submission", "static.forbidden_import"),
        ("from torch import hub", "static.forbidden_import"),
        ("from torch import os", "static.forbidden_import"),
        ("import numpy.distutils", "static.forbidden_import"),
        ("import torch.utils.cpp_extension", "static.forbidden_import"),
        ("from . import nowhere_module", "static.forbidden_import"),
        ("x = eval('1')", "static.forbidden_call"),
        ("exec('x = 1')", "static.forbidden_call"),
        ("c = compile('1', 'f', 'eval')", "static.forbidden_call"),
        ("m = __import__('os')", "static.forbidden_call"),
        ("f = open('/etc/passwd')", "static.forbidden_call"),
        ("g = globals()", "static.forbidden_call"),
        ("v = vars()", "static.forbidden_call"),
        ("breakpoint()", "static.forbidden_call"),
        ("run = eval", "static.forbidden_call"),
        ("b = __builtins__", "static.forbidden_call"),
        ("s = ().__class__.__bases__[0].__subclasses__()", "static.forbidden_attribute"),
        ("g = build_model.__globals__", "static.forbidden_attribute"),
        ("c = getattr(build_model, '__globals__')", "static.forbidden_attribute"),
        ("c = getattr((), '__class__')", "static.forbidden_attribute"),
        ("torch.os.system('id')", "static.forbidden_attribute"),
        ("torch.hub.load('x', 'y')", "static.forbidden_attribute"),
        (
            "import operator\ng = operator.attrgetter('__globals__')(build_model)",
            "static.forbidden_attribute",
        ),
        ("import numpy\nlib = numpy.ctypeslib", "static.forbidden_attribute"),
        ("torch.ops.load_library('evil.so')", "static.forbidden_attribute"),
        (
            "def f():\n    try:\n        raise ValueError\n    except ValueError as e:\n        return e.__traceback__.tb_frame.f_globals",
            "static.forbidden_attribute",
        ),
    ],
)
def test_forbidden_constructs(snippet: str, code: str) -> None:
    problems = gate_problems(snippet + "\n" + BASE)
    assert any(found == code and file == "model.py" for found, file, _ in problems), problems
    with pytest.raises(StaticGateError) as info:
        load_submission_bytes(zip_of({"model.py": (snippet + "\n" + BASE).encode()}))
    assert info.value.fault == "miner"


def test_one_problem_per_getattr_escape() -> None:
    assert gate_problems("x = getattr((), '__class__')\n" + BASE) == [
        ("static.forbidden_attribute", "model.py", 1)
    ]


def test_problem_lines_point_at_the_construct() -> None:
    assert gate_problems(BASE + "\nimport os\n")[0] == ("static.forbidden_import", "model.py", 9)


def test_every_problem_is_reported_across_files() -> None:
    helper = b"import socket\nx = eval('1')\n"
    problems = gate_problems("import os\nimport torch\nfrom helper import x\n", helper=helper)
    codes = {(code, file) for code, file, _ in problems}
    assert codes == {
        ("static.forbidden_import", "model.py"),
        ("static.missing_build_model", "model.py"),
        ("static.missing_get_recipe", "model.py"),
        ("static.forbidden_import", "helper.py"),
        ("static.forbidden_call", "helper.py"),
    }


def test_missing_build_model() -> None:
    model = "def get_recipe(ctx):\n    return {}\n"
    with pytest.raises(SubmissionError) as info:
        load_submission_bytes(zip_of({"model.py": model.encode()}))
    assert info.value.code == "static.missing_build_model"
    assert info.value.file == "model.py"


def test_missing_get_recipe() -> None:
    assert gate_problems("def build_model(ctx):\n    return None\n") == [
        ("static.missing_get_recipe", "model.py", None)
    ]


def test_functions_nested_in_if_do_not_count() -> None:
    problems = gate_problems(
        "if True:\n    def build_model(ctx):\n        return None\n\ndef get_recipe(ctx):\n    return {}\n"
    )
    assert problems == [("static.missing_build_model", "model.py", None)]


def test_reexported_functions_count() -> None:
    impl = MINIMAL_MODEL
    assert gate_problems("from impl import build_model, get_recipe\n", impl=impl) == []


def test_syntax_error() -> None:
    assert gate_problems(BASE + "\ndef broken(:\n") == [("static.syntax", "model.py", 9)]


def test_non_utf8_coding_cookie() -> None:
    problems = gate_problems("# -*- coding: utf-7 -*-\n" + BASE)
    assert problems == [("static.encoding", "model.py", 1)]


def test_shadowing_a_standard_module() -> None:
    problems = gate_problems("import torch\nimport random\n" + BASE, random=b"x = 1\n")
    assert ("static.shadowed_module", "random.py", None) in problems


def test_ambiguous_stem_import() -> None:
    files = {
        "prism.yaml": b"kind: full\narchitecture:\n  entrypoint: src/model.py\n  files: [src/util.py]\n"
        b"training:\n  entrypoint: lib/train.py\n  files: [lib/util.py]\n",
        "src/model.py": b"from util import thing\n" + BASE.encode(),
        "src/util.py": b"thing = 1\n",
        "lib/train.py": b"x = 1\n",
        "lib/util.py": b"thing = 2\n",
    }
    report = check_from_bytes(zip_of(files))
    assert [(p.code, p.file) for p in report.problems] == [("static.ambiguous_module", "src/model.py")]
