"""The held-out evaluation process (inside the sandbox): ``python -m prism.evaluator.heldout --spec PATH``.

It moves the protocol pipes off fds 0/1 (stdin becomes ``/dev/null``, stdout goes to the log, so
a ``print`` in submission code cannot corrupt the protocol), reads the trained weights
(safetensors: tensors only), says ``hello``, and only then imports the submission. It rebuilds
the model at the run's context, loads the weights strictly, records the architecture graph of a
fresh model at the profile's canonical context, and answers the host, batch by batch:

1. ``inputs`` (B, T) -> forward -> ``committed``: per position the log-normaliser
   ``L = logsumexp(row)`` (float64) and the sha256 of the float32 logit row;
2. ``targets`` -> ``z``: the target logit of every position (float64);
3. ``spots`` (positions the host drew only now) -> ``rows``: those float32 logit rows.

Right after ``ready`` it sends its inference pass as a program (before the first held-out input).
At ``finish`` it records the graph of the *trained* model at the run's context and says ``done``.
The same process, with the same protocol, answers the host's prefix replay; its spec records no
graphs, and it answers the program check from a forked child before its ``go``.

Everything this process says is evidence; the host checks it (``prism.evaluator.heldout_host``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from prism.errors import InfrastructureFault, MinerFault, PrismError
from prism.evaluator.framing import FrameReader, FrameWriter, ProtocolError
from prism.evaluator.heldout_wire import (
    COMMITTED,
    DONE,
    ERROR,
    EXECUTE,
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
    decode_tokens,
)
from prism.evaluator.untrusted import SubmissionCodeError, call_submission

logger = logging.getLogger(__name__)

EXIT_OK, EXIT_MINER_FAULT, EXIT_INFRA_FAULT = 0, 3, 4
LSE_CHUNK_ROWS = 1024
PARALLEL_ROW_BYTES = 16_384
# Advisory in-process causality check (the verdict is the host's replay in a fresh process).
CAUSALITY_ATOL = 1e-4
CAUSALITY_RTOL = 1e-4
CAUSALITY_WINDOWS = 2


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
    Defence in depth only: the host trusts nothing this process computes without a check."""

    torch: Any
    logsumexp: Any
    gather: Any
    isfinite: Any
    no_grad: Any

    @classmethod
    def capture(cls) -> _Trusted:
        import torch

        return cls(torch, torch.logsumexp, torch.gather, torch.isfinite, torch.no_grad)


def params_sha256(model: Any) -> str:
    """sha256 over (name, dtype, shape, bytes) of every parameter and buffer, sorted by name."""
    import torch

    digest = hashlib.sha256()
    named = list(model.named_parameters(remove_duplicate=False)) + list(
        model.named_buffers(remove_duplicate=False)
    )
    for name, tensor in sorted(named, key=lambda item: item[0]):
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(name.encode("utf-8") + b"\0" + str(tensor.dtype).encode("ascii") + b"\0")
        digest.update(json.dumps(list(tensor.shape)).encode("ascii") + b"\0")
        digest.update(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
    return digest.hexdigest()


def row_digests(rows: np.ndarray, threads: int) -> bytes:
    """sha256 of every float32 row, concatenated. Large rows (GPT-2 vocab: 200 KB) are hashed by a
    thread pool: hashlib releases the GIL for buffers that big, so the commitment scales with cores."""

    def chunk(lo: int, hi: int) -> bytes:
        return b"".join(hashlib.sha256(rows[i].tobytes()).digest() for i in range(lo, hi))

    n = rows.shape[0]
    if threads <= 1 or rows.shape[1] * 4 < PARALLEL_ROW_BYTES or n < 2 * threads:
        return chunk(0, n)
    bounds = np.linspace(0, n, threads + 1).astype(int)
    with ThreadPoolExecutor(max_workers=threads) as pool:
        return b"".join(pool.map(chunk, bounds[:-1], bounds[1:]))


class _Evaluator:
    """Builds, loads, records, then answers batches."""

    def __init__(self, spec: EvalProcessSpec, pipes: _Pipes, trusted: _Trusted) -> None:
        # bound before the submission is imported
        from prism.evaluator.loading import finite_cpu_logits, inference_logits

        self.spec, self.pipes, self.t = spec, pipes, trusted
        self._inference_logits, self._finite_cpu_logits = inference_logits, finite_cpu_logits
        self.model: Any = None
        self.hooks: dict[str, Any] = {}
        self.ctx: Any = None
        self.build_model: Any = None
        self.logits: Any = None
        self.advisory: list[str] = []

    def read_weights(self) -> dict[str, Any]:
        from safetensors.torch import load_file

        try:  # written in the training sandbox, where submission code ran too
            return load_file(self.spec.weights_path, device="cpu")
        except Exception as exc:
            raise MinerFault(
                f"trained weights are not a valid safetensors file: {exc}", code="eval.weights_mismatch"
            ) from exc

    def setup(self, state: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        from prism.evaluator.context import make_context
        from prism.evaluator.loading import (
            INFERENCE_HOOKS,
            count_parameters,
            inference_path_name,
            load_submission_modules,
            resolve_hooks,
        )

        loaded = load_submission_modules(
            Path(self.spec.submission_dir), self.spec.architecture_entrypoint, self.spec.training_entrypoint
        )
        if self.spec.use_inference_hooks:
            self.hooks = {k: v for k, v in resolve_hooks(loaded).items() if k in INFERENCE_HOOKS}
        self.build_model = loaded.architecture.build_model
        self.ctx = make_context(self.spec.context, device=self.spec.device, total_steps=self.spec.total_steps)
        self.t.torch.manual_seed(self.ctx.seed)
        self.model = self._build(self.ctx, "build_model(ctx) at the run context")
        try:
            self.model.load_state_dict(state, strict=True)
        except Exception as exc:
            raise MinerFault(
                f"trained weights do not fit the rebuilt model: {exc}", code="eval.weights_mismatch"
            ) from exc
        self.model.to(self.spec.device).eval()
        ready = {
            "params_sha256": params_sha256(self.model),
            "parameter_count": count_parameters(self.model),
            "inference_path": inference_path_name(self.hooks),
        }
        return ready, self._canonical_graph() if self.spec.record_graphs else {}

    def _canonical_graph(self) -> dict[str, Any]:
        from prism.evaluator.context import make_context
        from prism.evaluator.graph import record_architecture

        canonical = make_context(self.spec.canonical_context, seed=self.ctx.seed)
        self.t.torch.manual_seed(self.ctx.seed)
        fresh = self._build(canonical, "build_model(ctx) at the canonical context")
        return record_architecture(fresh, canonical).model_dump(mode="json")

    def program(self) -> dict[str, Any]:
        """The inference path as it answered the batches (device, dtype, hooks), as a program the
        host has executed elsewhere (``prism.evaluator.graph_program``)."""
        from prism.evaluator.graph import RUN_GRAPH_MAX_BYTES, canonical_tokens
        from prism.evaluator.graph_program import record_program

        tokens = canonical_tokens(self.ctx).to(self.spec.device)
        # One forward first, unrecorded, on the same public ids: state a model builds on its first
        # call (a cache, random features) is then a constant of the program, as on every later call.
        with self.t.torch.no_grad():
            call_submission("eval.forward_failed", "the inference path", self.forward, tokens)
        return record_program(self.forward, self.model, tokens, max_bytes=RUN_GRAPH_MAX_BYTES)

    def run_graph(self) -> dict[str, Any]:
        """The graph of the trained model at the run's context (identity tied to what was trained)."""
        from prism.evaluator.context import make_context
        from prism.evaluator.graph import RUN_GRAPH_MAX_BYTES, public_batches, record_architecture

        # After the last batch: the model moves to CPU float32. Run contexts are large. The batches
        # are the canonical ones repeated to the run's length: the same token ids as the claim was
        # recorded on, so a fold that depends on which ids occur mostly folds the same way in both.
        canonical = make_context(self.spec.canonical_context, seed=self.ctx.seed)
        model = self.model.to(device="cpu", dtype=self.t.torch.float32)
        inputs = public_batches(canonical, self.ctx.sequence_length)
        graph = record_architecture(model, self.ctx, max_recorded_bytes=RUN_GRAPH_MAX_BYTES, inputs=inputs)
        return graph.model_dump(mode="json")

    def _build(self, ctx: Any, what: str) -> Any:
        model = call_submission("eval.build_failed", what, self.build_model, ctx)
        if not isinstance(model, self.t.torch.nn.Module):
            raise MinerFault(
                f"{what} returned {type(model).__name__}, not nn.Module", code="eval.build_failed"
            )
        return model

    def forward(self, input_ids: Any) -> Any:
        # The reference recipe's bf16 autocast on CUDA, as in training; logits go out as float32.
        autocast = self.spec.device == "cuda" and not self.spec.use_inference_hooks
        with self.t.no_grad(), self.t.torch.autocast("cuda", dtype=self.t.torch.bfloat16, enabled=autocast):
            logits = call_submission(
                "eval.forward_failed",
                "inference",
                self._inference_logits,
                self.model,
                self.hooks,
                input_ids,
                self.ctx,
            )
        return self._finite_cpu_logits(logits, self.t.isfinite)

    def check_causality(self, input_ids: Any, logits: Any) -> None:
        """Advisory: do predictions at or before a cut move when only later tokens change?"""
        n, seq_len = min(CAUSALITY_WINDOWS, input_ids.shape[0]), input_ids.shape[1]
        if seq_len < 2:
            return
        cut = seq_len // 2
        perturbed = input_ids[:n].clone()
        perturbed[:, cut + 1 :] = (perturbed[:, cut + 1 :] + 1) % self.ctx.vocab_size
        changed = self.forward(perturbed)[:, : cut + 1]
        allowed = CAUSALITY_ATOL + CAUSALITY_RTOL * logits[:n, : cut + 1].abs()
        if bool(((changed - logits[:n, : cut + 1]).abs() > allowed).any()):
            self.advisory.append(
                f"in-process causality check: predictions at positions <= {cut} moved when only later tokens changed"
            )

    def commit(self, input_ids: Any) -> bytes:
        torch = self.t.torch
        logits = self.forward(input_ids)
        if not self.advisory:
            self.check_causality(input_ids, logits)
        self.logits = logits
        rows = logits.reshape(-1, logits.shape[-1])
        # float64 in chunks: a GPT-2-vocab batch would need gigabytes in one piece.
        lse = torch.cat(
            [
                self.t.logsumexp(rows[i : i + LSE_CHUNK_ROWS].to(torch.float64), dim=-1)
                for i in range(0, rows.shape[0], LSE_CHUNK_ROWS)
            ]
        )
        return lse.numpy().astype("<f8").tobytes() + row_digests(rows.numpy(), self.spec.torch_threads)

    def target_logits(self, targets: Any) -> bytes:
        # Gathering the float32 logit and widening it is exact, and needs no float64 copy.
        z = self.t.gather(self.logits, -1, targets.unsqueeze(-1)).squeeze(-1).to(self.t.torch.float64)
        return z.numpy().astype("<f8").tobytes()

    def spot_rows(self, spots: list[tuple[int, int]]) -> bytes:
        logits, self.logits = self.logits, None
        return b"".join(logits[b, t].numpy().astype("<f4").tobytes() for b, t in spots)

    def serve(self) -> None:
        seq_len, vocab = int(self.spec.context["sequence_length"]), self.ctx.vocab_size
        while True:
            header, payload = self.pipes.reader.read()
            if header["type"] == FINISH:
                self._finish()
                return
            if header["type"] != INPUTS:
                raise ProtocolError(f"expected inputs or finish, got {header['type']!r}")
            self._one_batch(header, payload, seq_len, vocab)

    def _finish(self) -> None:
        after = params_sha256(self.model)
        graph = _json(self.run_graph() if self.spec.record_graphs else {})
        self.pipes.writer.write({"type": DONE, "params_sha256": after, "advisory": self.advisory}, graph)

    def _one_batch(self, header: dict[str, Any], payload: bytes, seq_len: int, vocab: int) -> None:
        torch, batch = self.t.torch, header.get("batch")
        input_ids = torch.from_numpy(decode_tokens(header, payload, seq_len, vocab, self.spec.max_batch_size))
        self.pipes.writer.write(
            {"type": COMMITTED, "batch": batch}, self.commit(input_ids.to(self.spec.device))
        )
        header, payload = self.pipes.reader.expect(TARGETS)
        targets = torch.from_numpy(decode_tokens(header, payload, seq_len, vocab, self.spec.max_batch_size))
        self.pipes.writer.write({"type": Z, "batch": batch}, self.target_logits(targets))
        header, _ = self.pipes.reader.expect(SPOTS)
        spots = [(int(b), int(t)) for b, t in header.get("positions", [])]
        self.pipes.writer.write({"type": ROWS, "batch": batch}, self.spot_rows(spots))


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode("utf-8")


_Answer = Callable[[dict[str, Any], bytes, dict[str, Any], EvalProcessSpec], tuple[dict[str, Any], bytes]]


def _until_go(pipes: _Pipes, state: dict[str, Any], spec: EvalProcessSpec) -> None:
    """Before ``go`` no submission code has run here. A replay the host will ask for the program
    check answers it first, from a forked child, then waits for go."""
    if spec.program_check:
        _program_check_in_a_child(pipes, state, spec)
    pipes.reader.expect(GO)


def _program_check_in_a_child(pipes: _Pipes, state: dict[str, Any], spec: EvalProcessSpec) -> None:
    """Answer the one ``execute`` from a forked child, which runs trusted code only and exits.
    The program is data the main process chose (its constants, and the windows it is run on
    come with it): it must never be in the memory of a process that will load the submission,
    which could read it back there. The child reads it from the pipe, so this process never
    holds it, and it is gone (its memory with it) before this process reads ``go``."""
    # Imported while the main evaluation runs (a replay starts warm): the check is on the host's
    # critical path once the main process has ended, and these imports take a second or two.
    import torch

    from prism.evaluator.program_exec import answer_execute, warm_up

    if torch.cuda.is_initialized():  # a forked child cannot use CUDA; nothing here should touch it
        raise InfrastructureFault("CUDA was initialised before the program check's fork", code="eval.crashed")
    warm_up()  # on one thread (process_main): neither side may start an OpenMP team before the fork
    sys.stderr.flush()
    child = os.fork()
    if child == 0:
        _child_answers(pipes, state, spec, answer_execute)
    _, status = os.waitpid(child, 0)
    if status != 0:  # it died before or while it answered: the stream is in an unknown state, so end
        logger.error("the program check's child failed (wait status %s)", status)
        os._exit(EXIT_MINER_FAULT)  # the host reads end of file: the program failed its check
    torch.set_num_threads(spec.torch_threads)


def _child_answers(pipes: _Pipes, state: dict[str, Any], spec: EvalProcessSpec, answer: _Answer) -> None:
    """The forked child: answer the one ``execute``, then leave without any teardown."""
    code = 1
    try:
        import torch

        torch.set_num_threads(spec.torch_threads)
        header, payload = pipes.reader.expect(EXECUTE)
        pipes.writer.write(*answer(header, payload, state, spec))
        code = 0
    except BaseException:
        logger.exception("the program check's child failed")
    finally:
        try:
            sys.stderr.flush()
        finally:
            os._exit(code)


def _report_error(pipes: _Pipes, exc: BaseException) -> int:
    if isinstance(exc, PrismError):
        frames = exc.frames if isinstance(exc, SubmissionCodeError) else []
        fields = {"code": exc.code, "fault": exc.fault, "message": exc.message[:4000], "frames": frames}
    else:
        fields = {"code": "eval.crashed", "fault": "miner", "message": repr(exc)[:4000], "frames": []}
    try:
        pipes.writer.write({"type": ERROR, **fields})
    except (OSError, ProtocolError):
        pass  # the host is gone or stopped listening; the exit code still tells it
    return EXIT_MINER_FAULT if fields["fault"] == "miner" else EXIT_INFRA_FAULT


def process_main(argv: list[str] | None = None) -> int:
    """Entry point of the evaluation process. Returns the exit code (the caller exits)."""
    parser = argparse.ArgumentParser(prog="python -m prism.evaluator.heldout")
    parser.add_argument("--spec", required=True, type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    pipes = _Pipes()
    try:
        try:
            spec = EvalProcessSpec.model_validate_json(args.spec.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise InfrastructureFault(
                f"cannot read the evaluation spec: {exc}", code="eval.spec_invalid"
            ) from exc
        trusted = _Trusted.capture()
        # A replay that forks the program check's child keeps one thread until the child is gone:
        # a child forked after an OpenMP team started hangs at its first parallel op.
        trusted.torch.set_num_threads(1 if spec.program_check else spec.torch_threads)
        evaluator = _Evaluator(spec, pipes, trusted)
        state = evaluator.read_weights()
        _until_go(pipes, state, spec)  # a replay waits here, warm, until the main process has ended
        pipes.writer.write({"type": HELLO})  # from here on this process is the submission's
        ready, graph = evaluator.setup(state)
        pipes.writer.write({"type": READY, **ready}, json.dumps(graph, separators=(",", ":")).encode("utf-8"))
        if spec.record_program:  # before the first held-out input: it cannot hold anything learnt from one
            pipes.writer.write({"type": PROGRAM}, _json(evaluator.program()))
        evaluator.serve()
        return EXIT_OK
    except Exception as exc:  # reported to the host, which decides whose fault it is
        logger.error("held-out evaluation failed: %s", exc, exc_info=not isinstance(exc, PrismError))
        return _report_error(pipes, exc)


if __name__ == "__main__":
    code = process_main()
    logging.shutdown()
    sys.stderr.flush()
    os._exit(code)  # no interpreter teardown (a second or more with torch loaded): the host waits for it
