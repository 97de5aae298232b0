"""Execute a recorded program where no submission code has run (process side of the program check).

A forked child of the replay, before its ``go``, has read the trusted weights and never imports
the submission; it answers one ``execute`` and exits before the replay loads the submission, so
the program (data the main process chose) never reaches a process that runs submission code
(``heldout._program_check_in_a_child``). There it rebuilds the main process's program over its
own copy of the weights (``graph_program.ProgramModule``), runs it on each window the host drew (``B = 1``, as recorded) and returns ``log p(target)`` per
position, computed as the main process's commitment is (float32 logits, float64
log-normaliser). It also records the program's architecture graph twice, on the host's family
window and on the public recording batches, with the weights each one reads, so what the host
compares with the claim is derived here. A problem with the program is answered as a typed
error; the host decides what it means (``prism.evaluator.program_check``).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

# A dispatch mode's first use imports torch._dynamo (1-2 s): paid here, while the process is warm.
import torch._dynamo

from prism.errors import PrismError
from prism.evaluator.context import make_context
from prism.evaluator.framing import ProtocolError, loads_untrusted
from prism.evaluator.graph import (
    RUN_GRAPH_MAX_BYTES,
    Recording,
    computed_only_in,
    public_batches,
    record_forward,
)
from prism.evaluator.graph_program import ProgramError, ProgramModule
from prism.evaluator.heldout_wire import EXECUTED, EvalProcessSpec
from prism.evaluator.interface import PrismContext
from prism.evaluator.shipped_constants import distinct_constants

logger = logging.getLogger(__name__)


def _decode(header: dict[str, Any], payload: bytes, spec: EvalProcessSpec) -> tuple[np.ndarray, Any]:
    shape, tokens_bytes = header.get("shape"), header.get("tokens_bytes")
    seq_len, vocab = int(spec.context["sequence_length"]), int(spec.context["vocab_size"])
    if not (isinstance(shape, list) and len(shape) == 2 and shape[0] > 0 and shape[1] == seq_len + 1):
        raise ProtocolError(f"bad execute shape {shape!r}")
    if tokens_bytes != shape[0] * shape[1] * 8 or len(payload) < tokens_bytes:
        raise ProtocolError("execute payload does not match its shape")
    windows = np.frombuffer(payload[:tokens_bytes], dtype="<i8").reshape(shape)
    if windows.min() < 0 or windows.max() >= vocab:
        raise ProtocolError("execute token ids out of range")
    try:
        program = loads_untrusted(payload[tokens_bytes:])
    except ValueError as exc:
        raise ProgramError(f"the program is not JSON: {exc}") from exc
    return windows.astype(np.int64), program


def _log_probs(module: torch.nn.Module, window: np.ndarray, device: str, vocab: int) -> np.ndarray:
    tokens = torch.from_numpy(window[None, :-1].copy()).to(device)
    targets = torch.from_numpy(window[1:].copy())
    with torch.no_grad():
        logits = module(tokens)
    if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != (1, tokens.shape[1], vocab):
        raise ProgramError(
            f"the program returns {getattr(logits, 'shape', type(logits))}, not (1, T, V) logits"
        )
    rows = logits.detach().to("cpu", torch.float32)[0]
    lse = torch.logsumexp(rows.to(torch.float64), dim=-1)
    z = rows.gather(-1, targets.unsqueeze(-1)).squeeze(-1).to(torch.float64)
    return (z - lse).numpy()


def _execute(
    windows: np.ndarray, program: Any, state: dict[str, Any], spec: EvalProcessSpec
) -> tuple[dict[str, Any], bytes]:
    vocab = int(spec.context["vocab_size"])
    # One fresh module per window: nothing one answer does can reach the next.
    answers = [
        _log_probs(ProgramModule(program, state).to(spec.device).eval(), window, spec.device, vocab)
        for window in windows
    ]
    ctx = make_context(spec.context, device=spec.device, total_steps=spec.total_steps)
    # On the first window (the family window, from the held-out seed) and on the public recording
    # batches the claim was recorded on, at the run's length: the family on the public batches is
    # compared with the claim, and the ops that compute from weights on the window only are sent.
    window, window_weights = _recorded(
        program, state, ctx, torch.from_numpy(windows[0, None, :-1].copy()), spec.device
    )
    canonical = make_context(spec.canonical_context)
    public, public_weights = _recorded(
        program, state, ctx, public_batches(canonical, ctx.sequence_length)[0], spec.device
    )
    header = {"type": EXECUTED, "graph": window.graph.summary(), "public_graph": public.graph.summary()}
    header["parameters"] = {"window": window_weights, "public": public_weights}
    header["window_only_ops"] = computed_only_in(window, public)
    # Listed here, where the program is parsed and no submission ran: the host compares them with
    # what the fresh model committed before training (prism.evaluator.shipped_constants).
    header["constants"] = [[c.digest, c.dtype, list(c.shape)] for c in distinct_constants(program)]
    return header, np.stack(answers).astype("<f8").tobytes()


def _recorded(
    program: Any, state: dict[str, Any], ctx: PrismContext, tokens: torch.Tensor, device: str
) -> tuple[Recording, list[str]]:
    """The program recorded on ``tokens`` (1, T), and the weights-file names its output reads."""
    module = ProgramModule(program, state).to(device)
    tokens = tokens.to(device)
    recording = record_forward(
        module,
        ctx,
        max_recorded_bytes=RUN_GRAPH_MAX_BYTES,
        inputs=(tokens, tokens),
        rebuilt=True,
        file_buffers=module.file_buffers(),
    )
    return recording, [module.weights_file_name(name) for name in recording.live_parameters]


class _WarmUp(torch.nn.Module):
    """The usual ops of a language model, tiny: embedding, layer norm, attention, GELU, head."""

    def __init__(self) -> None:
        super().__init__()
        self.emb, self.norm = torch.nn.Embedding(8, 4), torch.nn.LayerNorm(4)
        self.qkv, self.head = torch.nn.Linear(4, 12), torch.nn.Linear(4, 8)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.emb(tokens))
        q, k, v = self.qkv(x).unsqueeze(1).split(4, dim=-1)
        y = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True).squeeze(1)
        return self.head(torch.nn.functional.gelu(y) + x)


def warm_up() -> None:
    """Record a tiny model once, so the first real recording does not pay for first calls into
    the dispatch mode, the FLOP counter and canonicalisation (done while the process waits)."""
    ctx = make_context({"vocab_size": 8, "sequence_length": 4, "max_parameters": 1000, "max_layers": 1})
    tokens = torch.arange(4).unsqueeze(0)
    try:
        record_forward(_WarmUp(), ctx, inputs=(tokens, torch.flip(tokens, (1,))))
    except Exception:  # a warm-up only saves time: never let it stop an evaluation
        logger.exception("the program check's warm-up failed")


def answer_execute(
    header: dict[str, Any], payload: bytes, state: dict[str, Any], spec: EvalProcessSpec
) -> tuple[dict[str, Any], bytes]:
    """The ``executed`` frame for one ``execute`` request. Protocol errors raise; a program that
    cannot be rebuilt or run is answered with its typed error."""
    windows, program = None, None
    try:
        windows, program = _decode(header, payload, spec)
        return _execute(windows, program, state, spec)
    except ProtocolError:
        raise
    except PrismError as exc:
        return {"type": EXECUTED, "error": {"code": exc.code, "message": exc.message[:4000]}}, b""
    except Exception as exc:  # anything else the program made an aten op or the recorder do
        logger.exception("the program could not be executed")
        message = f"{type(exc).__name__}: {exc}"[:4000]
        return {"type": EXECUTED, "error": {"code": "identity.program_failed", "message": message}}, b""


__all__ = ["answer_execute", "warm_up"]
