"""The runner's end of the training feed (runs inside the sandbox, one connection per rank).

``hello`` goes out before the submission is imported, so the host knows from outside when
submission code may have started; after that, everything this end does is evidence only.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from prism.evaluator.feed_wire import BATCH, END, HELLO, MAX_BATCH_PAYLOAD, PLAN, RECIPE, decode_batch
from prism.evaluator.framing import FrameReader, FrameWriter, ProtocolError
from prism.evaluator.interface import TrainingRecipe
from prism.evaluator.recipe import TrainPlan


class FeedClient:
    def __init__(self, path: Path) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.connect(str(path))
        fd = self._sock.fileno()
        self._reader = FrameReader(fd, max_payload=MAX_BATCH_PAYLOAD)
        self._writer = FrameWriter(fd)

    def hello(self, rank: int, world_size: int) -> None:
        self._writer.write({"type": HELLO, "rank": rank, "world_size": world_size})

    def plan(
        self, declared: TrainingRecipe, *, custom_optimizer: bool, constants: list[str] | None = None
    ) -> TrainPlan:
        """Send the declared recipe (and the fresh model's constants, if committed); receive the
        plan the host will enforce."""
        header = {
            "type": RECIPE,
            "declared": declared.model_dump(mode="json"),
            "custom_optimizer": custom_optimizer,
        }
        if constants is not None:
            header["constants"] = constants
        self._writer.write(header)
        header, _ = self._reader.expect(PLAN)
        return TrainPlan.model_validate(header["plan"])

    def batches(self, plan: TrainPlan) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """This rank's batches in order: (tokens int64 (B, T+1), window_bytes int64 (B,))."""
        expected = plan.start_step
        while True:
            header, payload = self._reader.read()
            if header["type"] == END:
                return
            if header["type"] != BATCH or header.get("step") != expected:
                raise ProtocolError(f"unexpected feed frame {header.get('type')!r} at step {expected}")
            yield decode_batch(header, payload, rows=plan.per_rank_batch, seq_len=plan.sequence_length)
            expected += 1

    def close(self) -> None:
        self._sock.close()


__all__ = ["FeedClient"]
