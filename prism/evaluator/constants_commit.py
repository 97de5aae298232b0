"""The training runner's constants commitment (in the sandbox, before the first batch).

The runner records the inference pass of the freshly built model exactly as the held-out process
will record it after loading the trained weights (``heldout._Evaluator.program``: eval mode,
``B = 1`` on the canonical token ids, one unrecorded call first), and sends the digests of the
shipped constants it reads with the recipe, before the host sends any batch. Why: see
``prism.evaluator.shipped_constants``. The random number generators are restored afterwards, so
the commitment does not change the training run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from prism.evaluator.graph import RUN_GRAPH_MAX_BYTES, canonical_tokens
from prism.evaluator.graph_program import record_program
from prism.evaluator.interface import PrismContext
from prism.evaluator.loading import finite_cpu_logits, inference_logits
from prism.evaluator.shipped_constants import committed_digests
from prism.evaluator.untrusted import call_submission


def _inference(
    model: torch.nn.Module, hooks: dict[str, Callable[..., Any]], ctx: PrismContext, autocast: bool
) -> Callable[[torch.Tensor], torch.Tensor]:
    def forward(input_ids: torch.Tensor) -> torch.Tensor:
        # The same calls as heldout._Evaluator.forward, since op calls are committed too.
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            logits = call_submission(
                "eval.forward_failed", "inference", inference_logits, model, hooks, input_ids, ctx
            )
        return finite_cpu_logits(logits, torch.isfinite)

    return forward


def commit_constants(
    model: torch.nn.Module,
    hooks: dict[str, Callable[..., Any]],
    ctx: PrismContext,
    device: torch.device,
    *,
    autocast: bool = False,
) -> list[str]:
    """Digests of the shipped constants the untrained model's inference pass reads and of its op
    calls with their non-tensor arguments."""
    cpu_rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    forward = _inference(model, hooks, ctx, autocast)
    tokens = canonical_tokens(ctx).to(device)
    call_submission("eval.build_failed", "model.eval()", model.eval)
    try:
        forward(tokens)  # state a model builds on its first call is a constant, as in the held-out process
        program = record_program(forward, model, tokens, max_bytes=RUN_GRAPH_MAX_BYTES)
    finally:
        call_submission("eval.build_failed", "model.train()", model.train)
        torch.set_rng_state(cpu_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
    return committed_digests(program)


__all__ = ["commit_constants"]
