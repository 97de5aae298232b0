"""Literal run manifests for scoring and store tests (loaded by path from tests/*/conftest.py)."""

from __future__ import annotations

import hashlib
import math
from typing import Any

from prism.manifest import RunManifest
from prism.scoring import ModelEval, PairedCell, PairedMeasurement

PROFILE = "test_proxy"
PROFILE_VERSION = 1
REGIMES = ("large", "small")
SEEDS = (0, 1)


def sha(label: str) -> str:
    return hashlib.sha256(label.encode()).hexdigest()


def make_manifest(
    zip_label: str,
    *,
    mode: str = "reference",
    regime: str = "small",
    seed: int = 0,
    heldout: float | None = 1.0,
    probe: float | None = None,
    family: str | None = "fam",
    version: str | None = "ver",
    kind: str = "full",
    first_probe_nats: float | None = 5.5,
    vocab: int = 257,
    profile: tuple[str, int, bool] = (PROFILE, PROFILE_VERSION, True),
    isolation: str = "bwrap",
    reasons: tuple[str, ...] = (),
    failure: tuple[str, str] | None = None,
    run_id: str | None = None,
    recipe: dict[str, Any] | None = None,
    hooks: dict[str, bool] | None = None,
    **metrics: Any,
) -> RunManifest:
    """One manifest with every field a real evaluator writes; ``metrics`` override metric fields."""
    name, pversion, official = profile
    probe = heldout + 0.05 if probe is None and heldout is not None else probe
    diagnostics = metrics.pop("diagnostics", {})
    status: dict[str, Any] = {"state": "succeeded"}
    if failure is not None:
        status = {"state": "failed", "failure": {"code": failure[0], "fault": failure[1], "message": "x"}}
    data = {
        "run_id": run_id or f"{zip_label}-{mode}-{regime}-{seed}",
        "created_at": "2026-11-23T20:00:00Z",
        "competition": "architecture" if mode == "reference" else "training",
        "recipe_mode": mode,
        "profile": {"name": name, "version": pversion, "official": official},
        "regime": {
            "name": regime,
            "max_parameters": 1000,
            "max_layers": 2,
            "sequence_length": 16,
            "train_tokens": 4096,
        },
        "seed": seed,
        "submission": {
            "zip_sha256": sha(zip_label),
            "kind": kind,
            "architecture_fingerprint": sha(f"arch-{family}-{version}"),
            "family_id": family,
            "version_id": version,
        },
        "dataset": {
            "source": "offline:docstrings",
            "is_fineweb_edu": False,
            "manifest_sha256": sha("data"),
            "split_rule": "sha256(id) mod 1000 < 990",
            "tokenizer": {"name": "byte", "fingerprint": "byte-v1", "vocab_size": vocab, "eos_id": 256},
            "train_shards": [],
            "heldout_shards": [],
            "heldout_seed": 4242,
            "heldout_windows": 8,
        },
        "hardware": {"device_type": "cpu"},
        "isolation": isolation,
        "environment": {"python": "3.11", "prism": "0.1.0", "platform": "linux"},
        "metrics": {
            "heldout_bpb": heldout,
            "probe_bpb": probe,
            "first_probe_loss_nats": first_probe_nats,
            "train_bpb": probe,
            **metrics,
        },
        "diagnostics": diagnostics,
        "comparability": {
            "tokenizer": "byte",
            "sequence_length": 16,
            "heldout_windows": 8,
            "heldout_seed": 4242,
            "profile_key": f"{name}@{pversion}",
        },
        "validation": {"score_eligible": not reasons, "reasons": list(reasons)},
        "status": status,
    }
    if recipe is not None:
        data["recipe"] = {"declared": recipe, "effective": recipe}
    if hooks is not None:
        data["hooks"] = {name: {"present": present, "used": present} for name, present in hooks.items()}
    return RunManifest.model_validate(data)


def full_grid(
    zip_label: str, values: dict[tuple[str, int], float], *, mode: str = "reference", **kwargs: Any
) -> list[RunManifest]:
    """Manifests for every (regime, seed) in ``values`` -> held-out bpb."""
    return [
        make_manifest(zip_label, mode=mode, regime=regime, seed=seed, heldout=bpb, **kwargs)
        for (regime, seed), bpb in sorted(values.items())
    ]


def grid(small: tuple[float, float], large: tuple[float, float]) -> dict[tuple[str, int], float]:
    """(small seed0, small seed1), (large seed0, large seed1) -> the values dict of full_grid."""
    return {("small", 0): small[0], ("small", 1): small[1], ("large", 0): large[0], ("large", 1): large[1]}


def default_run_id(zip_label: str, mode: str, regime: str, seed: int) -> str:
    """The run_id ``make_manifest`` gives by default."""
    return f"{zip_label}-{mode}-{regime}-{seed}"


def paired(
    challenger: str,
    mode: str,
    models: dict[tuple[str, str], dict[tuple[str, int], float]],
    *,
    spread: float = 0.001,
    window_bytes: int = 1000,
    profile_key: str = f"{PROFILE}@{PROFILE_VERSION}",
) -> PairedMeasurement:
    """Models ``(label, mode) -> cell -> bpb`` measured on two windows of the challenger's runs.

    Each model's cell bpb is exact; per window the challenger sits ``spread/2`` below and above
    its mean and every other model the opposite way, so an incumbent-minus-challenger difference
    ``d`` reads ``d + spread`` and ``d - spread`` on the two windows (window stderr per cell:
    ``spread``).
    """
    cells = []
    for regime, seed in sorted(next(iter(models.values()))):
        evals = []
        for (label, model_mode), values in sorted(models.items()):
            sign = -1.0 if (label, model_mode) == (challenger, mode) else 1.0
            offsets = (sign * spread / 2, -sign * spread / 2)
            nats = tuple((values[(regime, seed)] + o) * math.log(2) * window_bytes for o in offsets)
            evals.append(
                ModelEval(
                    zip_sha256=sha(label), recipe_mode=model_mode, run_id=default_run_id(label, model_mode, regime, seed),
                    nats=nats,
                )
            )  # fmt: skip
        cells.append(
            PairedCell(
                regime=regime, seed=seed, run_id=default_run_id(challenger, mode, regime, seed),
                window_bytes=(window_bytes, window_bytes), evals=tuple(evals),
            )
        )  # fmt: skip
    return PairedMeasurement(
        profile_key=profile_key, zip_sha256=sha(challenger), recipe_mode=mode, cells=tuple(cells)
    )
