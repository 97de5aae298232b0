"""Hook signatures are checked at intake against HOOK_SIGNATURES, statically."""

from __future__ import annotations

import pytest
from submission_helpers import MINIMAL_MODEL, zip_of

from prism.evaluator.interface import HOOK_SIGNATURES
from prism.submission import check_submission_bytes


def hook_problems(train: bytes, **extra: bytes) -> list[tuple[str, str | None, int | None, str]]:
    files = {
        "prism.yaml": b"kind: full\narchitecture:\n  entrypoint: model.py\ntraining:\n  entrypoint: train.py\n",
        "model.py": MINIMAL_MODEL,
        "train.py": train,
        **{f"{name}.py": content for name, content in extra.items()},
    }
    report = check_submission_bytes(zip_of(files))
    return [(p.code, p.file, p.line, p.message) for p in report.problems]


@pytest.mark.parametrize("hook", sorted(HOOK_SIGNATURES))
def test_every_hook_with_its_documented_signature_passes(hook: str) -> None:
    params = ", ".join(HOOK_SIGNATURES[hook])
    assert hook_problems(f"def {hook}({params}):\n    return None\n".encode()) == []


@pytest.mark.parametrize(
    "source",
    [
        b"def compute_loss(model, batch, ctx, scale=1.0):\n    return None\n",  # extra defaulted param
        b"def compute_loss(model, batch, context):\n    return None\n",  # renamed param
        b"def compute_loss(*args):\n    return None\n",
        b"def compute_loss(model, *rest):\n    return None\n",
        b"import torch\n\n\n@torch.no_grad()\ndef infer(model, batch, ctx):\n    return model(batch)\n",
        b"compute_loss = lambda model, batch, ctx: None\n",
    ],
)
def test_compatible_variants_pass(source: bytes) -> None:
    assert hook_problems(source) == []


@pytest.mark.parametrize(
    ("source", "needle"),
    [
        (b"def train_step(model, batch, ctx):\n    return None\n", "exactly 4 positional arguments"),
        (b"def configure_optimizer(model, ctx):\n    return None\n", "(model, recipe, ctx)"),
        (b"def infer(model, batch, ctx, extra):\n    return None\n", "takes (model, batch, ctx, extra)"),
        (b"def train_step(model, optimizer, batch, ctx):\n    return None\n", "swapped arguments"),
        (b"async def compute_loss(model, batch, ctx):\n    return None\n", "async"),
        (b"def save_checkpoint(model, checkpoint_dir, ctx, *, keep):\n    return None\n", "keyword-only"),
        (b"load_checkpoint = lambda model: None\n", "(model, checkpoint_dir, ctx)"),
    ],
)
def test_mismatched_hooks_are_refused_with_what_is_expected(source: bytes, needle: str) -> None:
    problems = hook_problems(source)
    assert len(problems) == 1
    code, file, line, message = problems[0]
    assert (code, file, line) == ("static.hook_signature", "train.py", 1)
    assert needle in message and "PRISM calls it as" in message


def test_reexported_hook_is_followed_to_its_definition() -> None:
    problems = hook_problems(
        b"from losses import compute_loss\n",
        losses=b"\n\ndef compute_loss(model, batch):\n    return None\n",
    )
    assert [(code, file, line) for code, file, line, _ in problems] == [
        ("static.hook_signature", "losses.py", 3)
    ]


def test_hook_that_cannot_be_followed_is_left_to_the_run() -> None:
    source = b"import functools\n\n\ndef _loss(model, batch, ctx, scale):\n    return None\n\n\n"
    source += b"compute_loss = functools.partial(_loss, scale=2.0)\n"
    assert hook_problems(source) == []
