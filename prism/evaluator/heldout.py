"""Held-out evaluation: a separate sandboxed process measures the trained model; the host scores it.

Two sides live here.

**Inside the sandbox** (``python -m prism.evaluator.heldout --spec PATH``): read the
:class:`EvalProcessSpec`, move the protocol pipes off fds 0/1 (stdin becomes ``/dev/null``,
stdout goes to the log, so a ``print`` in submission code cannot corrupt the protocol), read the
trained weights (safetensors: tensors only), and only then import the submission. Rebuild the
model with the run's context, load the weights with a strict key/shape match, hash every
parameter and buffer, record the architecture graph on a *fresh* model built at the profile's
canonical context (:mod:`prism.evaluator.graph`), check causality once, then serve batches.

**On the host** (:func:`run_heldout`): start that process through the sandbox launcher and drive
the protocol. Per batch of held-out windows ``w`` (``(B, T+1)``, inputs ``w[:, :-1]``, targets
``w[:, 1:]``):

1. host -> process: ``inputs`` (int64 ``(B, T)``);
2. process: runs the inference path under ``torch.no_grad`` and *commits* to its predictions:
   for every position the log-normalizer ``L = logsumexp(logits)`` (float64) and the sha256 of
   that position's float32 logit row;
3. host -> process, only now: ``targets`` plus a few positions picked with the host's own
   randomness;
4. process -> host: the target logit ``z`` of every position and the full logit rows of the
   picked positions;
5. host: checks each picked row against its committed digest, recomputes its log-normalizer,
   checks ``z`` against the row, and adds ``sum(L - z)`` nats.

So the host computes the loss itself from committed values, and a submission that takes over
the evaluation process (it runs in it) and reports a made-up loss is caught by the spot checks
(``eval.commitment_mismatch``). ``bpb = total_nats / (ln 2 * total_bytes)`` with the byte
counts from the host's data loader. The parameter hashes before and after (sha256 over names,
dtypes, shapes and bytes) are reported by the process: evidence that catches a model that
adapts its weights during evaluation, not a proof against a process that lies.

Frames in both directions: ``>II`` (header length, payload length), a UTF-8 JSON header with a
``type``, then the raw payload. Sizes are bounded and every reply is validated by the host
(types, lengths, finiteness); a stalled process is killed at the wall-clock limit.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import secrets
import select
import shutil
import struct
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from prism.errors import InfrastructureFault, MinerFault, PrismError
from prism.manifest import Failure

logger = logging.getLogger(__name__)

LN2 = math.log(2.0)
FRAME_PREFIX = struct.Struct(">II")
MAX_HEADER_BYTES = 1 << 20
#: Largest payload either side accepts (a graph JSON, or one batch's commitments for GPT-2 vocab).
MAX_PAYLOAD_BYTES = 1 << 30
DIGEST_BYTES = 32
#: Logit rows revealed per batch for the commitment check. Lying about a fraction f of the
#: positions of n batches survives with probability about (1 - f)^(k n).
DEFAULT_SPOT_CHECKS = 4
MAX_SPOT_CHECKS = 64
# L is computed in float64 from the same float32 row on both sides: only summation order differs.
LOGSUMEXP_TOLERANCE = 1e-6
# Only positions strictly after the cut are perturbed in the causality check.
CAUSALITY_ATOL = 1e-4
CAUSALITY_RTOL = 1e-4
CAUSALITY_WINDOWS = 2
# How much of a model's own call-to-call drift is tolerated on top of the fixed tolerances.
CAUSALITY_DRIFT_FACTOR = 4.0

LSE_CHUNK_ROWS = 1024
EXIT_GRACE_S = 3.0  # a process that reported an error is given this long to exit by itself
EXIT_OK = 0
EXIT_MINER_FAULT = 3
EXIT_INFRA_FAULT = 4

# Failure codes (stable). Miner: the submission is at fault. Infrastructure: ours, retried.
CODE_FORWARD_FAILED = "eval.forward_failed"
CODE_BAD_LOGITS = "eval.bad_logits"
CODE_WEIGHTS_MISMATCH = "eval.weights_mismatch"
CODE_BUILD_FAILED = "eval.build_failed"
CODE_NONCAUSAL = "eval.noncausal"
CODE_COMMITMENT = "eval.commitment_mismatch"
CODE_TIMEOUT = "eval.timeout"
CODE_MEMORY = "eval.memory_exceeded"
CODE_CRASHED = "eval.crashed"
CODE_PROTOCOL = "eval.protocol"
CODE_SANDBOX = "eval.sandbox_failed"
CODE_SPEC = "eval.spec_invalid"


# =============================================================================================
# Framing (both sides, no torch)


class ProtocolError(InfrastructureFault):
    """The byte stream broke the framing rules (the host decides whose fault that is)."""

    default_code = CODE_PROTOCOL


class ChannelClosed(ProtocolError):
    """The other side closed its end (usually: the process exited or was killed)."""


class ChannelTimeout(ProtocolError):
    """No complete frame before the deadline."""


def encode_frame(header: dict[str, Any], payload: bytes = b"") -> bytes:
    head = json.dumps(header, separators=(",", ":"), allow_nan=False).encode("utf-8")
    if len(head) > MAX_HEADER_BYTES or len(payload) > MAX_PAYLOAD_BYTES:
        raise ProtocolError(f"frame too large (header {len(head)} B, payload {len(payload)} B)")
    return FRAME_PREFIX.pack(len(head), len(payload)) + head + payload


class FrameReader:
    """Reads frames from a file descriptor with a deadline (``select`` + ``os.read``)."""

    def __init__(self, fd: int, *, deadline: float | None = None) -> None:
        self.fd = fd
        self.deadline = deadline

    def _read_exact(self, n: int) -> bytes:
        chunks: list[bytes] = []
        remaining = n
        while remaining:
            if self.deadline is not None:
                wait = self.deadline - time.monotonic()
                if wait <= 0:
                    raise ChannelTimeout("timed out waiting for the evaluation process")
                ready, _, _ = select.select([self.fd], [], [], wait)
                if not ready:
                    continue
            chunk = os.read(self.fd, min(remaining, 1 << 20))
            if not chunk:
                raise ChannelClosed("the evaluation channel closed")
            chunks.append(chunk)
            remaining -= len(chunk)
        return b"".join(chunks)

    def read(self) -> tuple[dict[str, Any], bytes]:
        head_len, payload_len = FRAME_PREFIX.unpack(self._read_exact(FRAME_PREFIX.size))
        if head_len > MAX_HEADER_BYTES or payload_len > MAX_PAYLOAD_BYTES:
            raise ProtocolError(f"frame exceeds limits (header {head_len} B, payload {payload_len} B)")
        try:
            header = json.loads(self._read_exact(head_len).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ProtocolError(f"frame header is not JSON: {exc}") from exc
        if not isinstance(header, dict) or not isinstance(header.get("type"), str):
            raise ProtocolError("frame header must be an object with a string 'type'")
        return header, self._read_exact(payload_len)


class FrameWriter:
    """Writes frames to a file descriptor; with a deadline the fd is made non-blocking."""

    def __init__(self, fd: int, *, deadline: float | None = None) -> None:
        self.fd = fd
        self.deadline = deadline
        if deadline is not None:
            os.set_blocking(fd, False)

    def write(self, header: dict[str, Any], payload: bytes = b"") -> None:
        view = memoryview(encode_frame(header, payload))
        while view:
            if self.deadline is not None:
                wait = self.deadline - time.monotonic()
                if wait <= 0:
                    raise ChannelTimeout("timed out writing to the evaluation process")
                _, ready, _ = select.select([], [self.fd], [], wait)
                if not ready:
                    continue
            try:
                written = os.write(self.fd, view)
            except BlockingIOError:
                continue
            except (BrokenPipeError, ConnectionResetError) as exc:
                raise ChannelClosed("the evaluation process closed its input") from exc
            view = view[written:]


# =============================================================================================
# The spec the host writes for the process


class EvalProcessSpec(BaseModel):
    """``heldout_spec.json``: everything the evaluation process needs. Paths are as seen inside."""

    model_config = ConfigDict(extra="forbid")

    submission_dir: str
    architecture_entrypoint: str
    training_entrypoint: str | None = None
    weights_path: str
    context: dict[str, Any] = Field(description="the run's context values (as for training)")
    canonical_context: dict[str, int] = Field(description="vocab_size, sequence_length, max_*")
    use_inference_hooks: bool = Field(
        default=True, description="False: model(input_ids) only (reference recipe ignores hooks)"
    )
    device: Literal["cpu", "cuda"] = "cpu"
    torch_threads: int = Field(default=1, ge=1)
    max_batch_size: int = Field(gt=0)


# =============================================================================================
# Inside the sandbox


class _Pipes:
    """The protocol channels, moved off fds 0 and 1 before any submission code is imported."""

    def __init__(self) -> None:
        # os.dup returns non-inheritable fds: processes the submission spawns do not get them.
        self.reader = FrameReader(os.dup(0))
        self.writer = FrameWriter(os.dup(1))
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
        os.dup2(2, 1)  # anything printed now lands in the bounded log, not in the protocol
        sys.stdout = sys.stderr


@dataclass
class _Trusted:
    """Functions captured before the submission is imported (it may monkeypatch torch later).

    Defence in depth only: the host does not trust anything this process computes without a
    commitment check.
    """

    torch: Any
    logsumexp: Any
    gather: Any
    isfinite: Any
    no_grad: Any
    sha256: Any = hashlib.sha256

    @classmethod
    def capture(cls) -> _Trusted:
        import torch

        return cls(
            torch=torch,
            logsumexp=torch.logsumexp,
            gather=torch.gather,
            isfinite=torch.isfinite,
            no_grad=torch.no_grad,
        )


def params_sha256(model: Any) -> str:
    """sha256 over (name, dtype, shape, bytes) of every parameter and buffer, sorted by name."""
    import torch

    digest = hashlib.sha256()
    named = list(model.named_parameters(remove_duplicate=False)) + list(
        model.named_buffers(remove_duplicate=False)
    )
    for name, tensor in sorted(named, key=lambda item: item[0]):
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)
        raw = flat.view(torch.uint8) if flat.numel() else flat
        digest.update(name.encode("utf-8") + b"\0")
        digest.update(str(tensor.dtype).encode("ascii") + b"\0")
        digest.update(json.dumps(list(tensor.shape)).encode("ascii") + b"\0")
        digest.update(raw.numpy().tobytes() if flat.numel() else b"")
    return digest.hexdigest()


def _miner(code: str, what: str, exc: BaseException) -> MinerFault:
    return MinerFault(f"{what}: {type(exc).__name__}: {exc}", code=code)


def _call_submission(code: str, what: str, fn: Any, *args: Any) -> Any:
    """Run submission code; anything it raises is its fault (typed, with our code)."""
    try:
        return fn(*args)
    except MinerFault:
        raise
    except Exception as exc:
        raise _miner(code, what, exc) from exc


class _Evaluator:
    """The in-sandbox side: builds, loads, records, then answers batches."""

    def __init__(self, spec: EvalProcessSpec, pipes: _Pipes, trusted: _Trusted) -> None:
        self.spec = spec
        self.pipes = pipes
        self.t = trusted
        self.model: Any = None
        self.hooks: dict[str, Any] = {}
        self.ctx: Any = None
        self.logits: Any = None
        self.causality_checked = False
        # Bound now, before the submission is imported (it could rebind module attributes later).
        from prism.evaluator.loading import inference_logits

        self._inference_logits = inference_logits

    # -- setup ----------------------------------------------------------------------------

    def read_weights(self) -> dict[str, Any]:
        from safetensors.torch import load_file

        # The host checked the file exists before starting us. It was written in the training
        # sandbox, where submission code ran too, so an unreadable file is the submission's.
        try:
            return load_file(self.spec.weights_path, device="cpu")
        except Exception as exc:
            raise _miner(
                CODE_WEIGHTS_MISMATCH, "trained weights are not a valid safetensors file", exc
            ) from exc

    def setup(self, state: dict[str, Any]) -> dict[str, Any]:
        from prism.evaluator.context import make_context
        from prism.evaluator.graph import record_architecture
        from prism.evaluator.loading import (
            INFERENCE_HOOKS,
            count_parameters,
            inference_path_name,
            load_submission_modules,
            resolve_hooks,
        )

        torch = self.t.torch
        loaded = load_submission_modules(
            Path(self.spec.submission_dir),
            self.spec.architecture_entrypoint,
            self.spec.training_entrypoint,
        )
        if self.spec.use_inference_hooks:
            self.hooks = {k: v for k, v in resolve_hooks(loaded).items() if k in INFERENCE_HOOKS}
        self.ctx = make_context(self.spec.context, device=self.spec.device)
        torch.manual_seed(self.ctx.seed)
        self.model = self._build(loaded.architecture, self.ctx, "build_model(ctx) at the run context")
        try:
            self.model.load_state_dict(state, strict=True)
        except Exception as exc:
            raise _miner(CODE_WEIGHTS_MISMATCH, "trained weights do not fit the rebuilt model", exc) from exc
        self.model.to(self.spec.device).eval()
        before = params_sha256(self.model)

        canonical = make_context(self.spec.canonical_context, seed=self.ctx.seed)
        torch.manual_seed(self.ctx.seed)
        fresh = self._build(loaded.architecture, canonical, "build_model(ctx) at the canonical context")
        graph = record_architecture(fresh, canonical)
        del fresh
        return {
            "params_sha256": before,
            "parameter_count": count_parameters(self.model),
            "inference_path": inference_path_name(self.hooks),
            "graph": graph.model_dump(mode="json"),
        }

    def _build(self, module: Any, ctx: Any, what: str) -> Any:
        model = _call_submission(CODE_BUILD_FAILED, what, module.build_model, ctx)
        if not isinstance(model, self.t.torch.nn.Module):
            raise MinerFault(f"{what} returned {type(model).__name__}, not nn.Module", code=CODE_BUILD_FAILED)
        return model

    # -- batches --------------------------------------------------------------------------

    def _forward(self, input_ids: Any) -> Any:
        with self.t.no_grad():
            logits = _call_submission(
                CODE_FORWARD_FAILED,
                "inference",
                self._inference_logits,
                self.model,
                self.hooks,
                input_ids,
                self.ctx,
            )
        logits = logits.detach().to("cpu", self.t.torch.float32).contiguous()
        if not bool(self.t.isfinite(logits).all()):
            raise MinerFault("the inference path returned non-finite logits", code=CODE_BAD_LOGITS)
        return logits

    def _check_causality(self, input_ids: Any, logits: Any) -> None:
        """Changing tokens after a cut must not change any prediction at or before it.

        Catches models that (by mistake or not) look at future tokens: with the whole window
        in the input, such a model would predict most targets perfectly. The unperturbed input
        is run again as well, so a model whose outputs drift between calls (it updates itself,
        or adds noise) is judged against its own drift rather than flagged for it; the drift of
        a model that changes its weights is caught by the parameter hashes instead.
        """
        n = min(CAUSALITY_WINDOWS, input_ids.shape[0])
        seq_len = input_ids.shape[1]
        if seq_len < 2:
            return
        cut = seq_len // 2
        perturbed = input_ids[:n].clone()
        perturbed[:, cut + 1 :] = (perturbed[:, cut + 1 :] + 1) % self.ctx.vocab_size
        changed = self._forward(perturbed)[:, : cut + 1]
        again = self._forward(input_ids[:n].clone())[:, : cut + 1]
        drift = float((again - logits[:n, : cut + 1]).abs().max())
        allowed = CAUSALITY_ATOL + CAUSALITY_RTOL * again.abs() + CAUSALITY_DRIFT_FACTOR * drift
        if bool(((changed - again).abs() > allowed).any()):
            raise MinerFault(
                f"predictions at positions <= {cut} changed when only tokens after {cut} changed: "
                "the model reads future tokens",
                code=CODE_NONCAUSAL,
            )

    def commit(self, input_ids: Any) -> bytes:
        torch = self.t.torch
        logits = self._forward(input_ids)
        if not self.causality_checked:
            self._check_causality(input_ids, logits)
            self.causality_checked = True
        self.logits = logits
        rows = logits.reshape(-1, logits.shape[-1])
        # float64 in chunks: a GPT-2-vocab batch would need gigabytes in one piece.
        lse = torch.cat(
            [
                self.t.logsumexp(rows[i : i + LSE_CHUNK_ROWS].to(torch.float64), dim=-1)
                for i in range(0, rows.shape[0], LSE_CHUNK_ROWS)
            ]
        )
        row_bytes = rows.numpy()
        digests = b"".join(self.t.sha256(row_bytes[i].tobytes()).digest() for i in range(row_bytes.shape[0]))
        return lse.numpy().astype("<f8").tobytes() + digests

    def reveal(self, targets: Any, spots: list[tuple[int, int]]) -> bytes:
        torch = self.t.torch
        logits = self.logits
        self.logits = None
        # Gathering the float32 logit and widening it is exact, and needs no float64 copy.
        z = self.t.gather(logits, -1, targets.unsqueeze(-1)).squeeze(-1).to(torch.float64)
        rows = [logits[b, t].numpy().astype("<f4").tobytes() for b, t in spots]
        return z.numpy().astype("<f8").tobytes() + b"".join(rows)

    # -- loop -----------------------------------------------------------------------------

    def serve(self) -> None:
        torch = self.t.torch
        expected_len = int(self.spec.context["sequence_length"])
        vocab = self.ctx.vocab_size
        while True:
            header, payload = self.pipes.reader.read()
            kind = header["type"]
            if kind == "finish":
                self.pipes.writer.write({"type": "done", "params_sha256": params_sha256(self.model)})
                return
            if kind != "inputs":
                raise ProtocolError(f"expected inputs or finish, got {kind!r}")
            input_ids = _decode_tokens(torch, header, payload, expected_len, vocab, self.spec.max_batch_size)
            input_ids = input_ids.to(self.spec.device)
            commitment = self.commit(input_ids)
            self.pipes.writer.write({"type": "committed", "batch": header.get("batch")}, commitment)
            header, payload = self.pipes.reader.read()
            if header["type"] != "targets":
                raise ProtocolError(f"expected targets, got {header['type']!r}")
            targets = _decode_tokens(torch, header, payload, expected_len, vocab, self.spec.max_batch_size)
            spots = [(int(b), int(t)) for b, t in header.get("spots", [])]
            self.pipes.writer.write(
                {"type": "revealed", "batch": header.get("batch")}, self.reveal(targets, spots)
            )


def _decode_tokens(
    torch: Any, header: dict[str, Any], payload: bytes, seq_len: int, vocab: int, max_b: int
) -> Any:
    shape = header.get("shape")
    if not (isinstance(shape, list) and len(shape) == 2 and 0 < shape[0] <= max_b and shape[1] == seq_len):
        raise ProtocolError(f"bad token batch shape {shape!r}")
    if len(payload) != shape[0] * shape[1] * 8:
        raise ProtocolError("token payload length does not match its shape")
    array = np.frombuffer(payload, dtype="<i8").reshape(shape)
    if array.min() < 0 or array.max() >= vocab:
        raise ProtocolError("token ids out of range")
    return torch.from_numpy(array.astype(np.int64))


def process_main(argv: list[str] | None = None) -> int:
    """Entry point of the evaluation process. Returns the exit code (the caller exits)."""
    parser = argparse.ArgumentParser(prog="python -m prism.evaluator.heldout")
    parser.add_argument("--spec", required=True, type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    pipes = _Pipes()
    phase = "setup"
    try:
        try:
            spec = EvalProcessSpec.model_validate_json(args.spec.read_text(encoding="utf-8"))
        except (OSError, ValidationError) as exc:
            raise InfrastructureFault(f"cannot read the evaluation spec: {exc}", code=CODE_SPEC) from exc
        trusted = _Trusted.capture()
        trusted.torch.set_num_threads(spec.torch_threads)
        evaluator = _Evaluator(spec, pipes, trusted)
        # From here on the process handles what the submission produced (its weights, then its
        # code): the host treats every later failure as the submission's (see classify_failure).
        pipes.writer.write({"type": "hello"})
        phase = "submission"
        ready = evaluator.setup(evaluator.read_weights())
        graph_json = json.dumps(ready.pop("graph"), separators=(",", ":")).encode("utf-8")
        pipes.writer.write({"type": "ready", **ready}, graph_json)
        phase = "batches"
        evaluator.serve()
        return EXIT_OK
    except PrismError as exc:
        logger.error("held-out evaluation failed in %s: %s", phase, exc)
        _report_error(pipes, exc.code, exc.fault, exc.message)
        return EXIT_MINER_FAULT if exc.fault == "miner" else EXIT_INFRA_FAULT
    except Exception as exc:  # our own bug, or submission code escaping a wrapper
        logger.exception("held-out evaluation crashed in %s", phase)
        fault = "infrastructure" if phase == "setup" else "miner"
        _report_error(pipes, "eval.internal" if fault == "infrastructure" else CODE_CRASHED, fault, repr(exc))
        return EXIT_INFRA_FAULT if fault == "infrastructure" else EXIT_MINER_FAULT


def _report_error(pipes: _Pipes, code: str, fault: str, message: str) -> None:
    try:
        pipes.writer.write({"type": "error", "code": code, "fault": fault, "message": message[:4000]})
    except (OSError, ProtocolError):
        pass  # the host is gone or stopped listening; the exit code still tells it


# =============================================================================================
# Host side


@dataclass
class HeldoutResult:
    """What the host measured. ``failure`` is set (and the metrics are None) when it failed."""

    bpb: float | None
    loss_nats: float | None  # mean nats per token
    tokens: int
    bytes: int
    params_sha256_before: str | None
    params_sha256_after: str | None
    graph: dict[str, Any] | None
    family_id: str | None
    version_id: str | None
    flops_per_token: float | None
    parameter_count: int | None
    sandbox: Any  # prism.evaluator.sandbox.SandboxResult (None if the sandbox never started)
    failure: Failure | None
    inference_path: str | None = None
    batches: int = 0
    spot_checks: int = 0
    timings_s: dict[str, float] = field(default_factory=dict)

    @property
    def params_changed(self) -> bool:
        return (
            self.params_sha256_before is not None
            and self.params_sha256_after is not None
            and self.params_sha256_before != self.params_sha256_after
        )


@dataclass
class SessionOutcome:
    """The protocol's result before the sandbox verdict is folded in."""

    total_nats: float = 0.0
    tokens: int = 0
    bytes: int = 0
    batches: int = 0
    spot_checks: int = 0
    hello: bool = False
    ready: dict[str, Any] | None = None
    graph: dict[str, Any] | None = None
    params_after: str | None = None
    reported_error: dict[str, Any] | None = None
    error: PrismError | None = None
    timings_s: dict[str, float] = field(default_factory=dict)


class HeldoutSession:
    """Drives the protocol over two fds. Never raises: failures land in ``SessionOutcome.error``."""

    def __init__(
        self,
        write_fd: int,
        read_fd: int,
        *,
        deadline: float,
        spot_checks: int = DEFAULT_SPOT_CHECKS,
        rng: np.random.Generator | None = None,
    ) -> None:
        self.writer = FrameWriter(write_fd, deadline=deadline)
        self.reader = FrameReader(read_fd, deadline=deadline)
        self.spot_checks = max(0, min(spot_checks, MAX_SPOT_CHECKS))
        # Spot positions must be unpredictable to the process: fresh OS entropy by default.
        self.rng = rng if rng is not None else np.random.default_rng(secrets.randbits(128))
        self.outcome = SessionOutcome()

    def run(self, windows: np.ndarray, window_bytes: np.ndarray, batch_size: int) -> SessionOutcome:
        started = time.monotonic()
        try:
            self._expect_hello()
            self._expect_ready()
            self.outcome.timings_s["setup"] = time.monotonic() - started
            loop_start = time.monotonic()
            for first in range(0, windows.shape[0], batch_size):
                chunk = slice(first, first + batch_size)
                self._score_batch(windows[chunk], window_bytes[chunk])
            self._finish()
            self.outcome.timings_s["batches"] = time.monotonic() - loop_start
        except PrismError as exc:
            self.outcome.error = exc
        return self.outcome

    def _read(self, expected: str) -> tuple[dict[str, Any], bytes]:
        header, payload = self.reader.read()
        if header["type"] == "error":
            self.outcome.reported_error = {k: header.get(k) for k in ("code", "fault", "message")}
            raise ChannelClosed(f"the evaluation process reported {header.get('code')}")
        if header["type"] != expected:
            raise ProtocolError(f"expected {expected!r} from the evaluation process, got {header['type']!r}")
        return header, payload

    def _expect_hello(self) -> None:
        self._read("hello")
        self.outcome.hello = True

    def _expect_ready(self) -> None:
        header, payload = self._read("ready")
        sha = header.get("params_sha256")
        count = header.get("parameter_count")
        if not _is_sha256(sha) or not isinstance(count, int) or count < 0:
            raise _reply_error("ready frame lacks a valid params_sha256 / parameter_count")
        try:
            graph = json.loads(payload.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise _reply_error(f"architecture graph is not JSON: {exc}") from exc
        _check_graph(graph)
        self.outcome.ready = {
            "params_sha256": sha,
            "parameter_count": count,
            "inference_path": str(header.get("inference_path", "")),
        }
        self.outcome.graph = graph

    def _score_batch(self, batch: np.ndarray, batch_bytes: np.ndarray) -> None:
        inputs = np.ascontiguousarray(batch[:, :-1], dtype="<i8")
        targets = np.ascontiguousarray(batch[:, 1:], dtype="<i8")
        n_rows = inputs.size
        index = self.outcome.batches
        self.writer.write({"type": "inputs", "batch": index, "shape": list(inputs.shape)}, inputs.tobytes())
        _, commitment = self._read("committed")
        if len(commitment) != n_rows * (8 + DIGEST_BYTES):
            raise _reply_error(
                f"commitment has {len(commitment)} bytes, expected {n_rows * (8 + DIGEST_BYTES)}"
            )
        lse = np.frombuffer(commitment[: n_rows * 8], dtype="<f8")
        digests = commitment[n_rows * 8 :]
        if not np.isfinite(lse).all():
            raise MinerFault("committed log-normalizers are not finite", code=CODE_BAD_LOGITS)
        spots = self._pick_spots(inputs.shape)
        self.writer.write(
            {"type": "targets", "batch": index, "shape": list(targets.shape), "spots": spots},
            targets.tobytes(),
        )
        _, revealed = self._read("revealed")
        z = self._verify_reveal(revealed, lse, digests, targets, spots)
        nats = float(np.sum(lse - z, dtype=np.float64))
        self.outcome.total_nats += nats
        self.outcome.tokens += n_rows
        self.outcome.bytes += int(np.sum(batch_bytes, dtype=np.int64))
        self.outcome.batches += 1
        self.outcome.spot_checks += len(spots)

    def _pick_spots(self, shape: tuple[int, ...]) -> list[list[int]]:
        n_rows = shape[0] * shape[1]
        k = min(self.spot_checks, n_rows)
        flat = self.rng.choice(n_rows, size=k, replace=False) if k else []
        return [[int(i) // shape[1], int(i) % shape[1]] for i in flat]

    def _verify_reveal(
        self, revealed: bytes, lse: np.ndarray, digests: bytes, targets: np.ndarray, spots: list[list[int]]
    ) -> np.ndarray:
        n_rows = lse.size
        z_bytes = n_rows * 8
        if len(revealed) < z_bytes or (len(revealed) - z_bytes) % 4:
            raise _reply_error("reveal frame has the wrong length")
        z = np.frombuffer(revealed[:z_bytes], dtype="<f8")
        rows_flat = np.frombuffer(revealed[z_bytes:], dtype="<f4")
        if spots and rows_flat.size % len(spots):
            raise _reply_error("revealed rows do not split into the requested positions")
        if not spots and rows_flat.size:
            raise _reply_error("rows revealed that were not requested")
        if not np.isfinite(z).all() or np.any(z > lse + LOGSUMEXP_TOLERANCE):
            raise MinerFault(
                "target logits are not finite or exceed their log-normalizer", code=CODE_COMMITMENT
            )
        vocab = rows_flat.size // len(spots) if spots else 0
        seq_len = targets.shape[1]
        for i, (b, t) in enumerate(spots):
            row = rows_flat[i * vocab : (i + 1) * vocab]
            flat = b * seq_len + t
            committed = digests[flat * DIGEST_BYTES : (flat + 1) * DIGEST_BYTES]
            if hashlib.sha256(row.astype("<f4").tobytes()).digest() != committed:
                raise MinerFault(f"logit row ({b}, {t}) does not match its commitment", code=CODE_COMMITMENT)
            target = int(targets[b, t])
            if target >= vocab or not _matches_row(row, lse[flat], z[flat], target):
                raise MinerFault(
                    f"reported loss at ({b}, {t}) disagrees with the committed logits", code=CODE_COMMITMENT
                )
        return z

    def _finish(self) -> None:
        self.writer.write({"type": "finish"})
        header, _ = self._read("done")
        sha = header.get("params_sha256")
        if not _is_sha256(sha):
            raise _reply_error("done frame lacks a valid params_sha256")
        self.outcome.params_after = sha


def _matches_row(row: np.ndarray, lse: float, z: float, target: int) -> bool:
    values = row.astype(np.float64)
    top = float(values.max())
    if not math.isfinite(top):
        return False
    recomputed = top + math.log(float(np.sum(np.exp(values - top))))
    return abs(recomputed - lse) <= LOGSUMEXP_TOLERANCE * max(1.0, abs(lse)) and float(values[target]) == z


def _is_sha256(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def _reply_error(message: str) -> MinerFault:
    # Only the (untrusted) process writes these frames, so a malformed reply is the submission's.
    return MinerFault(f"invalid reply from the evaluation process: {message}", code=CODE_PROTOCOL)


def _check_graph(graph: Any) -> None:
    if not isinstance(graph, dict):
        raise _reply_error("architecture graph must be an object")
    for key, kind in (("family_id", str), ("version_id", str), ("parameter_count", int)):
        if not isinstance(graph.get(key), kind):
            raise _reply_error(f"architecture graph lacks {key}")
    flops = graph.get("flops_per_token")
    if not isinstance(flops, (int, float)) or not math.isfinite(flops) or flops < 0:
        raise _reply_error("architecture graph has an invalid flops_per_token")


def _validate_request(
    windows: np.ndarray, window_bytes: np.ndarray, batch_size: int, context: dict[str, Any]
) -> tuple[np.ndarray, np.ndarray]:
    windows = np.asarray(windows)
    window_bytes = np.asarray(window_bytes)
    seq_len = int(context["sequence_length"])
    if windows.ndim != 2 or windows.shape[1] != seq_len + 1 or windows.shape[0] == 0:
        raise InfrastructureFault(
            f"held-out windows must be (N, {seq_len + 1}), got {windows.shape}", code="eval.bad_request"
        )
    if not np.issubdtype(windows.dtype, np.integer) or windows.min() < 0:
        raise InfrastructureFault(
            "held-out windows must hold non-negative token ids", code="eval.bad_request"
        )
    if window_bytes.shape != (windows.shape[0],) or np.any(window_bytes <= 0):
        raise InfrastructureFault("window_bytes must be (N,) positive byte counts", code="eval.bad_request")
    if batch_size <= 0:
        raise InfrastructureFault("batch_size must be positive", code="eval.bad_request")
    return windows.astype(np.int64), window_bytes.astype(np.int64)


def run_heldout(
    *,
    submission_dir: Path,
    architecture_entrypoint: str,
    training_entrypoint: str | None,
    weights_path: Path,
    context: dict[str, Any],
    canonical_context: dict[str, Any],
    windows: np.ndarray,
    window_bytes: np.ndarray,
    batch_size: int,
    limits: Any,
    log_path: Path,
    isolation: Any,
    extra_binds: list[Any],
    use_inference_hooks: bool = True,
    device: Literal["cpu", "cuda"] = "cpu",
    torch_threads: int = 1,
    spot_checks: int = DEFAULT_SPOT_CHECKS,
) -> HeldoutResult:
    """Measure held-out bpb and the architecture graph in a fresh sandboxed process.

    ``limits`` is a ``SandboxLimits`` (eval phase), ``isolation`` the launcher's probe,
    ``extra_binds`` further read-only ``Bind``s (e.g. a GPU device). Never raises for a
    submission's failure: it comes back in ``HeldoutResult.failure`` (miner or infrastructure).
    Raises ``InfrastructureFault`` only for a malformed request (a bug in the caller).
    """
    from prism.evaluator.sandbox import Bind, SandboxSpec, python_binds, start_sandboxed

    windows, window_bytes = _validate_request(windows, window_bytes, batch_size, context)
    weights_path = Path(weights_path).resolve()
    submission_dir = Path(submission_dir).resolve()
    if not weights_path.is_file():
        raise InfrastructureFault(f"no trained weights at {weights_path}", code="eval.bad_request")
    log_path = Path(log_path).resolve()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    # Next to the log, not under /tmp: inside the sandbox /tmp is a private tmpfs.
    spec_dir = Path(tempfile.mkdtemp(prefix="heldout-spec-", dir=log_path.parent))
    try:
        spec = EvalProcessSpec(
            submission_dir=str(submission_dir),
            architecture_entrypoint=architecture_entrypoint,
            training_entrypoint=training_entrypoint,
            weights_path=str(weights_path),
            context=dict(context),
            canonical_context={k: int(v) for k, v in canonical_context.items()},
            use_inference_hooks=use_inference_hooks,
            device=device,
            torch_threads=torch_threads,
            max_batch_size=batch_size,
        )
        spec_path = spec_dir / "heldout_spec.json"
        spec_path.write_text(spec.model_dump_json(indent=2), encoding="utf-8")
        # Every path is bound at its own host path, so the spec reads the same in degraded mode.
        binds = [
            *python_binds(),
            Bind(src=submission_dir),
            Bind(src=weights_path.parent),
            Bind(src=spec_dir),
            *extra_binds,
        ]
        sandbox_spec = SandboxSpec(
            argv=[sys.executable, "-m", "prism.evaluator.heldout", "--spec", str(spec_path)],
            binds=binds,
            env={"OMP_NUM_THREADS": str(torch_threads), "PYTHONHASHSEED": "0"},
            cwd="/tmp",
            limits=limits,
            stdin="pipe",
            stdout="pipe",
        )
        started = time.monotonic()
        try:
            proc = start_sandboxed(sandbox_spec, log_path=log_path, isolation=isolation)
        except PrismError as exc:
            return _failed(None, Failure(code=CODE_SANDBOX, fault="infrastructure", message=str(exc)))
        session = HeldoutSession(
            proc.stdin.fileno(),
            proc.protocol.fileno(),
            deadline=started + float(limits.wall_s),
            spot_checks=spot_checks,
        )
        try:
            outcome = session.run(windows, window_bytes, batch_size)
        except BaseException:  # Ctrl-C / shutdown mid-protocol: do not leave the process behind
            proc.kill()
            raise
        if outcome.error is not None:
            _stop(proc, graceful=outcome.reported_error is not None)
        _close_quietly(proc.stdin)
        try:
            sandbox_result = proc.wait()
        except PrismError as exc:  # the launcher itself failed (e.g. bwrap could not start)
            return _failed(None, Failure(code=CODE_SANDBOX, fault="infrastructure", message=str(exc)))
        return assemble_result(outcome, sandbox_result)
    finally:
        shutil.rmtree(spec_dir, ignore_errors=True)


def _stop(proc: Any, *, graceful: bool) -> None:
    """Kill the process tree; one that reported its own error gets a moment to exit first."""
    if graceful:
        deadline = time.monotonic() + EXIT_GRACE_S
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
    if proc.poll() is None:
        proc.kill()


def _close_quietly(stream: BinaryIO | None) -> None:
    if stream is None:
        return
    try:
        stream.close()
    except OSError:
        pass


def _failed(sandbox_result: Any, failure: Failure, outcome: SessionOutcome | None = None) -> HeldoutResult:
    ready = (outcome.ready if outcome else None) or {}
    graph = outcome.graph if outcome else None
    return HeldoutResult(
        bpb=None,
        loss_nats=None,
        tokens=outcome.tokens if outcome else 0,
        bytes=outcome.bytes if outcome else 0,
        params_sha256_before=ready.get("params_sha256"),
        params_sha256_after=outcome.params_after if outcome else None,
        graph=graph,
        family_id=graph.get("family_id") if graph else None,
        version_id=graph.get("version_id") if graph else None,
        flops_per_token=graph.get("flops_per_token") if graph else None,
        parameter_count=ready.get("parameter_count"),
        sandbox=sandbox_result,
        failure=failure,
        inference_path=ready.get("inference_path"),
        batches=outcome.batches if outcome else 0,
        spot_checks=outcome.spot_checks if outcome else 0,
        timings_s=dict(outcome.timings_s) if outcome else {},
    )


def classify_failure(outcome: SessionOutcome, sandbox_result: Any) -> Failure | None:
    """Whose fault, and which code. The sandbox's own verdicts (time, memory) come first.

    Before the process says ``hello`` no submission code has run, so failures there are ours.
    After it, the submission shares the process and could fake any report, so every failure is
    the submission's.
    """
    exit_code = getattr(sandbox_result, "exit_code", None)
    error = outcome.error
    if error is None and exit_code in (0, None) and not getattr(sandbox_result, "timed_out", False):
        return None
    after_hello = outcome.hello
    fault = "miner" if after_hello else "infrastructure"
    phase = "heldout"
    if getattr(sandbox_result, "timed_out", False) or isinstance(error, ChannelTimeout):
        return Failure(
            code=CODE_TIMEOUT,
            fault=fault,
            message="the held-out evaluation ran past its time limit",
            phase=phase,
        )
    if getattr(sandbox_result, "memory_exceeded", False):
        return Failure(
            code=CODE_MEMORY,
            fault=fault,
            message="the held-out evaluation exceeded its memory limit",
            phase=phase,
        )
    reported = outcome.reported_error
    if reported is not None:
        code = str(reported.get("code") or CODE_CRASHED)
        message = str(reported.get("message") or "")[:4000]
        claimed = reported.get("fault")
        fault = "miner" if after_hello or claimed == "miner" else "infrastructure"
        return Failure(code=code, fault=fault, message=message, phase=phase)
    if isinstance(error, MinerFault):
        return Failure(code=error.code, fault="miner", message=error.message, phase=phase)
    if error is not None:
        code = CODE_CRASHED if after_hello else CODE_SANDBOX
        detail = f"{error.message}; exit code {exit_code}, signal {getattr(sandbox_result, 'signal', None)}"
        return Failure(code=code, fault=fault, message=detail, phase=phase)
    return Failure(
        code=CODE_CRASHED if after_hello else CODE_SANDBOX,
        fault=fault,
        message=f"the evaluation process exited with {exit_code} after finishing the protocol",
        phase=phase,
    )


def assemble_result(outcome: SessionOutcome, sandbox_result: Any) -> HeldoutResult:
    failure = classify_failure(outcome, sandbox_result)
    if failure is not None:
        return _failed(sandbox_result, failure, outcome)
    graph = outcome.graph or {}
    ready = outcome.ready or {}
    bpb = outcome.total_nats / (LN2 * outcome.bytes)
    return HeldoutResult(
        bpb=bpb,
        loss_nats=outcome.total_nats / outcome.tokens,
        tokens=outcome.tokens,
        bytes=outcome.bytes,
        params_sha256_before=ready.get("params_sha256"),
        params_sha256_after=outcome.params_after,
        graph=graph,
        family_id=graph.get("family_id"),
        version_id=graph.get("version_id"),
        flops_per_token=float(graph["flops_per_token"]),
        parameter_count=ready.get("parameter_count"),
        sandbox=sandbox_result,
        failure=None,
        inference_path=ready.get("inference_path"),
        batches=outcome.batches,
        spot_checks=outcome.spot_checks,
        timings_s=dict(outcome.timings_s),
    )


__all__ = [
    "EvalProcessSpec",
    "FrameReader",
    "FrameWriter",
    "HeldoutResult",
    "HeldoutSession",
    "SessionOutcome",
    "assemble_result",
    "classify_failure",
    "encode_frame",
    "params_sha256",
    "process_main",
    "run_heldout",
]


if __name__ == "__main__":
    raise SystemExit(process_main())
