"""Paired comparison by hand: two submissions measured on the same held-out windows.

    python examples/scripts/paired_comparison.py [--profile local_cpu_smoke] [--out DIR]

Trains examples/gpt (the incumbent) and examples/mixer (the challenger) with the profile,
re-measures the incumbent's stored weights on the challenger's held-out windows in fresh
sandboxes, and prints the paired difference and its window-sampling standard error, as scoring
computes them under rules v2 (docs/scoring.md, section 2a). Needs bubblewrap; takes a few
minutes on two CPU cores with the smoke profile.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from prism.data import ensure_offline_corpus
from prism.evaluator.host import evaluate
from prism.evaluator.remeasure import remeasure
from prism.profiles import load_profile
from prism.scoring.paired import (
    Estimate,
    ModelEval,
    PairedCell,
    PairedMeasurement,
    RunSet,
    WindowIndex,
    combine_coefficients,
    paired_estimate,
)

EXAMPLES = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="local_cpu_smoke")
    parser.add_argument("--out", type=Path, default=None, help="work directory (default: a temporary one)")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="prism-paired-"))
    profile = load_profile(args.profile)
    data = out / "data"
    ensure_offline_corpus(data, tokenizer=profile.tokenizer)
    common = dict(
        profile=profile, data_dir=data, out_dir=out / "runs", recipe_mode="reference", progress=False
    )
    (incumbent,) = evaluate(EXAMPLES / "gpt", **common)
    (challenger,) = evaluate(EXAMPLES / "mixer", **common)
    incumbent_dir, challenger_dir = out / "runs" / incumbent.run_id, out / "runs" / challenger.run_id
    on_windows = remeasure(model_zip=EXAMPLES / "gpt", model_manifest=incumbent, model_run_dir=incumbent_dir,
                           challenger=challenger, profile=profile, data_dir=data, log_dir=out / "paired")  # fmt: skip
    own = json.loads((challenger_dir / challenger.artifacts.window_losses).read_text())
    cell = PairedCell(regime=challenger.regime.name, seed=challenger.cell_seed, run_id=challenger.run_id,
                      window_bytes=tuple(own["window_bytes"]), evals=(
                          ModelEval(zip_sha256=challenger.submission.zip_sha256, recipe_mode="reference",
                                    run_id=challenger.run_id, nats=tuple(own["nats"])),
                          ModelEval(zip_sha256=incumbent.submission.zip_sha256, recipe_mode="reference",
                                    run_id=incumbent.run_id, nats=on_windows.nats)))  # fmt: skip
    measurement = PairedMeasurement(profile_key=profile.key, zip_sha256=challenger.submission.zip_sha256,
                                    recipe_mode="reference", cells=(cell,))  # fmt: skip
    index = WindowIndex([measurement], profile.key, challenger.submission.zip_sha256)
    mine = RunSet(challenger.submission.zip_sha256, "reference", (challenger.run_id,))
    theirs = RunSet(incumbent.submission.zip_sha256, "reference", (incumbent.run_id,))
    estimate = paired_estimate(index, mine, [(challenger.regime.name, challenger.cell_seed)],
                               combine_coefficients([(theirs, 1.0), (mine, -1.0)]))  # fmt: skip
    assert isinstance(estimate, Estimate), estimate  # both models are measured on the windows
    print(json.dumps({
        "incumbent_own_windows_bpb": incumbent.metrics.heldout_bpb,
        "challenger_bpb": challenger.metrics.heldout_bpb,
        "paired_difference_bpb": estimate.difference_bpb,  # incumbent - challenger, on the challenger's windows
        "window_stderr_bpb": estimate.window_stderr_bpb,
        "work_dir": str(out),
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
