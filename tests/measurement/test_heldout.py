"""Held-out evaluation: a real sandboxed process, real safetensors weights, the real protocol."""

from __future__ import annotations

import math
import os
import threading
import time

import numpy as np
import pytest
import torch

from prism.evaluator.framing import ChannelTimeout, FrameReader, FrameWriter, ProtocolError
from prism.evaluator.heldout_phase import run_heldout
from prism.evaluator.heldout_wire import EvalProcessSpec
from prism.evaluator.sandbox import SandboxLimits, probe_isolation
from prism.profiles import HeldoutSpec

CANONICAL = {"vocab_size": 257, "sequence_length": 32, "max_parameters": 200_000, "max_layers": 4}
RUN_CONTEXT = {"vocab_size": 257, "sequence_length": 16, "max_parameters": 60_000, "max_layers": 2, "seed": 7}
# Every window replayed, so a model that drifts or peeks is caught whichever windows it touches.
HELDOUT = HeldoutSpec(windows=10, batch_size=4, seed=0, replay_fraction=1.0)


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


def _spec(root, weights, torch_threads: int = 1) -> EvalProcessSpec:
    return EvalProcessSpec(
        submission_dir=str(root),
        architecture_entrypoint="model.py",
        weights_path=str(weights),
        context=RUN_CONTEXT,
        canonical_context=CANONICAL,
        max_batch_size=HELDOUT.batch_size,
        torch_threads=torch_threads,
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
        heldout: HeldoutSpec = HELDOUT,
        torch_threads: int = 1,
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
            _spec(root, weights, torch_threads),
            windows=windows,
            window_bytes=window_bytes,
            heldout=heldout,
            limits=limits(wall_s),
            log_dir=tmp_path / f"{name}-out",
            isolation=isolation or probe_isolation(),
        )
        return result, model, (tmp_path / f"{name}-out" / "heldout.log")

    return run


def test_the_program_checks_forked_child_runs_with_several_threads(evaluate, tiny_model):
    """The replay forks the program check's child: with an OpenMP team started before the fork
    the child would hang at its first parallel op (the replay holds one thread until then)."""
    result, _, _ = evaluate(tiny_model, torch_threads=2, wall_s=90.0)
    assert result.failure is None, result.failure
    program = result.outcome.program
    assert program is not None and program.reply.log_probs is not None and program.max_deviation <= 1e-3
    assert result.outcome.replay.comparison is not None


def test_bpb_equals_a_direct_computation_and_identity_is_recorded(
    evaluate, tiny_model, heldout_windows, contexts
):
    result, model, _ = evaluate(tiny_model)
    windows, window_bytes = heldout_windows
    assert result.failure is None, result.failure
    expected = contexts.bpb(model, windows, window_bytes)
    assert result.bpb == pytest.approx(expected, rel=1e-9)
    session = result.session
    assert session.tokens == windows.shape[0] * (windows.shape[1] - 1)
    assert session.bytes == int(window_bytes.sum())
    assert result.loss_nats == pytest.approx(result.bpb * math.log(2) * session.bytes / session.tokens)
    # 10 windows in batches of 4; with V = 257 every row is recomputed by the host
    assert session.batches == 3 and session.spot_rows == session.tokens and result.outcome.budget.full
    assert result.window_nats.shape == (10,) and result.window_nats.sum() == pytest.approx(session.total_nats)
    assert not result.params_changed
    graph = session.canonical_graph
    assert graph["family_id"].startswith("fam-") and graph["version_id"].startswith("ver-")
    assert graph["canonical_context"]["sequence_length"] == 32
    assert session.run_graph["family_id"] == graph["family_id"]  # the trained model, run context
    assert session.ready["parameter_count"] == sum(p.numel() for p in model.parameters())
    assert graph["flops_per_token"] > 0 and result.outcome.main.result.exit_code == 0
    assert session.ready["inference_path"] == "forward"
    # the replay answered every window in a fresh process and agreed exactly
    replay = result.outcome.replay
    assert len(replay.pairs) == 10 and replay.comparison.max_deviation <= 1e-9
    assert replay.comparison.positions == sum(p.cut + 1 for p in replay.pairs)


@pytest.mark.parametrize(
    ("program_windows", "code", "phase"),
    # 9 of the 10 windows: the program adds the drift once, as the main process did before its
    # first batch of 4, so the check must reach a window of a later batch (two drawn windows
    # both fall in the first batch 13% of the time).
    [(9, "identity.program_mismatch", "heldout"), (0, "eval.replay_mismatch", "replay")],
    ids=["program-check", "replay-alone"],
)
def test_hook_that_mutates_weights_during_evaluation_is_detected(
    evaluate, tiny_model, program_windows, code, phase
):
    source = (
        tiny_model
        + """
def inference_logits(model, batch, ctx):
    with torch.no_grad():
        model.head.bias[:8].add_(0.05)  # "learn" during evaluation
    return model(batch["input_ids"])
"""
    )
    result, _, _ = evaluate(source, heldout=HELDOUT.model_copy(update={"program_windows": program_windows}))
    # The program, run once on the file's weights, and the fresh replay process both start from
    # the trained weights again: each disagrees with the drifting main process.
    assert (result.failure.code, result.failure.fault, result.failure.phase) == (code, "miner", phase)
    assert result.session.ready["inference_path"] == "inference_logits"
    assert result.params_changed  # and the in-process hashes say so too (evidence)


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

def _target_logits(self, targets):
    lse = torch.logsumexp(self.logits.double(), dim=-1) - 1e-3   # claim almost no loss anywhere
    return lse.numpy().astype("<f8").tobytes()

if hasattr(_heldout, "_Evaluator"):  # only inside the evaluation process
    _heldout._Evaluator.target_logits = _target_logits
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
    assert (result.failure.code, result.failure.fault) == ("eval.replay_mismatch", "miner")
    assert any("causality" in note for note in result.session.advisory)  # the in-process check saw it too


def test_weights_that_do_not_fit_the_rebuilt_model_are_a_miner_fault(evaluate, tiny_model):
    other = tiny_model.replace("Tiny(ctx.vocab_size, 16)", "Tiny(ctx.vocab_size, 24)")
    result, _, _ = evaluate(tiny_model, weights_source=other)
    assert (result.failure.code, result.failure.fault) == ("eval.weights_mismatch", "miner")


def test_unreadable_weights_are_the_submissions_fault(evaluate, tiny_model):
    result, _, _ = evaluate(tiny_model, corrupt_weights=True)
    assert (result.failure.code, result.failure.fault) == (
        "budget.weights_invalid",
        "miner",
    )  # the host's check


def test_degraded_isolation_measures_the_same(evaluate, tiny_model, heldout_windows, contexts):
    # Hosts without bubblewrap run rlimits-only; the measurement must not change.
    result, model, _ = evaluate(tiny_model, isolation=probe_isolation(force_degraded=True))
    assert result.failure is None, result.failure
    assert result.outcome.main.result.isolation.mode == "degraded"
    windows, window_bytes = heldout_windows
    assert result.bpb == pytest.approx(contexts.bpb(model, windows, window_bytes), rel=1e-9)


def test_submission_crash_at_import_is_the_submissions_fault(evaluate, tiny_model):
    crash = tiny_model + "\nraise RuntimeError('boom at import')\n"
    result, _, _ = evaluate(crash, weights_source=tiny_model)
    assert result.failure.fault == "miner"
    assert result.failure.code == "eval.import_failed"
    assert result.failure.frames and result.failure.frames[-1].file == "model.py"  # the miner's own line
    assert result.session.reported_error["code"] == "eval.import_failed"  # what it said (evidence)


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


def test_malformed_requests_are_refused_before_any_process_starts(tmp_path):
    with pytest.raises(Exception, match="windows must be"):
        run_heldout(
            _spec(tmp_path, tmp_path / "missing.safetensors"),
            windows=np.zeros((3, 5), dtype=np.int64),
            window_bytes=np.ones(3, dtype=np.int64),
            heldout=HELDOUT,
            limits=limits(),
            log_dir=tmp_path / "log",
            isolation=probe_isolation(),
        )
