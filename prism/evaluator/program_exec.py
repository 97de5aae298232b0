"""Execute a recorded program where no submission code has run (process side of the program check).

A held-out process that has read the trusted weights but not yet received ``go`` (the replay,
warm and waiting) has never imported the submission. There it answers ``execute``: it rebuilds
the main process's program over its own copy of the weights (``graph_program.ProgramModule``),
runs it on each window the host drew (``B = 1``, as recorded) and returns ``log p(target)`` per
position, computed as the main process's commitment is (float32 logits, float64
log-normaliser). It also records the program's architecture graph, so the family id the host
compares with the claimed one is derived here. A problem with the program is answered as a typed
error; the host decides what it means (``prism.evaluator.program_check``).
"""

from __future__ import annotations

import json
import logging
from typing import Any

import numpy as np
import torch

# A dispatch mode's first use imports torch._dynamo (1-2 s): paid here, while the process is warm.
import torch._dynamo

from prism.errors import PrismError
from prism.evaluator.context import make_context
from prism.evaluator.framing import ProtocolError
from prism.evaluator.graph import RUN_GRAPH_MAX_BYTES, record_architecture
from prism.evaluator.graph_program import ProgramError, ProgramModule
from prism.evaluator.heldout_wire import EXECUTED, EvalProcessSpec

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
        program = json.loads(payload[tokens_bytes:].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
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
    # The family is recorded on the drawn windows (secret until now), as the pass was scored.
    first = torch.from_numpy(windows[0, None, :-1].copy()).to(spec.device)
    second = torch.from_numpy(
        windows[-1, None, :-1].copy() if len(windows) > 1 else windows[0, None, -2::-1].copy()
    )
    module = ProgramModule(program, state).to(spec.device)
    graph = record_architecture(
        module, ctx, max_recorded_bytes=RUN_GRAPH_MAX_BYTES, inputs=(first, second.to(spec.device))
    ).summary()
    return {"type": EXECUTED, "graph": graph}, np.stack(answers).astype("<f8").tobytes()


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


__all__ = ["answer_execute"]
