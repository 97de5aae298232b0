"""The host's training feed: the only way training data reaches submission code (host side).

The training sandbox binds no data directory. Each rank connects to a Unix socket in the run's
feed directory, says ``hello`` before it imports submission code, sends the recipe the
submission declared, and then receives the plan and exactly the plan's batches from the host's
own :class:`prism.data.TrainLoader` (see :mod:`prism.evaluator.feed_wire` for the frames).

What the feed records (:class:`FeedRecord`) is what the host observed: which ranks said hello and
when, the plan it enforced, how many batches each rank was sent, and protocol violations. It
never decides a fault; ``prism.evaluator.verdicts`` does.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from prism.errors import PrismError
from prism.evaluator.feed_wire import BATCH, END, FEED_SOCKET_NAME, HELLO, PLAN, RECIPE, encode_batch
from prism.evaluator.framing import FrameReader, FrameWriter, ProtocolError
from prism.evaluator.interface import TrainingRecipe
from prism.evaluator.recipe import TrainPlan
from prism.evaluator.shipped_constants import MAX_COMMITTED, is_digest

logger = logging.getLogger(__name__)

PlanMaker = Callable[[TrainingRecipe, bool], TrainPlan]
#: (plan, rank) -> that rank's batches, as (tokens (B, T+1), window_bytes (B,)) pairs.
BatchSource = Callable[[TrainPlan, int], Iterator[tuple[object, object]]]
_ACCEPT_POLL_S = 0.2


@dataclass
class FeedRecord:
    """What the host saw on the feed (thread-safe enough: each field has one writer)."""

    world_size: int
    hello_ranks: set[int] = field(default_factory=set)
    first_hello_at: float | None = None
    plan: TrainPlan | None = None
    plan_at: float | None = None
    served: dict[int, int] = field(default_factory=dict)
    completed: set[int] = field(default_factory=set)
    errors: list[str] = field(default_factory=list)
    recipe_error: str | None = None
    data_error: str | None = None
    #: Digests of the shipped constants and op calls of rank 0's fresh model's inference pass,
    #: committed with the recipe (before any batch); None when it sent none.
    constants: frozenset[str] | None = None

    @property
    def said_hello(self) -> bool:
        return bool(self.hello_ranks)

    @property
    def batches_served(self) -> int:
        return sum(self.served.values())


class TrainingFeed:
    """Serves one run's ranks; use as a context manager around the training sandbox's lifetime."""

    def __init__(
        self,
        directory: Path,
        *,
        world_size: int,
        deadline: float,
        make_plan: PlanMaker,
        batches: BatchSource,
        vocab_size: int,
    ) -> None:
        self.directory = directory
        self.path = directory / FEED_SOCKET_NAME
        self.record = FeedRecord(world_size=world_size)
        self._deadline = deadline
        self._make_plan = make_plan
        self._batches = batches
        self._vocab = vocab_size
        self._plan_ready = threading.Event()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._connections: list[socket.socket] = []
        directory.mkdir(parents=True, exist_ok=True)
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(str(self.path))
        self._server.listen(world_size + 2)
        self._server.settimeout(_ACCEPT_POLL_S)

    def __enter__(self) -> TrainingFeed:
        thread = threading.Thread(target=self._accept_loop, name="prism-feed-accept", daemon=True)
        thread.start()
        self._threads.append(thread)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        self._plan_ready.set()
        with contextlib.suppress(OSError):
            self._server.close()
        with self._lock:
            for conn in self._connections:  # wakes a blocked reader with EOF; its thread closes it
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
        for thread in self._threads:
            thread.join(timeout=5.0)
        with self._lock:
            for conn in self._connections:
                conn.close()
        with contextlib.suppress(OSError):
            self.path.unlink()

    def _accept_loop(self) -> None:
        while not self._stop.is_set() and time.monotonic() < self._deadline:
            try:
                conn, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                if self._stop.is_set():
                    conn.close()
                    return
                self._connections.append(conn)
            thread = threading.Thread(target=self._serve, args=(conn,), name="prism-feed-rank", daemon=True)
            thread.start()
            self._threads.append(thread)

    def _serve(self, conn: socket.socket) -> None:
        fd = conn.fileno()
        reader = FrameReader(fd, deadline=self._deadline, max_payload=1 << 20)
        writer = FrameWriter(fd, deadline=self._deadline)
        rank = None
        try:
            rank = self._hello(reader)
            self._receive_recipe(reader, rank)
            plan = self._wait_for_plan()
            if plan is None:
                return
            writer.write({"type": PLAN, "plan": plan.model_dump(mode="json")})
            self._send_batches(writer, plan, rank)
        except PrismError as exc:
            if not self._stop.is_set():
                self.record.errors.append(f"rank {rank if rank is not None else '?'}: {exc.message}")

    def _hello(self, reader: FrameReader) -> int:
        header, _ = reader.expect(HELLO)
        rank = header.get("rank")
        world = header.get("world_size")
        if not isinstance(rank, int) or world != self.record.world_size or not 0 <= rank < world:
            raise ProtocolError(f"hello for rank {rank!r} of world size {world!r} does not fit this run")
        with self._lock:
            if rank in self.record.hello_ranks:
                raise ProtocolError(f"a second connection claimed rank {rank}")
            self.record.hello_ranks.add(rank)
            if self.record.first_hello_at is None:
                self.record.first_hello_at = time.monotonic()
        return rank

    def _receive_recipe(self, reader: FrameReader, rank: int) -> None:
        header, _ = reader.expect(RECIPE)
        if rank != 0:
            return  # every rank runs the same code; rank 0's declaration decides the plan
        try:
            declared = TrainingRecipe.model_validate(header.get("declared"))
            plan = self._make_plan(declared, header.get("custom_optimizer") is True)
        except (ValidationError, TypeError, ValueError) as exc:
            self.record.recipe_error = f"get_recipe returned an invalid recipe: {exc}"
            self._plan_ready.set()
            raise ProtocolError(self.record.recipe_error) from exc
        try:
            self.record.constants = _committed_constants(header)
        except ProtocolError:
            self._plan_ready.set()  # no plan comes: the other ranks stop waiting for one
            raise
        self.record.plan, self.record.plan_at = plan, time.monotonic()
        self._plan_ready.set()

    def _wait_for_plan(self) -> TrainPlan | None:
        while not self._plan_ready.wait(timeout=_ACCEPT_POLL_S):
            if self._stop.is_set() or time.monotonic() > self._deadline:
                return None
        return self.record.plan

    def _send_batches(self, writer: FrameWriter, plan: TrainPlan, rank: int) -> None:
        sent = 0
        try:
            for step, (tokens, window_bytes) in enumerate(self._batches(plan, rank), start=plan.start_step):
                if step >= plan.total_steps or self._stop.is_set():
                    break
                header, payload = encode_batch(step, tokens, window_bytes, self._vocab)  # type: ignore[arg-type]
                writer.write(header, payload)
                sent += 1
                self.record.served[rank] = sent
        except PrismError as exc:
            if exc.fault != "miner" and not isinstance(exc, ProtocolError):
                self.record.data_error = f"rank {rank}: {exc.message}"  # our data ran out or broke
            raise
        if sent < plan.steps_this_attempt and not self._stop.is_set():
            self.record.data_error = f"rank {rank}: the training data ran out after {sent} batches"
            return
        writer.write({"type": END})
        self.record.completed.add(rank)


def _committed_constants(header: dict[str, object]) -> frozenset[str] | None:
    """The recipe frame's constants commitment: absent, or a bounded list of sha256 digests
    (anything else is a protocol violation, the miner's)."""
    if "constants" not in header:
        return None
    value = header["constants"]
    if not isinstance(value, list) or len(value) > MAX_COMMITTED or not all(is_digest(v) for v in value):
        raise ProtocolError(
            f"the recipe frame's constants are not a list of at most {MAX_COMMITTED} sha256 digests"
        )
    return frozenset(value)


__all__ = ["BATCH", "FeedRecord", "TrainingFeed"]
