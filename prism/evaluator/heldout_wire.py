"""The held-out protocol's messages and spec, shared by the host and the process (no torch).

==========  =========  ====================================================  ==========================
frame       direction  header                                                payload
==========  =========  ====================================================  ==========================
execute     h -> p     ``shape [K, T+1]``, ``tokens_bytes`` (before go)        K*(T+1) int64, then a program JSON
executed    p -> h     ``graph`` (its summary) or ``error``                  log p(target), K*T float64
go          h -> p                                                           (the process may load the submission)
hello       p -> h                                                           (before any submission code)
ready       p -> h     ``params_sha256``, ``parameter_count``, ``inference_path``  canonical graph JSON
inputs      h -> p     ``batch``, ``shape [B, T]``                           int64
committed   p -> h     ``batch``                                             L (B*T float64) + sha256 per row
targets     h -> p     ``batch``, ``shape``                                  int64
z           p -> h     ``batch``                                             target logit (B*T float64)
spots       h -> p     ``batch``, ``positions [[b, t], ...]`` (drawn now)
rows        p -> h     ``batch``                                             k rows (k*V float32)
finish      h -> p
done        p -> h     ``params_sha256``, ``advisory``                       run-context graph JSON
program     p -> h     (right after ready, when ``record_program``)          the inference pass as a program JSON
error       p -> h     ``code``, ``fault``, ``message``, ``frames``
==========  =========  ====================================================  ==========================
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from prism.evaluator.framing import ProtocolError

GO, HELLO, READY, INPUTS, COMMITTED, TARGETS, Z, SPOTS, ROWS, FINISH, DONE, ERROR = (
    "go", "hello", "ready", "inputs", "committed", "targets", "z", "spots", "rows", "finish", "done", "error",
)  # fmt: skip
# The program check (prism.evaluator.program_check): a forked child of the replay, before its go,
# which never loads the submission, executes the main process's recorded program on windows the
# host drew (``program_check`` in the spec).
PROGRAM, EXECUTE, EXECUTED = "program", "execute", "executed"
DIGEST_BYTES = 32


class EvalProcessSpec(BaseModel):
    """``heldout_spec.json``: everything the evaluation process needs. Paths are as seen inside.

    The main evaluation and the prefix replay get the same kind of spec (the replay records no
    graphs, and answers the program check before its ``go``, from a forked child that runs
    trusted code only and is gone before the submission loads).
    """

    model_config = ConfigDict(extra="forbid")

    submission_dir: str
    architecture_entrypoint: str
    training_entrypoint: str | None = None
    weights_path: str
    context: dict[str, Any] = Field(description="the run's context values (as for training)")
    canonical_context: dict[str, int] = Field(description="vocab_size, sequence_length, max_*")
    total_steps: int | None = None
    use_inference_hooks: bool = Field(
        default=True, description="False: model(input_ids) only (reference recipe)"
    )
    device: Literal["cpu", "cuda"] = "cpu"
    torch_threads: int = Field(default=1, ge=1)
    max_batch_size: int = Field(gt=0)
    record_graphs: bool = Field(
        default=True,
        description="record the canonical and run-context graphs (the replay does not need them)",
    )
    record_program: bool = Field(
        default=True,
        description="send the inference pass as a program right after ready, for the program check (not the replay)",
    )
    program_check: bool = Field(
        default=False,
        description="before go, answer one execute from a forked child that never loads the submission (the replay)",
    )


def encode_tokens(kind: str, batch: int, tokens: np.ndarray) -> tuple[dict[str, Any], bytes]:
    data = np.ascontiguousarray(tokens, dtype="<i8")
    return {"type": kind, "batch": batch, "shape": [int(n) for n in data.shape]}, data.tobytes()


def decode_tokens(header: dict[str, Any], payload: bytes, seq_len: int, vocab: int, max_b: int) -> np.ndarray:
    shape = header.get("shape")
    if not (isinstance(shape, list) and len(shape) == 2 and 0 < shape[0] <= max_b and shape[1] == seq_len):
        raise ProtocolError(f"bad token batch shape {shape!r}")
    if len(payload) != shape[0] * shape[1] * 8:
        raise ProtocolError("token payload length does not match its shape")
    array = np.frombuffer(payload, dtype="<i8").reshape(shape)
    if array.min() < 0 or array.max() >= vocab:
        raise ProtocolError("token ids out of range")
    return array.astype(np.int64)


__all__ = [
    "COMMITTED",
    "DIGEST_BYTES",
    "DONE",
    "ERROR",
    "EXECUTE",
    "EXECUTED",
    "FINISH",
    "GO",
    "HELLO",
    "INPUTS",
    "PROGRAM",
    "READY",
    "ROWS",
    "SPOTS",
    "TARGETS",
    "EvalProcessSpec",
    "Z",
    "decode_tokens",
    "encode_tokens",
]
