"""What the program check sees of a submission: its inference pass as a program, run without its code.

    python examples/scripts/program_check.py [--project examples/gpt] [--seq-len 64]

A validator records the held-out process's inference pass as a program (aten ops, arguments,
which tensor of the weights file each source is) and runs it again in a process that never
imported the submission (docs/evaluator_measurement.md, "The program check"). This script does
both halves in one process on a freshly built model, so a miner can see, before submitting, that
the rebuilt program gives their model's logits and family: a model whose answers depend on
anything the program does not carry (state kept between calls, Python branches on token values,
custom ops) is refused by validators, and so is one whose program has another family on the
public recording batches than a fresh model at the canonical context claims. It prints JSON:
program size, the values shipped outside the weights, the largest logit difference on random
windows, the claimed family and the program's family on the public batches (they must agree),
and what validators keep as evidence: the program's family on a random window and the trained
weights only that window reads.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from prism.evaluator.context import make_context
from prism.evaluator.graph import public_batches, record_architecture, record_forward
from prism.evaluator.graph_program import ProgramModule, record_program
from prism.evaluator.loading import load_submission_modules
from prism.profiles import load_profile
from prism.submission import load_submission

ROOT = Path(__file__).resolve().parents[2]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", type=Path, default=ROOT / "examples" / "gpt")
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--windows", type=int, default=4)
    args = parser.parse_args()
    submission = load_submission(args.project)
    loaded = load_submission_modules(args.project, submission.architecture_entrypoint, None)
    values = {
        "vocab_size": 257,
        "sequence_length": args.seq_len,
        "max_parameters": 400_000,
        "max_layers": 4,
        "seed": 1,
    }
    ctx = make_context(values)
    torch.manual_seed(ctx.seed)
    model = loaded.architecture.build_model(ctx).eval()
    tokens = torch.randint(0, ctx.vocab_size, (1, ctx.sequence_length))
    program = json.loads(json.dumps(record_program(model, model, tokens)))  # as it crosses the pipe
    state = model.state_dict()
    worst = 0.0
    with torch.no_grad():
        for _ in range(args.windows):
            window = torch.randint(0, ctx.vocab_size, (1, ctx.sequence_length))
            worst = max(worst, float((ProgramModule(program, state)(window) - model(window)).abs().max()))
    shipped = [node for node in program["nodes"] if node["kind"] == "const"]
    # The claim: a fresh model at the profiles' canonical context (vocab 257, T = 32), as the
    # held-out process records it. The validator's checking process records the program on the
    # canonical batches repeated to the run's length, and on a held-out window (here: random).
    canonical = make_context(load_profile("local_cpu_smoke").canonical_context, seed=ctx.seed)
    torch.manual_seed(ctx.seed)
    claimed = record_architecture(loaded.architecture.build_model(canonical), canonical).family_id
    public = record_forward(
        ProgramModule(program, state), ctx, inputs=public_batches(canonical, ctx.sequence_length)
    )
    window = torch.randint(0, ctx.vocab_size, (2, 1, ctx.sequence_length))
    on_window = record_forward(ProgramModule(program, state), ctx, inputs=(window[0], window[1]))
    hidden = [name for name in on_window.live_parameters if name not in set(public.live_parameters)]
    report = {
        "project": str(args.project),
        "program_nodes": len(program["nodes"]),
        "program_bytes": len(json.dumps(program)),
        "shipped_constants": [{"dtype": n["dtype"], "shape": n["shape"]} for n in shipped],
        "max_abs_logit_difference": worst,
        "claimed_family": claimed,
        "family_of_the_program": public.graph.family_id,
        "family_of_the_program_on_a_window": on_window.graph.family_id,
        "weights_read_only_on_the_window": hidden,
    }
    print(json.dumps(report, indent=2))
    return 0 if worst == 0.0 and claimed == public.graph.family_id else 1


if __name__ == "__main__":
    sys.exit(main())
