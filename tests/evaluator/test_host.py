"""Host-side pieces that need no training: verdicts, validation reasons, probe parsing, files, CLI."""

from __future__ import annotations

import math
import os
import stat
from pathlib import Path

import pytest

from prism.cli import build_parser, main
from prism.errors import InfrastructureFault, MinerFault
from prism.evaluator.artifacts import (
    make_read_only,
    make_writable,
    read_probe_records,
    read_runner_report,
    read_untrusted,
)
from prism.evaluator.context import RunnerFailure, RunnerReport
from prism.evaluator.framing import ChannelTimeout
from prism.evaluator.manifest_build import summarize_probes, validation_reasons
from prism.evaluator.sandbox import IsolationProbe, SandboxResult
from prism.evaluator.verdicts import Observation, decide
from prism.manifest import Metrics
from prism.profiles import load_profile

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
LN_V = math.log(257)


def _reasons(**overrides) -> list[str]:
    official = load_profile("gpu_proxy_eval")
    args = dict(
        profile=official,
        isolation_mode="bwrap",
        failed=False,
        vocab_size=257,
        params_changed=False,
        competition="architecture",
        recipe_mode="reference",
        metrics=Metrics(
            heldout_bpb=3.0, probe_bpb=3.1, first_probe_loss_nats=LN_V, train_heldout_gap_bpb=0.0
        ),
    )
    return validation_reasons(**(args | overrides))


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({}, []),
        ({"profile": load_profile("local_cpu_smoke")}, ["profile.not_official"]),
        ({"isolation_mode": "degraded"}, ["isolation.degraded"]),
        ({"failed": True, "metrics": Metrics()}, ["run.failed", "metrics.missing"]),
        (
            {"metrics": Metrics(heldout_bpb=3.0, probe_bpb=3.0, first_probe_loss_nats=0.49 * LN_V)},
            ["gate.smuggled_weights"],
        ),
        ({"metrics": Metrics(heldout_bpb=3.0, probe_bpb=3.0, first_probe_loss_nats=0.51 * LN_V)}, []),
        # the early curve decides, not only the first point: uniform first, smuggled right after
        (
            {
                "metrics": Metrics(
                    heldout_bpb=3.0,
                    probe_bpb=3.0,
                    first_probe_loss_nats=LN_V,
                    early_probe_loss_nats=0.3 * LN_V,
                )
            },
            ["gate.smuggled_weights"],
        ),
        ({"params_changed": True}, ["gate.params_changed_during_eval"]),
        (
            {"metrics": Metrics(heldout_bpb=3.5, probe_bpb=3.0, train_heldout_gap_bpb=0.26)},
            ["gate.train_heldout_gap"],
        ),
        ({"metrics": Metrics(heldout_bpb=3.2, probe_bpb=3.0, train_heldout_gap_bpb=0.24)}, []),
        ({"recipe_mode": "submitted"}, ["recipe.not_reference"]),
        ({"recipe_mode": "submitted", "competition": "training"}, []),
        (
            {"metrics": Metrics(probe_bpb=3.0, nonfinite_loss=True), "failed": True},
            ["run.failed", "gate.nonfinite_loss", "metrics.missing"],
        ),
    ],
)
def test_validation_reasons(overrides, expected) -> None:
    assert _reasons(**overrides) == expected


def test_probe_reader_skips_partial_and_junk_lines(tmp_path) -> None:
    (tmp_path / "probe.jsonl").write_text(
        '{"step": 0, "tokens_seen": 0, "loss_nats": 5.5, "bpb": 8.0}\n'
        "garbage\n"
        '{"step": 1}\n'
        '{"step": 1, "tokens_seen": 64, "loss_nats": 5.0, "bpb": 7.2}\n'
        '{"step": 2, "tokens_seen": 12',  # a write in progress
        encoding="utf-8",
    )
    assert [r["step"] for r in read_probe_records(tmp_path)] == [0, 1]
    assert read_probe_records(tmp_path / "missing") == []


def _sandbox(**kw) -> SandboxResult:
    base = dict(
        exit_code=0,
        signal=None,
        timed_out=False,
        memory_exceeded=False,
        log_truncated=False,
        wall_s=1.0,
        isolation=IsolationProbe(mode="bwrap", cgroups=False, detail="test"),
        log_tail="",
    )
    return SandboxResult(**(base | kw))


def _claim(code: str, fault: str = "miner") -> dict:
    return {
        "code": code,
        "fault": fault,
        "message": "m",
        "frames": [{"file": "model.py", "line": 3, "function": "f", "code": "x"}],
    }


@pytest.mark.parametrize(
    ("observation", "expected"),
    [
        (Observation("train", hello=True, sandbox=_sandbox()), None),
        # before hello no submission code had run: ours, whatever happened
        (
            Observation("train", hello=False, sandbox=_sandbox(exit_code=1)),
            ("sandbox.failed_before_hello", "infrastructure"),
        ),
        (
            Observation("heldout", hello=False, sandbox=_sandbox(timed_out=True, exit_code=None)),
            ("sandbox.failed_before_hello", "infrastructure"),
        ),
        # after hello: the miner's, and the sandbox's own verdicts win over the process's words
        (
            Observation(
                "train",
                hello=True,
                sandbox=_sandbox(timed_out=True, exit_code=None, signal=9),
                claimed=_claim("hook.bad_loss"),
            ),
            ("eval.timeout", "miner"),
        ),
        (
            Observation("train", hello=True, sandbox=_sandbox(memory_exceeded=True)),
            ("eval.memory_exceeded", "miner"),
        ),
        (
            Observation("train", hello=True, sandbox=_sandbox(exit_code=3), claimed=_claim("hook.bad_loss")),
            ("hook.bad_loss", "miner"),
        ),
        # a forged infrastructure fault is still the miner's, shown as a crash
        (
            Observation(
                "train",
                hello=True,
                sandbox=_sandbox(exit_code=4),
                claimed=_claim("infra.fault", "infrastructure"),
            ),
            ("eval.crashed", "miner"),
        ),
        (
            Observation(
                "train",
                hello=True,
                sandbox=_sandbox(exit_code=4),
                claimed=_claim("runner.crashed", "infrastructure"),
            ),
            ("eval.crashed", "miner"),
        ),
        (Observation("train", hello=True, sandbox=_sandbox(exit_code=1)), ("eval.nonzero_exit", "miner")),
        (
            Observation("train", hello=True, sandbox=_sandbox(), missing="trained weights"),
            ("eval.missing_outputs", "miner"),
        ),
        (
            Observation("heldout", hello=True, sandbox=_sandbox(), channel_error=ChannelTimeout("slow")),
            ("eval.protocol", "miner"),
        ),
        (
            Observation(
                "heldout",
                hello=True,
                sandbox=_sandbox(),
                host_check=MinerFault("x", code="eval.commitment_mismatch"),
            ),
            ("eval.commitment_mismatch", "miner"),
        ),
        # causes the host itself observed stay ours even after hello
        (
            Observation(
                "train",
                hello=True,
                sandbox=_sandbox(exit_code=1),
                launch_error=InfrastructureFault("bwrap", code="sandbox.setup_failed"),
            ),
            ("sandbox.setup_failed", "infrastructure"),
        ),
        (
            Observation("train", hello=True, sandbox=_sandbox(exit_code=1), data_error="shards ran out"),
            ("data.feed_failed", "infrastructure"),
        ),
        (
            Observation(
                "train", hello=True, sandbox=_sandbox(exit_code=1), device_failed="GPU 0 fell off the bus"
            ),
            ("device.unhealthy", "infrastructure"),
        ),
    ],
)
def test_one_rule_decides_whose_fault_a_failure_is(observation, expected) -> None:
    failure = decide(observation)
    assert (None if failure is None else (failure.code, failure.fault)) == expected


@pytest.mark.parametrize(
    ("cpu_s", "expected"),
    [(60.0, "budget.eval_compute_exceeded"), (4.0, "eval.timeout")],
)
def test_a_timed_out_heldout_process_over_its_compute_budget_is_refused_for_the_compute(
    cpu_s, expected
) -> None:
    """On a loaded machine a process that trains at evaluation time can reach the wall clock first:
    its CPU over the budget is the cause; a slow process within its budget stays a timeout."""
    from prism.evaluator.heldout_host import SessionOutcome
    from prism.evaluator.heldout_phase import (
        EvalComputeBudget,
        HeldoutOutcome,
        ProcessRecord,
        heldout_verdict,
    )

    result = _sandbox(exit_code=None, signal=9, timed_out=True, wall_s=90.0, cpu_s=cpu_s, cpu_accounted=True)
    outcome = HeldoutOutcome(main=ProcessRecord(session=SessionOutcome(hello=True), result=result))
    budget = EvalComputeBudget(kind="cpu_s", fixed_s=8.0, per_position_s=1e-3)
    failure = heldout_verdict(outcome, budget, windows=16, seq_len=63)
    assert failure is not None and (failure.code, failure.fault) == (expected, "miner")


def test_claimed_frames_are_kept_as_evidence() -> None:
    failure = decide(
        Observation("train", hello=True, sandbox=_sandbox(exit_code=3), claimed=_claim("eval.forward_failed"))
    )
    assert failure is not None and failure.frames[0].file == "model.py" and failure.frames[0].line == 3
    assert "reported by the sandboxed process" in failure.message


def test_a_failing_non_zero_rank_report_wins(tmp_path) -> None:
    (tmp_path / "runner_report.json").write_text(RunnerReport(ok=True, steps=5).model_dump_json())
    failure = RunnerFailure(code="eval.nonfinite_loss", fault="miner", message="nan", phase="train")
    (tmp_path / "runner_report.rank1.json").write_text(
        RunnerReport(ok=False, failure=failure).model_dump_json()
    )
    report = read_runner_report(tmp_path)
    assert report is not None and not report.ok and report.failure == failure and report.steps == 5
    (tmp_path / "runner_report.json").write_text("{not json")
    assert read_runner_report(tmp_path).failure == failure


def test_cli_registers_eval_with_its_flags() -> None:
    args = build_parser().parse_args(
        [
            "eval",
            "examples/gpt",
            "--recipe",
            "submitted",
            "--regime",
            "smoke",
            "--seed",
            "1",
            "--seed",
            "2",
            "--nproc",
            "2",
            "--heldout-seed",
            "9",
            "--json",
        ]
    )
    assert (args.profile, args.recipe, args.regime, args.seed, args.nproc, args.heldout_seed, args.json) == (
        "local_cpu_smoke",
        "submitted",
        ["smoke"],
        [1, 2],
        2,
        9,
        True,
    )
    assert callable(args.func)


def test_cli_operator_and_intake_errors_exit_1(tmp_path, data_dir, capsys) -> None:
    assert (
        main(
            [
                "eval",
                str(EXAMPLES / "gpt"),
                "--data",
                str(data_dir),
                "--regime",
                "nope",
                "--out",
                str(tmp_path),
            ]
        )
        == 1
    )
    assert "profile.unknown_regime" in capsys.readouterr().err
    bad = tmp_path / "bad.py"
    bad.write_text("import socket\n", encoding="utf-8")
    assert main(["eval", str(bad), "--data", str(data_dir), "--out", str(tmp_path)]) == 1
    assert "error: [" in capsys.readouterr().err
    assert (
        main(["eval", str(EXAMPLES / "gpt"), "--data", str(tmp_path / "none"), "--out", str(tmp_path)]) == 1
    )
    assert "eval.no_data" in capsys.readouterr().err


def test_untrusted_reads_refuse_symlinks_fifos_and_stop_at_the_limit(tmp_path) -> None:
    secret = tmp_path / "host_secret"
    secret.write_text("do not read", encoding="utf-8")
    (tmp_path / "link").symlink_to(secret)
    assert read_untrusted(tmp_path / "link", 100) is None
    (tmp_path / "zero").symlink_to("/dev/zero")
    assert read_untrusted(tmp_path / "zero", 100) is None
    os.mkfifo(tmp_path / "fifo")
    assert read_untrusted(tmp_path / "fifo", 100) is None  # and it does not block
    (tmp_path / "big").write_bytes(b"x" * 1000)
    assert read_untrusted(tmp_path / "big", 10) == b"x" * 10
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "probe.jsonl").symlink_to(secret)
    assert read_probe_records(tmp_path / "out") == []


def test_read_only_pass_never_follows_links_out_of_the_tree(tmp_path) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("host file", encoding="utf-8")
    outside.chmod(0o640)
    outside_dir = tmp_path / "outside_dir"
    outside_dir.mkdir(mode=0o750)
    tree = tmp_path / "sandbox_out"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "f.txt").write_text("x", encoding="utf-8")
    (tree / "link").symlink_to(outside)
    (tree / "dirlink").symlink_to(outside_dir)
    make_read_only(tree)
    assert stat.S_IMODE(outside.stat().st_mode) == 0o640
    assert stat.S_IMODE(outside_dir.stat().st_mode) == 0o750
    assert stat.S_IMODE((tree / "sub" / "f.txt").stat().st_mode) == 0o444
    assert stat.S_IMODE((tree / "sub").stat().st_mode) == 0o555
    make_writable(tree)
    assert stat.S_IMODE((tree / "sub" / "f.txt").stat().st_mode) == 0o600


def test_probe_summary_definitions() -> None:
    records = [
        {"step": i, "tokens_seen": 64 * i, "loss_nats": 6.0 - 0.1 * i, "bpb": 8.0 - 0.2 * i}
        for i in range(20)
    ]
    records.append({"step": 20, "tokens_seen": 1280, "loss_nats": float("nan"), "bpb": float("nan")})
    summary = summarize_probes(records, early_fraction=0.1, total_steps=21)
    assert summary["first_probe_loss_nats"] == 6.0
    # the early curve: the lowest probe loss over the first 10% of the 21 steps (steps 0, 1, 2)
    assert summary["early_probe_loss_nats"] == pytest.approx(6.0 - 0.2)
    # last half of the 20 finite records: steps 10..19
    assert summary["probe_bpb"] == pytest.approx(sum(8.0 - 0.2 * i for i in range(10, 20)) / 10)
    # end of training: the last 10% (2 records), not one noisy probe
    assert summary["train_bpb"] == pytest.approx((8.0 - 0.2 * 18 + 8.0 - 0.2 * 19) / 2)
    assert summarize_probes([], early_fraction=0.1, total_steps=1) == {}


def test_host_exceptions_are_typed_and_typed_errors_pass_through() -> None:
    from prism.errors import HostError, MinerFault
    from prism.evaluator.verdicts import host_errors_typed

    with pytest.raises(HostError) as excinfo, host_errors_typed("run r1"):
        {}["family_id"]
    assert excinfo.value.code == "validator.host_error" and excinfo.value.fault == "infrastructure"
    assert excinfo.value.message.startswith("run r1: PRISM's host code raised KeyError")
    assert isinstance(excinfo.value.__cause__, KeyError)
    for passing in (
        MinerFault("over budget", code="budget.parameters"),
        OSError(28, "No space left on device"),
    ):
        with pytest.raises(type(passing)) as raised, host_errors_typed("run r1"):
            raise passing
        assert raised.value is passing
