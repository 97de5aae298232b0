"""What the held-out integrity checks cost: full protocol against a minimal one, same weights.

The weights are examples/gpt as built at the local_cpu_smoke regime (the cost of the checks does
not depend on how well the model is trained). Held-out measurements run back to back, in
alternating order, each through the real sandbox:

* ``full``: the profile's protocol: every logit row recomputed by the host (V = 257 makes that
  cheapest), the program check (the recorded inference pass run on ``program_windows`` windows
  where no submission code ran) and the prefix replay in a fresh process on ``replay_fraction``
  of the windows;
* ``minimal``: one spot row per batch, no program check and no replay (what the commit/reveal
  protocol alone costs);
* ``no_program``: the full protocol without the program check (what the program check adds).

It prints the wall time of each, the host's row-verification time, the replay's added wall
time, the overhead ``(full - minimal) / full`` (target: under 15%), the fraction of positions
each check covers, and the honest replay drift (the tolerance's margin).

    python benchmarks/bench_integrity.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch

from prism import data as prism_data
from prism.data import ensure_offline_corpus
from prism.evaluator.context import make_context
from prism.evaluator.heldout_phase import run_heldout
from prism.evaluator.heldout_wire import EvalProcessSpec
from prism.evaluator.sandbox import SandboxLimits, probe_isolation
from prism.profiles import load_profile

ROOT = Path(__file__).resolve().parents[1]


def _weights(work: Path, ctx_values: dict) -> Path:
    from safetensors.torch import save_file

    sys.path.insert(0, str(ROOT / "examples" / "gpt" / "src"))
    import model  # examples/gpt

    torch.manual_seed(0)
    net = model.build_model(make_context(ctx_values))
    path = work / "weights" / "weights.safetensors"
    path.parent.mkdir(parents=True)
    save_file({k: v.detach().clone().contiguous() for k, v in net.state_dict().items()}, str(path))
    return path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    profile = load_profile("local_cpu_smoke")
    regime = profile.regimes[0]
    data_dir = Path.home() / ".cache" / "prism" / "data" / "offline-byte"
    ensure_offline_corpus(data_dir, tokenizer="byte")
    ctx = {"vocab_size": 257, "sequence_length": regime.sequence_length, "max_layers": regime.max_layers, "max_parameters": regime.max_parameters, "seed": 1}
    windows, window_bytes = prism_data.heldout_windows(data_dir, split="val", n_windows=profile.heldout.windows, seq_len=regime.sequence_length, seed=profile.heldout.seed)
    minimal = profile.heldout.model_copy(update={"replay_fraction": 0.0, "program_windows": 0, "lie_shift_bpb": 10.0, "lie_survival": 0.99})
    limits = SandboxLimits.from_profile(profile.limits, phase="eval")
    isolation = probe_isolation()
    no_program = profile.heldout.model_copy(update={"program_windows": 0})
    runs: dict[str, list] = {"full": [], "minimal": [], "no_program": []}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        weights = _weights(work, ctx)
        spec = EvalProcessSpec(
            submission_dir=str(ROOT / "examples" / "gpt"), architecture_entrypoint="src/model.py", training_entrypoint="src/train.py",
            weights_path=str(weights), context=ctx, canonical_context=profile.canonical_context.model_dump(), use_inference_hooks=False,
            max_batch_size=profile.heldout.batch_size,
        )  # fmt: skip
        for repeat in range(args.repeats):
            order = ("full", "minimal", "no_program") if repeat % 2 == 0 else ("no_program", "minimal", "full")
            for which in order:
                heldout = {"full": profile.heldout, "minimal": minimal, "no_program": no_program}[which]
                result = run_heldout(spec, windows=windows, window_bytes=window_bytes, heldout=heldout, limits=limits, log_dir=work / f"{which}-{repeat}", isolation=isolation, family_seed=profile.heldout.seed)
                assert result.failure is None, result.failure
                runs[which].append(result)
    full_s = [r.outcome.timings_s["total"] for r in runs["full"]]
    minimal_s = [r.outcome.timings_s["total"] for r in runs["minimal"]]
    no_program_s = [r.outcome.timings_s["total"] for r in runs["no_program"]]
    best_full = min(runs["full"], key=lambda r: r.outcome.timings_s["total"])
    session, replay, program = best_full.session, best_full.outcome.replay, best_full.outcome.program
    program_s = best_full.outcome.timings_s.get("program", 0.0)
    print(json.dumps({
        "model": "examples/gpt @ local_cpu_smoke (init weights)", "windows": int(windows.shape[0]), "positions": session.tokens,
        "full_s": [round(x, 3) for x in full_s], "minimal_s": [round(x, 3) for x in minimal_s],
        "integrity_overhead": round((min(full_s) - min(minimal_s)) / min(full_s), 4),
        "integrity_overhead_median": round((statistics.median(full_s) - statistics.median(minimal_s)) / statistics.median(full_s), 4),
        "no_program_s": [round(x, 3) for x in no_program_s],
        "program_check_overhead_median": round((statistics.median(full_s) - statistics.median(no_program_s)) / statistics.median(full_s), 4),
        "host_row_verification_s": round(session.timings_s.get("verify", 0.0), 3),
        "direct_cost_fraction": round((session.timings_s.get("verify", 0.0) + best_full.outcome.timings_s.get("replay", 0.0) + program_s) / min(full_s), 4),
        "program_check_s": round(program_s, 3), "program_windows": len(program.windows) if program else 0,
        "honest_program_max_drift_nats": program.max_deviation if program else None,
        "main_finish_s (records the run-context graph)": round(session.timings_s.get("finish", 0.0), 3),
        "replay_added_s": round(best_full.outcome.timings_s.get("replay", 0.0), 3),
        "spot_fraction": round(session.spot_rows / session.tokens, 4),
        "replay_pairs": len(replay.pairs), "replay_positions_compared": replay.comparison.positions if replay.comparison else 0,
        "replay_fraction_of_positions": round((replay.comparison.positions if replay.comparison else 0) / session.tokens, 4),
        "honest_replay_max_drift_nats": replay.comparison.max_deviation if replay.comparison else None,
        "replay_tolerance_nats": replay.tolerance,
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
