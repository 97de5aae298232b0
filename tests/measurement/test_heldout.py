"""Held-out evaluation: a real sandboxed process, real safetensors weights, the real protocol."""

from __future__ import annotations

import math
import os
import threading
import time

import numpy as np
import pytest
import torch

from prism.evaluator.heldout import (
    ChannelTimeout,
    FrameReader,
    FrameWriter,
    ProtocolError,
    SessionOutcome,
    classify_failure,
    run_heldout,
)
from prism.evaluator.sandbox import SandboxLimits, probe_isolation

CANONICAL = {"vocab_size": 257, "sequence_length": 32, "max_parameters": 200_000, "max_layers": 4}
RUN_CONTEXT = {"vocab_size": 257, "sequence_length": 16, "max_parameters": 60_000, "max_layers": 2, "seed": 7}


def limits(wall_s: float = 120.0) -> SandboxLimits:
    return SandboxLimits(
        wall_s=wall_s,
        memory_bytes=4_000_000_000,
        pids=128,
        cpu_s=600,
        fsize_bytes=100_000_000,
        nofile=256,
        log_bytes=200_000,
    )


@pytest.fixture
def evaluate(tmp_path, load_project, save_weights, heldout_windows):
    """Write a submission, train-free weights from its own build_model, run the held-out process."""

    def run(
        source: str,
        *,
        weights_source: str | None = None,
        wall_s: float = 120.0,
        name: str = "sub",
        corrupt_weights: bool = False,
        isolation=None,
    ):
        root = tmp_path / name
        root.mkdir()
        (root / "model.py").write_text(source, encoding="utf-8")
        weights_root = root
        if weights_source is not None:  # weights from a different model than the code builds
            weights_root = tmp_path / f"{name}-weights"
            weights_root.mkdir()
            (weights_root / "model.py").write_text(weights_source, encoding="utf-8")
        module = load_project(weights_root, "model.py")
        from prism.evaluator.interface import PrismContext

        torch.manual_seed(1)
        model = module.build_model(PrismContext(**RUN_CONTEXT))
        weights = save_weights(model, name=f"{name}.safetensors")
        if corrupt_weights:  # what a submission overwriting its weights file might leave
            weights.write_bytes(b"\xff" * 64)
        windows, window_bytes = heldout_windows
        result = run_heldout(
            submission_dir=root,
            architecture_entrypoint="model.py",
            training_entrypoint=None,
            weights_path=weights,
            context=RUN_CONTEXT,
            canonical_context=CANONICAL,
            windows=windows,
            window_bytes=window_bytes,
            batch_size=4,
            limits=limits(wall_s),
            log_path=tmp_path / f"{name}-out" / "heldout.log",
            isolation=isolation or probe_isolation(),
            extra_binds=[],
        )
        return result, model, (tmp_path / f"{name}-out" / "heldout.log")

    return run


def test_bpb_equals_a_direct_computation_and_identity_is_recorded(
    evaluate, tiny_model, heldout_windows, contexts
):
    result, model, _ = evaluate(tiny_model)
    windows, window_bytes = heldout_windows
    assert result.failure is None, result.failure
    expected = contexts.bpb(model, windows, window_bytes)
    assert result.bpb == pytest.approx(expected, rel=1e-9)
    assert result.tokens == windows.shape[0] * (windows.shape[1] - 1)
    assert result.bytes == int(window_bytes.sum())
    assert result.loss_nats == pytest.approx(result.bpb * math.log(2) * result.bytes / result.tokens)
    assert result.batches == 3 and result.spot_checks == 12  # 10 windows in batches of 4
    assert result.params_sha256_before == result.params_sha256_after and not result.params_changed
    assert result.family_id.startswith("fam-") and result.version_id.startswith("ver-")
    assert result.graph["canonical_context"]["sequence_length"] == 32
    assert result.parameter_count == sum(p.numel() for p in model.parameters())
    assert result.flops_per_token > 0 and result.sandbox.exit_code == 0
    assert result.inference_path == "forward"


def test_hook_that_mutates_weights_during_evaluation_is_detected(evaluate, tiny_model):
    source = (
        tiny_model
        + """
def inference_logits(model, batch, ctx):
    with torch.no_grad():
        model.head.bias.add_(0.01)  # "learn" during evaluation
    return model(batch["input_ids"])
"""
    )
    result, _, _ = evaluate(source)
    assert result.failure is None, result.failure
    assert result.inference_path == "inference_logits"
    assert result.params_changed
    assert result.params_sha256_before != result.params_sha256_after


@pytest.mark.parametrize(
    "body",
    ["return model(batch['input_ids'])[:, :-1]", "return model(batch['input_ids']) * float('nan')"],
    ids=["wrong-shape", "nan"],
)
def test_bad_logits_are_a_typed_miner_fault(evaluate, tiny_model, body):
    result, _, _ = evaluate(tiny_model + f"\ndef infer(model, batch, ctx):\n    {body}\n")
    assert result.bpb is None
    assert result.failure is not None
    assert (result.failure.code, result.failure.fault) == ("eval.bad_logits", "miner")


def test_a_process_that_reports_a_made_up_loss_is_caught_by_the_commitments(evaluate, tiny_model):
    # The submission shares the evaluation process, so it can rewrite the scoring code there.
    # Here it claims near-zero loss for every position after seeing the targets.
    cheat = (
        tiny_model
        + """
import __main__ as _heldout  # the evaluation process runs as python -m prism.evaluator.heldout

def _reveal(self, targets, spots):
    logits = self.logits.double()
    lse = torch.logsumexp(logits, dim=-1) - 1e-3
    rows = [logits[b, t].float().numpy().astype("<f4").tobytes() for b, t in spots]
    self.logits = None
    return lse.numpy().astype("<f8").tobytes() + b"".join(rows)

if hasattr(_heldout, "_Evaluator"):  # only inside the evaluation process
    _heldout._Evaluator.reveal = _reveal
"""
    )
    result, _, _ = evaluate(cheat)
    assert result.bpb is None
    assert (result.failure.code, result.failure.fault) == ("eval.commitment_mismatch", "miner")


def test_targets_are_not_readable_anywhere_during_the_forward(
    evaluate, tiny_model, heldout_windows, contexts
):
    # A forward that tries every readable pipe (and stdin) without blocking, as a model trying to
    # peek at the targets would. It must find nothing: targets are sent after the commitment.
    peeker = (
        tiny_model.replace(
            "    def forward(self, tokens):\n",
            "    def forward(self, tokens):\n        _peek()\n",
        )
        + """
import os, stat, sys

def _peek():
    found = 0
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            if not (fd == 0 or stat.S_ISFIFO(os.fstat(fd).st_mode)):
                continue
            blocking = os.get_blocking(fd)
            os.set_blocking(fd, False)
            try:
                found += len(os.read(fd, 1 << 16))
            except (BlockingIOError, OSError):
                pass
            finally:
                os.set_blocking(fd, blocking)
        except OSError:
            continue
    print(f"peeked {found} bytes", file=sys.stderr, flush=True)
"""
    )
    result, model, log = evaluate(peeker)
    assert result.failure is None, result.failure
    text = log.read_text()
    assert text.count("peeked 0 bytes") >= 3 and "peeked " in text
    assert all(line.endswith(" 0 bytes") for line in text.splitlines() if line.startswith("peeked"))
    windows, window_bytes = heldout_windows
    assert result.bpb == pytest.approx(contexts.bpb(model, windows, window_bytes), rel=1e-9)


def test_a_model_that_reads_future_tokens_is_refused(evaluate, tiny_model):
    leaky = tiny_model.replace("x.cumsum(dim=1) / steps", "x.flip(1).cumsum(dim=1).flip(1) / steps")
    result, _, _ = evaluate(leaky)
    assert (result.failure.code, result.failure.fault) == ("eval.noncausal", "miner")


def test_weights_that_do_not_fit_the_rebuilt_model_are_a_miner_fault(evaluate, tiny_model):
    other = tiny_model.replace("Tiny(ctx.vocab_size, 16)", "Tiny(ctx.vocab_size, 24)")
    result, _, _ = evaluate(tiny_model, weights_source=other)
    assert (result.failure.code, result.failure.fault) == ("eval.weights_mismatch", "miner")


def test_unreadable_weights_are_the_submissions_fault(evaluate, tiny_model):
    result, _, _ = evaluate(tiny_model, corrupt_weights=True)
    assert (result.failure.code, result.failure.fault) == ("eval.weights_mismatch", "miner")


def test_degraded_isolation_measures_the_same(evaluate, tiny_model, heldout_windows, contexts):
    # Hosts without bubblewrap run rlimits-only; the measurement must not change.
    result, model, _ = evaluate(tiny_model, isolation=probe_isolation(force_degraded=True))
    assert result.failure is None, result.failure
    assert result.sandbox.isolation.mode == "degraded"
    windows, window_bytes = heldout_windows
    assert result.bpb == pytest.approx(contexts.bpb(model, windows, window_bytes), rel=1e-9)


def test_submission_crash_at_import_is_the_submissions_fault(evaluate, tiny_model):
    crash = tiny_model + "\nraise RuntimeError('boom at import')\n"
    result, _, _ = evaluate(crash, weights_source=tiny_model)
    assert result.failure.fault == "miner"
    assert result.failure.code == "eval.import_failed"
    assert result.sandbox.exit_code == 3


@pytest.mark.slow
def test_a_forward_that_never_returns_is_killed_at_the_wall_limit(evaluate, tiny_model):
    stall = tiny_model.replace(
        "    def forward(self, tokens):\n",
        "    def forward(self, tokens):\n        import time; time.sleep(600)\n",
    )
    started = time.monotonic()
    result, _, _ = evaluate(stall, wall_s=20.0)
    assert time.monotonic() - started < 60
    assert (result.failure.code, result.failure.fault) == ("eval.timeout", "miner")


# --------------------------------------------------------------------------------------------
# Protocol pieces, no process


def test_frames_round_trip_and_oversized_headers_are_refused():
    read_fd, write_fd = os.pipe()
    try:
        FrameWriter(write_fd).write({"type": "inputs", "shape": [1, 2]}, b"\x01\x02")
        header, payload = FrameReader(read_fd, deadline=time.monotonic() + 5).read()
        assert header == {"type": "inputs", "shape": [1, 2]} and payload == b"\x01\x02"
        os.write(write_fd, (2**31).to_bytes(4, "big") + (0).to_bytes(4, "big"))
        with pytest.raises(ProtocolError):
            FrameReader(read_fd, deadline=time.monotonic() + 5).read()
    finally:
        os.close(read_fd)
        os.close(write_fd)


def test_a_silent_peer_times_out():
    read_fd, write_fd = os.pipe()
    try:
        threading.Timer(0.05, lambda: os.write(write_fd, b"\x00\x00")).start()  # half a prefix
        with pytest.raises(ChannelTimeout):
            FrameReader(read_fd, deadline=time.monotonic() + 0.5).read()
    finally:
        os.close(read_fd)
        os.close(write_fd)


class _Ended:
    def __init__(self, exit_code, *, timed_out=False, memory_exceeded=False):
        self.exit_code, self.signal = exit_code, None
        self.timed_out, self.memory_exceeded = timed_out, memory_exceeded


def test_failures_before_submission_code_runs_are_ours_after_it_the_submissions():
    before = SessionOutcome(error=ProtocolError("closed"))
    assert classify_failure(before, _Ended(1)).fault == "infrastructure"
    after = SessionOutcome(hello=True, error=ProtocolError("closed"))
    assert classify_failure(after, _Ended(1)).fault == "miner"
    # A process that claims "infrastructure" after importing the submission is not believed.
    lying = SessionOutcome(
        hello=True,
        error=ProtocolError("closed"),
        reported_error={"code": "eval.spec_invalid", "fault": "infrastructure", "message": "retry me"},
    )
    assert classify_failure(lying, _Ended(4)).fault == "miner"
    timed_out = SessionOutcome(hello=True, error=ProtocolError("closed"))
    assert classify_failure(timed_out, _Ended(None, timed_out=True)).code == "eval.timeout"
    assert classify_failure(SessionOutcome(hello=True), _Ended(0)) is None


def test_malformed_requests_are_refused_before_any_process_starts(tmp_path):
    with pytest.raises(Exception, match="windows must be"):
        run_heldout(
            submission_dir=tmp_path,
            architecture_entrypoint="model.py",
            training_entrypoint=None,
            weights_path=tmp_path / "missing.safetensors",
            context=RUN_CONTEXT,
            canonical_context=CANONICAL,
            windows=np.zeros((3, 5), dtype=np.int64),
            window_bytes=np.ones(3, dtype=np.int64),
            batch_size=2,
            limits=limits(),
            log_path=tmp_path / "log",
            isolation=probe_isolation(),
            extra_binds=[],
        )
