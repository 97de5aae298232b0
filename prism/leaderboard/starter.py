"""A ``training_for_arch`` starter project around a family's canonical code (``prism fetch-family``).

Layout written under the output directory::

    prism.yaml           kind training_for_arch, architecture_id = the family id, the roles below
    <architecture files> the family's canonical architecture code, byte for byte
    <support files>      training-role modules that code imports, unchanged, under training.files
    <dir>/train.py       the training entrypoint: a documented configure_optimizer stub that runs
                         (<dir> is the architecture entrypoint's folder, so sibling imports work;
                         named train_variant.py when the family already has a train.py there)
    prism_family.json    where the code came from (family, canonical version, source ZIP sha256)
    README.md            what to do next
"""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath

import yaml

from prism.errors import OperatorError
from prism.leaderboard.bundle import BUNDLE_MANIFEST, FamilyCode

ENTRYPOINT_NAMES = ("train.py", "train_variant.py", "train_hooks.py")

HOOK_STUB = '''"""Training hooks for the PRISM architecture family {family_id}.

Written by `prism fetch-family`. This project is a `training_for_arch` submission: the files under
`architecture` in prism.yaml are the family's canonical code (version {version_id}), copied
unchanged, so the model you train is the family's model. Your work goes in this file and in any
helper modules you add under `training.files`.{support_note}

When a validator runs the submitted recipe it calls, from this module (docs/evaluator.md, "Hooks"):

    configure_optimizer(model, recipe, ctx) -> optimizer, or (optimizer, scheduler)
    compute_loss(model, batch, ctx)          -> scalar loss tensor (optional)
    train_step(model, batch, optimizer, ctx) -> scalar loss tensor (optional; owns the whole update)

`recipe` is what the architecture's get_recipe(ctx) declared (learning_rate, batch_size,
weight_decay, warmup_fraction, grad_clip, betas). With configure_optimizer the learning rate and
its schedule are yours: the harness clamps nothing and applies no schedule of its own; a returned
scheduler steps once per update. `ctx` carries the run's budget (max_parameters,
sequence_length, world_size, ...; see docs/submissions.md).

The stub below is a plain, working recipe: AdamW with weight decay on weight matrices only, and
a linear warmup followed by an inverse-square-root decay, which needs no step budget. Change it,
then compare with the family's reference run:

    prism check .
    prism eval . --recipe submitted --profile local_cpu_smoke

A variant earns when it beats the family's reference recipe by the noise margin
(docs/scoring.md, "Training competition").
"""

from __future__ import annotations

import math

import torch

WARMUP_STEPS = 20


def lr_multiplier(step: int) -> float:
    """Factor on the peak learning rate after `step` updates (LambdaLR calls it with 0 first)."""
    step += 1
    return min(step / WARMUP_STEPS, math.sqrt(WARMUP_STEPS / step))


def configure_optimizer(model, recipe, ctx):
    """Build the optimizer and its schedule for `model` (the bare module, on every rank).

    Called once, before the first update. Return an optimizer, or (optimizer, scheduler).
    """
    decay, no_decay = [], []
    for parameter in model.parameters():
        if parameter.requires_grad:
            (decay if parameter.dim() >= 2 else no_decay).append(parameter)
    groups = [
        {{"params": decay, "weight_decay": recipe.weight_decay}},
        {{"params": no_decay, "weight_decay": 0.0}},
    ]
    optimizer = torch.optim.AdamW(
        [group for group in groups if group["params"]], lr=recipe.learning_rate, betas=tuple(recipe.betas)
    )
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lr_multiplier)
'''

README = """# Training variant for {family_id}

Written by `prism fetch-family {family_id} --from {source}`.

* `prism.yaml`: kind `training_for_arch`, `architecture_id: {family_id}`.
* Architecture (the family's canonical version `{version_id}`, unchanged): {architecture}.
* Training entrypoint (yours): `{entrypoint}`.{support}

Next steps (docs/tutorial.md walks through them):

    prism check .
    prism eval . --recipe submitted --profile local_cpu_smoke
    prism pack . -o variant.zip

Do not edit the architecture files: a model whose measured family differs from
`architecture_id` is refused (`training.target_mismatch`).
"""


def training_entrypoint(code: FamilyCode) -> str:
    """``train.py`` next to the architecture entrypoint, unless the family already has one there."""
    folder = PurePosixPath(code.architecture_entrypoint).parent
    taken = set(code.code_files())
    for name in ENTRYPOINT_NAMES:
        candidate = str(folder / name)
        if candidate not in taken:
            return candidate
    raise OperatorError(
        f"the family's code already holds {', '.join(ENTRYPOINT_NAMES)}", code="fetch.name_clash"
    )


def starter_files(code: FamilyCode, files: dict[str, bytes], source: str) -> dict[str, bytes]:
    """Every file of the starter project, by posix path."""
    entrypoint = training_entrypoint(code)
    manifest = {
        "kind": "training_for_arch",
        "architecture_id": code.family_id,
        "architecture": {"entrypoint": code.architecture_entrypoint, "files": list(code.architecture_files)},
        "training": {"entrypoint": entrypoint, "files": list(code.support_files)},
    }
    header = f"# A training variant of family {code.family_id}, written by `prism fetch-family`.\n"
    support_note = ""
    if code.support_files:
        support_note = (
            "\n\nThe architecture imports "
            + ", ".join(code.support_files)
            + " (listed under `training.files`),\n"
            "so keep whatever it imports from there; the hooks in that file are not used (only this\n"
            "entrypoint's are)."
        )
    stub = HOOK_STUB.format(
        family_id=code.family_id, version_id=code.canonical_version_id, support_note=support_note
    )
    readme = README.format(
        family_id=code.family_id, source=source, version_id=code.canonical_version_id, entrypoint=entrypoint,
        architecture=", ".join(f"`{name}`" for name in [code.architecture_entrypoint, *code.architecture_files]),
        support=(f"\n* Support modules the architecture imports: {', '.join(code.support_files)}."
                 if code.support_files else ""),
    )  # fmt: skip
    return {
        **files,
        "prism.yaml": (header + yaml.safe_dump(manifest, sort_keys=False)).encode(),
        entrypoint: stub.encode(),
        BUNDLE_MANIFEST: (json.dumps(code.model_dump(), indent=2, sort_keys=True) + "\n").encode(),
        "README.md": readme.encode(),
    }


def write_project(dest: Path, files: dict[str, bytes]) -> None:
    """Write ``files`` under ``dest``, which must not exist or be an empty directory."""
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise OperatorError(f"{dest} exists and is not an empty directory", code="fetch.dest_not_empty")
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    for name, content in sorted(files.items()):
        target = (root / name).resolve()
        if not target.is_relative_to(root):  # names passed the archive checks; a second lock
            raise OperatorError(f"{name!r} escapes {dest}", code="fetch.bad_path")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
