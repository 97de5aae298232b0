"""Held-out measurement, host side: drive the protocol and compute the loss from checked values.

Per batch of held-out windows ``w`` (inputs ``w[:, :-1]``, targets ``w[:, 1:]``):

1. send the inputs; receive the commitment: ``L`` and a row digest per position;
2. only now send the targets; receive ``z`` for every position and check ``z <= L`` everywhere;
3. only now draw the spot positions (fresh OS entropy, :mod:`prism.evaluator.spots` says how
   many) and receive those rows; each must hash to its digest, its ``logsumexp`` must equal the
   committed ``L`` and its target entry must be exactly ``z`` (else ``eval.commitment_mismatch``);
4. count ``clip(L - z, 0, cap)`` nats per position, with the byte counts the host already knows.

``L`` must match the revealed row's logsumexp to ``1e-6 + 1e-12 |L|`` nats, and ``|L| <= 1e4``.

A process that rewrites this protocol's in-process half cannot know which rows will be checked
when it commits, nor when it reports ``z``. The host keeps ``L`` and ``z`` of every position for
the prefix replay (:mod:`prism.evaluator.replay`).
"""

from __future__ import annotations

import hashlib
import math
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from prism.errors import MinerFault, PrismError
from prism.evaluator import sandbox as sb
from prism.evaluator.framing import (
    ChannelClosed,
    ChannelTimeout,
    FrameReader,
    FrameWriter,
    ProtocolError,
    loads_untrusted,
)
from prism.evaluator.heldout_wire import (
    COMMITTED,
    DIGEST_BYTES,
    DONE,
    ERROR,
    EXECUTE,
    EXECUTED,
    FINISH,
    GO,
    HELLO,
    INPUTS,
    PROGRAM,
    READY,
    ROWS,
    SPOTS,
    TARGETS,
    EvalProcessSpec,
    Z,
    encode_tokens,
)  # fmt: skip
from prism.evaluator.program_check import ProgramReply
from prism.evaluator.replay_runtime import private_copy
from prism.evaluator.shipped_constants import is_digest

#: L is a float64 logsumexp of the same float32 row on both sides: they agree to rounding. The
#: tolerance is absolute plus a tiny relative term, and |L| is bounded, so a model cannot widen it
#: by inflating its logits (a relative 1e-6 at L = 2^26 would let it lie by 67 nats per position).
LSE_ABS_TOLERANCE = 1e-6
LSE_REL_TOLERANCE = 1e-12
#: No honest model's log-normaliser comes near this; beyond it float32 logits have no resolution.
LSE_BOUND = 1e4


#: A recorded program (ops, arguments, shipped constants as base64) larger than this is refused:
#: 50k ops and 16.8M constant values fit with room to spare.
MAX_PROGRAM_BYTES = 256 << 20


def lse_tolerance(lse: np.ndarray | float) -> np.ndarray | float:
    return LSE_ABS_TOLERANCE + LSE_REL_TOLERANCE * np.abs(lse)


#: (batch index, rows, seq_len) -> the (row, position) pairs to reveal, drawn after z arrived.
SpotPolicy = Callable[[int, int, int], list[tuple[int, int]]]


def random_spots(per_batch: Callable[[int], int], rng: np.random.Generator | None = None) -> SpotPolicy:
    """Uniform positions without replacement; ``per_batch(n_positions)`` says how many."""
    generator = rng if rng is not None else np.random.default_rng(secrets.randbits(128))

    def policy(_batch: int, rows: int, seq_len: int) -> list[tuple[int, int]]:
        n = rows * seq_len
        k = per_batch(n)
        flat = np.arange(n) if k >= n else generator.choice(n, size=k, replace=False)
        return [(int(i) // seq_len, int(i) % seq_len) for i in np.sort(flat)]

    return policy


@dataclass
class SessionOutcome:
    """What the host measured and saw. Arrays are (N, T) over every window the session scored."""

    hello: bool = False
    ready: dict[str, Any] | None = None
    canonical_graph: dict[str, Any] | None = None
    run_graph: dict[str, Any] | None = None
    program: bytes | None = None  # the inference pass as a program (graph_program), unparsed
    params_after: str | None = None
    advisory: list[str] = field(default_factory=list)
    lse: np.ndarray | None = None
    target_logit: np.ndarray | None = None
    window_nats: np.ndarray | None = None
    kept_rows: dict[tuple[int, int], np.ndarray] = field(default_factory=dict)
    tokens: int = 0
    bytes: int = 0
    batches: int = 0
    spot_rows: int = 0
    clipped: int = 0
    reported_error: dict[str, Any] | None = None
    error: PrismError | None = None
    timings_s: dict[str, float] = field(default_factory=dict)

    @property
    def total_nats(self) -> float:
        return float(self.window_nats.sum()) if self.window_nats is not None else 0.0


def _mismatch(message: str) -> MinerFault:
    return MinerFault(message, code="eval.commitment_mismatch")


def _reply_error(message: str) -> MinerFault:
    # Only the (untrusted) process writes these frames, so a malformed reply is the submission's.
    return MinerFault(f"invalid reply from the evaluation process: {message}", code="eval.protocol")


def _row_lse(rows: np.ndarray) -> np.ndarray:
    values = rows.astype(np.float64)
    top = values.max(axis=1)
    return top + np.log(np.exp(values - top[:, None]).sum(axis=1))


class HeldoutSession:
    """Drives one process over two fds. Never raises: failures land in ``SessionOutcome.error``."""

    def __init__(
        self,
        write_fd: int,
        read_fd: int,
        *,
        deadline: float,
        vocab_size: int,
        cap_nats: float,
        spots: SpotPolicy,
        keep_spot_rows: bool = False,
        graphs: bool = True,
        program: bool = True,
    ) -> None:
        self.writer = FrameWriter(write_fd, deadline=deadline)
        self.reader = FrameReader(read_fd, deadline=deadline)
        self.vocab, self.cap, self.spots, self.keep, self.graphs = (
            vocab_size,
            cap_nats,
            spots,
            keep_spot_rows,
            graphs,
        )
        self.program = program
        self.outcome = SessionOutcome()

    def run(self, windows: np.ndarray, window_bytes: np.ndarray, batch_size: int) -> SessionOutcome:
        out, started = self.outcome, time.monotonic()
        n, seq_len = windows.shape[0], windows.shape[1] - 1
        out.lse, out.target_logit, out.window_nats = (
            np.zeros((n, seq_len)),
            np.zeros((n, seq_len)),
            np.zeros(n),
        )
        try:
            self.writer.write({"type": GO})
            self._read(HELLO)
            out.hello = True
            self._expect_ready()
            if self.program:
                self._expect_program()
            out.timings_s["setup"] = time.monotonic() - started
            loop_start = time.monotonic()
            for first in range(0, n, batch_size):
                self._score_batch(
                    first, windows[first : first + batch_size], window_bytes[first : first + batch_size]
                )
            out.timings_s["batches"] = time.monotonic() - loop_start
            finish_start = time.monotonic()
            self._finish()
            out.timings_s["finish"] = time.monotonic() - finish_start
        except PrismError as exc:
            out.error = exc
        return out

    def _read(self, expected: str) -> tuple[dict[str, Any], bytes]:
        header, payload = self.reader.read()
        if header["type"] == ERROR:
            self.outcome.reported_error = {k: header.get(k) for k in ("code", "fault", "message", "frames")}
            raise ChannelClosed(f"the evaluation process reported {header.get('code')}")
        if header["type"] != expected:
            raise ProtocolError(f"expected {expected!r} from the evaluation process, got {header['type']!r}")
        return header, payload

    def _graph(self, payload: bytes) -> dict[str, Any]:
        try:
            graph = loads_untrusted(payload)
        except ValueError as exc:
            raise _reply_error(f"architecture graph is not JSON: {exc}") from exc
        for key, kind in (("family_id", str), ("version_id", str), ("parameter_count", int)):
            if not isinstance(graph, dict) or not isinstance(graph.get(key), kind):
                raise _reply_error(f"architecture graph lacks {key}")
        flops = graph.get("flops_per_token")
        if not isinstance(flops, (int, float)) or not math.isfinite(flops) or flops < 0:
            raise _reply_error("architecture graph has an invalid flops_per_token")
        return graph

    def _expect_ready(self) -> None:
        header, payload = self._read(READY)
        sha, count = header.get("params_sha256"), header.get("parameter_count")
        if not is_digest(sha) or not isinstance(count, int) or count < 0:
            raise _reply_error("ready frame lacks a valid params_sha256 / parameter_count")
        self.outcome.ready = {
            "params_sha256": sha,
            "parameter_count": count,
            "inference_path": str(header.get("inference_path", "")),
        }
        self.outcome.canonical_graph = self._graph(payload) if self.graphs else None

    def _score_batch(self, first: int, batch: np.ndarray, batch_bytes: np.ndarray) -> None:
        out = self.outcome
        inputs, targets = batch[:, :-1], batch[:, 1:]
        rows, seq_len = inputs.shape
        n = rows * seq_len
        self.writer.write(*encode_tokens(INPUTS, out.batches, inputs))
        _, commitment = self._read(COMMITTED)
        if len(commitment) != n * (8 + DIGEST_BYTES):
            raise _reply_error(f"commitment has {len(commitment)} bytes, expected {n * (8 + DIGEST_BYTES)}")
        lse = np.frombuffer(commitment[: n * 8], dtype="<f8").reshape(rows, seq_len)
        digests = commitment[n * 8 :]
        if not np.isfinite(lse).all() or np.abs(lse).max(initial=0.0) > LSE_BOUND:
            raise MinerFault(
                f"committed log-normalisers are not finite or beyond +-{LSE_BOUND:g}", code="eval.bad_logits"
            )
        self.writer.write(*encode_tokens(TARGETS, out.batches, targets))  # only after the commitment
        _, raw_z = self._read(Z)
        if len(raw_z) != n * 8:
            raise _reply_error("z frame has the wrong length")
        z = np.frombuffer(raw_z, dtype="<f8").reshape(rows, seq_len)
        if not np.isfinite(z).all() or np.any(z > lse + lse_tolerance(lse)):
            raise _mismatch("target logits are not finite or exceed their committed log-normaliser")
        spots = self.spots(out.batches, rows, seq_len)  # drawn only now, after z is fixed
        self.writer.write({"type": SPOTS, "batch": out.batches, "positions": [[b, t] for b, t in spots]})
        _, raw_rows = self._read(ROWS)
        verify_start = time.monotonic()
        self._verify_rows(first, raw_rows, spots, lse, z, digests, targets)
        out.timings_s["verify"] = out.timings_s.get("verify", 0.0) + time.monotonic() - verify_start
        losses = np.clip(lse - z, 0.0, self.cap)  # (B, T) nats per position, never below 0, capped
        out.clipped += int(np.count_nonzero(lse - z > self.cap))
        out.lse[first : first + rows], out.target_logit[first : first + rows] = lse, z
        out.window_nats[first : first + rows] = losses.sum(axis=1)
        out.tokens += n
        out.bytes += int(np.sum(batch_bytes, dtype=np.int64))
        out.batches += 1
        out.spot_rows += len(spots)

    def _verify_rows(
        self,
        first: int,
        raw: bytes,
        spots: list[tuple[int, int]],
        lse: np.ndarray,
        z: np.ndarray,
        digests: bytes,
        targets: np.ndarray,
    ) -> None:
        if len(raw) != len(spots) * self.vocab * 4:
            raise _reply_error(f"rows frame has {len(raw)} bytes, expected {len(spots) * self.vocab * 4}")
        if not spots:
            return
        rows = np.frombuffer(raw, dtype="<f4").reshape(len(spots), self.vocab)
        if not np.isfinite(rows).all():
            raise MinerFault("a revealed logit row is not finite", code="eval.bad_logits")
        recomputed = _row_lse(rows)
        seq_len = lse.shape[1]
        for i, (b, t) in enumerate(spots):
            flat = b * seq_len + t
            if (
                hashlib.sha256(rows[i].tobytes()).digest()
                != digests[flat * DIGEST_BYTES : (flat + 1) * DIGEST_BYTES]
            ):
                raise _mismatch(f"logit row ({b}, {t}) does not match its commitment")
            if abs(recomputed[i] - lse[b, t]) > lse_tolerance(float(lse[b, t])):
                raise _mismatch(f"the committed log-normaliser at ({b}, {t}) is not that of its row")
            if float(rows[i, int(targets[b, t])]) != z[b, t]:
                raise _mismatch(f"the reported target logit at ({b}, {t}) is not that of its row")
            if self.keep:
                self.outcome.kept_rows[(first + b, t)] = rows[i].copy()

    def _finish(self) -> None:
        self.writer.write({"type": FINISH})
        header, payload = self._read(DONE)
        if not is_digest(header.get("params_sha256")):
            raise _reply_error("done frame lacks a valid params_sha256")
        self.outcome.params_after = header["params_sha256"]
        advisory = header.get("advisory")
        self.outcome.advisory = [str(a)[:500] for a in advisory[:20]] if isinstance(advisory, list) else []
        self.outcome.run_graph = self._graph(payload) if self.graphs else None

    def _expect_program(self) -> None:
        """The inference pass as a program, sent right after ready: before the first held-out
        input, so nothing in it (constants, arguments) can come from held-out text."""
        program = self._read(PROGRAM)[1]
        if len(program) > MAX_PROGRAM_BYTES:
            raise MinerFault(
                f"the recorded inference pass is {len(program):,} bytes, over {MAX_PROGRAM_BYTES:,}",
                code="identity.program_invalid",
            )
        self.outcome.program = program


# ----------------------------------------------------------------------------------------------
# the sandboxed process


@dataclass(frozen=True)
class HeldoutJob:
    """One held-out (or replay) process: what it sees and how long it may take."""

    spec: EvalProcessSpec
    submission_dir: Path
    weights_path: Path
    log_path: Path
    limits: sb.SandboxLimits
    isolation: sb.IsolationProbe
    extra_binds: tuple[sb.Bind, ...] = ()
    #: The replay's private runtime (:mod:`prism.evaluator.replay_runtime`): replaces
    #: ``python_binds()``, and the process then reads per-run copies of the submission and weights
    #: directories, so it shares no page-cache inode with the main process. None: the host's files.
    runtime_binds: tuple[sb.Bind, ...] | None = None


class HeldoutProcess:
    """A started evaluation process; :meth:`drive` runs a session on it, :meth:`close` reaps it."""

    def __init__(self, job: HeldoutJob) -> None:
        self.job = job
        self.started = time.monotonic()
        self.launch_error: PrismError | None = None
        self.result: sb.SandboxResult | None = None
        self.proc: sb.SandboxProcess | None = None
        self._spec_dir = Path(tempfile.mkdtemp(prefix="heldout-spec-", dir=job.log_path.parent))
        spec_path = self._spec_dir / "heldout_spec.json"
        spec_path.write_text(job.spec.model_dump_json(indent=2), encoding="utf-8")
        self._private: Path | None = None
        try:
            binds = [*self._file_binds(), sb.Bind(src=self._spec_dir), *job.extra_binds]
        except PrismError as exc:  # a private copy failed: reported like a failed launch
            self.launch_error = exc
            return
        argv = [sys.executable, "-m", "prism.evaluator.heldout", "--spec", str(spec_path)]
        env = {"OMP_NUM_THREADS": str(job.spec.torch_threads), "PYTHONHASHSEED": "0"}
        sandbox_spec = sb.SandboxSpec(
            argv=argv, binds=binds, env=env, cwd="/tmp", limits=job.limits, stdin="pipe", stdout="pipe"
        )
        try:
            self.proc = sb.start_sandboxed(sandbox_spec, log_path=job.log_path, isolation=job.isolation)
        except PrismError as exc:
            self.proc, self.launch_error = None, exc

    def _file_binds(self) -> list[sb.Bind]:
        """The runtime, submission and weights directories: the host's own, or (for a replay with
        ``runtime_binds``) per-run private copies in the log directory, bound at the original paths:
        new inodes no main process can read, so their page-cache state carries nothing from it."""
        job = self.job
        if job.runtime_binds is None:
            return [*sb.python_binds(), sb.Bind(src=job.submission_dir), sb.Bind(src=job.weights_path.parent)]
        self._private = Path(tempfile.mkdtemp(prefix="replay-private-", dir=job.log_path.parent))
        submission = private_copy(job.submission_dir, self._private / "submission")
        weights = private_copy(job.weights_path.parent, self._private / "weights")
        return [
            *job.runtime_binds,
            sb.Bind(src=submission, dest=job.submission_dir),
            sb.Bind(src=weights, dest=job.weights_path.parent),
        ]

    def drive(
        self,
        windows: np.ndarray,
        window_bytes: np.ndarray,
        *,
        batch_size: int,
        cap_nats: float,
        spots: SpotPolicy,
        keep_spot_rows: bool = False,
    ) -> SessionOutcome:
        if self.proc is None or self.proc.stdin is None or self.proc.protocol is None:
            return SessionOutcome()
        session = HeldoutSession(
            self.proc.stdin.fileno(), self.proc.protocol.fileno(), deadline=self.started + self.job.limits.wall_s,
            vocab_size=int(self.job.spec.context["vocab_size"]), cap_nats=cap_nats, spots=spots, keep_spot_rows=keep_spot_rows,
            graphs=self.job.spec.record_graphs, program=self.job.spec.record_program,
        )  # fmt: skip
        try:
            return session.run(windows, window_bytes, batch_size)
        except BaseException:  # Ctrl-C / shutdown mid-protocol: do not leave the process behind
            self.proc.kill()
            raise

    def execute(self, program: bytes, windows: np.ndarray) -> ProgramReply:
        """Before ``go``: have this process (no submission code loaded yet) execute ``program`` on
        ``windows`` (K, T+1). Never raises: a broken channel lands in ``ProgramReply.error``."""
        reply = ProgramReply()
        if self.proc is None or self.proc.stdin is None or self.proc.protocol is None:
            return reply
        deadline = self.started + self.job.limits.wall_s
        writer = FrameWriter(self.proc.stdin.fileno(), deadline=deadline)
        reader = FrameReader(self.proc.protocol.fileno(), deadline=deadline)
        data = np.ascontiguousarray(windows, dtype="<i8")
        header = {"type": EXECUTE, "shape": [int(n) for n in data.shape], "tokens_bytes": data.nbytes}
        try:
            writer.write(header, data.tobytes() + program)
            reply.sent = True
            answer, payload = reader.read()
            if answer.get("type") != EXECUTED:
                raise ProtocolError(f"expected {EXECUTED!r}, got {answer.get('type')!r}")
            reply.parse(answer, payload, data.shape[0], data.shape[1] - 1)
        except PrismError as exc:
            reply.error = exc
        except BaseException:
            self.proc.kill()
            raise
        return reply

    def kill(self) -> None:
        """Kill the process now (idempotent; :meth:`close` still reaps it)."""
        if self.proc is not None:
            self.proc.kill()

    def close(self, outcome: SessionOutcome | None) -> sb.SandboxResult | None:
        """End the process (it is killed unless it finished the protocol) and reap it."""
        try:
            if self.proc is None:
                return None
            # A read that ran out of time ran out at the wall limit (the deadline is the same): the
            # sandbox's own watchdog kills the process there and records the timeout, so the host
            # does not race it with a kill of its own (that would report a protocol failure).
            out_of_time = outcome is not None and isinstance(outcome.error, ChannelTimeout)
            if (
                outcome is None or outcome.error is not None or outcome.params_after is None
            ) and not out_of_time:
                self.proc.kill()
            if self.proc.stdin is not None:
                try:
                    self.proc.stdin.close()
                except OSError:
                    pass
            try:
                self.result = self.proc.wait()
            except PrismError as exc:  # bwrap itself failed before starting the command
                self.launch_error = exc
            return self.result
        finally:
            shutil.rmtree(self._spec_dir, ignore_errors=True)
            if self._private is not None:
                shutil.rmtree(self._private, ignore_errors=True)


__all__ = [
    "HeldoutJob",
    "HeldoutProcess",
    "HeldoutSession",
    "SessionOutcome",
    "SpotPolicy",
    "random_spots",
]
