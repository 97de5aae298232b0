"""The normalised recipe fingerprint: copies in another form match, other recipes do not."""

from __future__ import annotations

from prism.submission.recipe_fingerprint import recipe_fingerprint

RECIPE = b'''
"""My recipe."""
import torch


def configure_optimizer(model, ctx):
    # AdamW with a warm start
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=3e-4, weight_decay=0.1)


def get_recipe(ctx):
    return {"lr": 3e-4, "warmup_steps": 10}
'''

DISGUISED = b'''
import torch as T

def get_recipe(context):
    return {"lr": 0.0003, "warmup_steps": 10}

def configure_optimizer(net, context):
    """Same thing, other words."""
    trainable = [w for w in net.parameters() if w.requires_grad]
    return T.optim.AdamW(trainable,
                         lr=3e-4,
                         weight_decay=0.1)
'''


def fingerprint(files: dict[str, bytes]) -> str | None:
    return recipe_fingerprint(files, sorted(files))


def test_renamed_reformatted_recommented_copies_match() -> None:
    original = fingerprint({"train.py": RECIPE})
    assert original is not None
    # another file name, reordered definitions, renamed locals and alias, docstrings and comments
    assert fingerprint({"src/recipe_v2.py": DISGUISED}) != original  # definition order is part of the tree
    reordered = RECIPE.replace(b"import torch", b"import torch as T").replace(b"torch.optim", b"T.optim")
    renamed = reordered.replace(b"params", b"trainable").replace(b"model", b"net").replace(b"# AdamW", b"# ours")
    assert fingerprint({"other_name.py": renamed}) == original
    split = {"b.py": RECIPE, "a.py": b"X = 1\n"}
    assert fingerprint(split) == fingerprint({"z.py": b"Y = 1\n", "y.py": RECIPE})  # names and order of files


def test_a_changed_hyperparameter_or_optimizer_is_another_recipe() -> None:
    original = fingerprint({"train.py": RECIPE})
    assert fingerprint({"train.py": RECIPE.replace(b"lr=3e-4", b"lr=1e-3")}) != original
    assert fingerprint({"train.py": RECIPE.replace(b"AdamW", b"SGD")}) != original
    # the contract's names are kept: a renamed hook is another submission's behaviour
    assert fingerprint({"train.py": RECIPE.replace(b"configure_optimizer", b"make_opt")}) != original


def test_no_recipe_code_has_no_fingerprint() -> None:
    assert recipe_fingerprint({"README.md": b"hi"}, ["README.md"]) is None
    assert recipe_fingerprint({"bad.py": b"def (:"}, ["bad.py"]) is None
