"""The training feed's messages, shared by the host (``feed``) and the runner (``feed_client``).

One Unix-socket connection per rank, framed by :mod:`prism.evaluator.framing`:

=========  =========  ========================================================================
frame      direction  content
=========  =========  ========================================================================
hello      r -> h     ``rank``, ``world_size``; sent *before* the runner imports submission code
recipe     r -> h     ``declared`` (what ``get_recipe`` returned), ``custom_optimizer``, and from rank 0
                      (when the program check runs) ``constants``: digests of the fresh model's
                      shipped constants (``prism.evaluator.shipped_constants``)
plan       h -> r     the :class:`~prism.evaluator.recipe.TrainPlan` the host will enforce
batch      h -> r     ``step``, ``shape [B, T+1]``, ``dtype``, ``window_bytes [B]``; token payload
end        h -> r     no more batches: the budget is spent
=========  =========  ========================================================================

No data file, path or split is visible in the training sandbox: the host sends exactly the
budgeted batches, and nothing else (see docs/security.md, "No data near submission code").
"""

from __future__ import annotations

from typing import Any

import numpy as np

from prism.evaluator.framing import ProtocolError

HELLO = "hello"
RECIPE = "recipe"
PLAN = "plan"
BATCH = "batch"
END = "end"
FEED_SOCKET_NAME = "train.sock"
#: Largest batch payload: 128 sequences of 8,193 int32 tokens, with room to spare.
MAX_BATCH_PAYLOAD = 64 << 20


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits (byte and GPT-2 vocabularies), else int32."""
    return np.dtype("<u2") if vocab_size <= 65_535 else np.dtype("<i4")


def encode_batch(
    step: int, tokens: np.ndarray, window_bytes: np.ndarray, vocab_size: int
) -> tuple[dict, bytes]:
    dtype = token_dtype(vocab_size)
    data = np.ascontiguousarray(tokens, dtype=dtype)
    header = {
        "type": BATCH,
        "step": int(step),
        "shape": [int(n) for n in data.shape],
        "dtype": dtype.str,
        "window_bytes": [int(b) for b in np.asarray(window_bytes).reshape(-1)],
    }
    return header, data.tobytes()


def decode_batch(
    header: dict[str, Any], payload: bytes, *, rows: int, seq_len: int
) -> tuple[np.ndarray, np.ndarray]:
    """(tokens int64 (B, T+1), window_bytes int64 (B,)), checked against the plan's shape."""
    shape = header.get("shape")
    if shape != [rows, seq_len + 1]:
        raise ProtocolError(f"batch shape {shape!r} is not the planned [{rows}, {seq_len + 1}]")
    dtype = np.dtype(str(header.get("dtype")))
    if (
        dtype not in (np.dtype("<u2"), np.dtype("<i4"))
        or len(payload) != rows * (seq_len + 1) * dtype.itemsize
    ):
        raise ProtocolError("batch payload does not match its shape and dtype")
    window_bytes = np.asarray(header.get("window_bytes"), dtype=np.int64)
    if window_bytes.shape != (rows,):
        raise ProtocolError("batch window_bytes does not match its rows")
    tokens = np.frombuffer(payload, dtype=dtype).reshape(rows, seq_len + 1).astype(np.int64)
    return tokens, window_bytes


__all__ = [
    "BATCH",
    "END",
    "FEED_SOCKET_NAME",
    "HELLO",
    "MAX_BATCH_PAYLOAD",
    "PLAN",
    "RECIPE",
    "decode_batch",
    "encode_batch",
    "token_dtype",
]
