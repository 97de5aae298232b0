"""Hostile submissions: each is contained, gets a typed verdict in the manifest, and leaves the
host untouched. All run end to end (intake, bwrap sandbox, torchrun runner, held-out process)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from prism.manifest import MANIFEST_FILENAME, RunManifest
from prism.submission import SubmissionError, load_submission

pytestmark = pytest.mark.slow


def _assert_miner_failure(run, code_part: str | None = None) -> None:
    status = run.manifest.status
    assert status.state == "failed", run.log[-2000:]
    assert status.failure is not None and status.failure.fault == "miner", status.failure
    if code_part is not None:
        assert code_part in status.failure.code, status.failure
    assert "run.failed" in run.manifest.validation.reasons
    assert not run.manifest.validation.score_eligible


def _no_process_mentions(text: str) -> bool:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and entry.name != str(os.getpid()):
            try:
                if text.encode() in (entry / "cmdline").read_bytes():
                    return False
            except OSError:
                continue
    return True


def test_static_gate_rejects_the_obvious_before_any_sandbox(tmp_path):
    direct = tmp_path / "direct.py"
    direct.write_text(
        "import torch\n\n\ndef build_model(ctx):\n    torch.os.system('touch /var/tmp/pwned')\n"
        "    return torch.nn.Linear(2, 2)\n\n\ndef get_recipe(ctx):\n    return {}\n",
        encoding="utf-8",
    )
    with pytest.raises(SubmissionError) as excinfo:
        load_submission(direct)
    assert excinfo.value.fault == "miner"


def test_socket_to_host_loopback_and_outside_fails(evaluate_hostile, outside_targets, host_listener):
    targets = [("127.0.0.1", host_listener.port), *outside_targets]
    run = evaluate_hostile(
        f"""
        def build_model(ctx):
            probe = "import socket, sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)"
            codes = [_os("system")(f"python3 -c '{{probe}}' {{host}} {{port}}")
                     for host, port in {targets!r}]
            if any(codes):
                raise ConnectionError(f"exfiltration blocked: exit codes {{codes}}")
            return TinyLM(ctx.vocab_size)
        """
    )
    _assert_miner_failure(run)
    assert "exfiltration blocked" in run.log
    assert host_listener.accepted == []


def test_writes_outside_the_work_dir_fail(evaluate_hostile, outside_dir):
    victim = outside_dir / "victim.txt"
    victim.write_text("original", encoding="utf-8")
    run = evaluate_hostile(
        f"""
        def build_model(ctx):
            flags = _OS.O_WRONLY | _OS.O_CREAT | _OS.O_TRUNC
            parent = _os("path").dirname(_os("getcwd")())
            targets = ["{victim}", "{outside_dir}/new.txt", __file__, parent + "/{MANIFEST_FILENAME}",
                       parent + "/evil.txt", "/usr/lib/evil.so"]
            written = []
            for path in targets:
                try:
                    fd = _os("open")(path, flags)
                    _os("write")(fd, b"pwned")
                    _os("close")(fd)
                    written.append(path)
                except OSError:
                    pass
            raise PermissionError(f"wrote {{len(written)}} of {{len(targets)}}: {{written}}")
        """
    )
    _assert_miner_failure(run)
    message = run.manifest.status.failure.message
    # Host paths outside every bind do not exist inside; the submission and /usr are read-only.
    for path in (str(victim), f"{outside_dir}/new.txt", "/usr/lib/evil.so", "prism-submission-"):
        assert path not in message, message
    # The run dir lies under /tmp here, so inside the sandbox its path is a directory of the
    # private tmpfs: writes "succeed" there and vanish with the sandbox. The host copy is intact.
    assert victim.read_text(encoding="utf-8") == "original"
    assert sorted(p.name for p in outside_dir.iterdir()) == ["victim.txt"]
    assert not (run.run_dir / "evil.txt").exists()


def test_reading_files_outside_the_binds_fails(evaluate_hostile, outside_dir):
    secret = outside_dir / "hotkey"
    secret.write_text("SECRET-MNEMONIC-do-not-leak", encoding="utf-8")
    run = evaluate_hostile(
        f"""
        def build_model(ctx):
            leaked = []
            for path in ["{secret}", "/root/.bittensor/wallets", "/etc/shadow"]:
                try:
                    fd = _os("open")(path, _OS.O_RDONLY)
                    leaked.append(_os("read")(fd, 200))
                except OSError as exc:
                    leaked.append(type(exc).__name__)
            raise RuntimeError(f"read attempts: {{leaked}}")
        """
    )
    _assert_miner_failure(run)
    assert "read attempts: ['FileNotFoundError', 'FileNotFoundError', 'FileNotFoundError']" in run.log
    assert "SECRET-MNEMONIC" not in run.log
    assert "SECRET-MNEMONIC" not in run.manifest.model_dump_json()


def test_fork_loop_is_stopped(evaluate_hostile):
    run = evaluate_hostile(
        """
        def build_model(ctx):
            children = 0
            while children < 100_000:
                if _os("fork")() == 0:
                    time.sleep(120)
                    _os("_exit")(0)
                children += 1
            return TinyLM(ctx.vocab_size)
        """
    )
    _assert_miner_failure(run)
    assert "Resource temporarily unavailable" in run.log or "BlockingIOError" in run.log
    assert _no_process_mentions(str(run.run_dir))  # every forked child died with the sandbox


def test_memory_past_the_limit_is_killed(evaluate_hostile):
    run = evaluate_hostile(
        """
        def build_model(ctx):
            hoard = []
            for _ in range(64):
                hoard.append(torch.ones(256 * 1024 * 1024 // 4))  # 256 MB each, pages touched
            return TinyLM(ctx.vocab_size)
        """
    )
    _assert_miner_failure(run, "memory")


def test_spinning_past_the_wall_clock_is_killed(evaluate_hostile, hostile_profile):
    quick = hostile_profile.model_copy(
        update={"limits": hostile_profile.limits.model_copy(update={"train_wall_s": 12.0})}
    )
    run = evaluate_hostile(
        """
        def build_model(ctx):
            print("SPINNING", flush=True)
            while True:
                pass
        """,
        profile=quick,
    )
    _assert_miner_failure(run, "timeout")
    assert run.manifest.timings_s["train_sandbox"] < 40
    assert _no_process_mentions(str(run.run_dir))


def test_torch_os_system_via_a_gate_bypass_does_nothing(evaluate_hostile, outside_dir):
    run = evaluate_hostile(
        f"""
        def build_model(ctx):
            # torch.os.system, spelled so that no syntax check can see it.
            rc = getattr(getattr(torch, "o" + "s"), "sys" + "tem")(
                "touch {outside_dir}/pwned && echo owned > {outside_dir}/victim"
            )
            if rc != 0:
                raise RuntimeError(f"escape failed with {{rc}}")
            return TinyLM(ctx.vocab_size)
        """
    )
    _assert_miner_failure(run)
    assert "escape failed" in run.log
    assert list(outside_dir.iterdir()) == []


def test_stdout_flood_is_capped(evaluate_hostile, hostile_profile):
    run = evaluate_hostile(
        """
        def build_model(ctx):
            line = "flood " * 170 + "\\n"
            for _ in range(10_000):  # about 10 MB on stdout, 100x the log cap
                print(line, end="")
            return TinyLM(ctx.vocab_size)
        """
    )
    log_bytes = hostile_profile.limits.log_bytes
    train_log = [p for p in run.run_dir.glob("*.log") if p.stat().st_size > 0]
    assert train_log and all(p.stat().st_size <= log_bytes for p in train_log)
    assert run.manifest.diagnostics.log_truncated
    assert run.manifest.status.state == "succeeded"  # flooding is contained, not fatal


def test_mutating_parameters_during_heldout_is_flagged(evaluate_hostile):
    run = evaluate_hostile(
        """
        def build_model(ctx):
            return TinyLM(ctx.vocab_size)


        def inference_logits(model, batch, ctx):
            with torch.no_grad():
                for parameter in model.parameters():
                    parameter.add_(1e-3)
            return model(batch["input_ids"])
        """,
        recipe_mode="submitted",
    )
    manifest = run.manifest
    assert manifest.diagnostics.params_changed_during_eval
    assert manifest.diagnostics.params_sha256_before_eval != manifest.diagnostics.params_sha256_after_eval
    assert "gate.params_changed_during_eval" in manifest.validation.reasons
    assert not manifest.validation.score_eligible


def test_fake_manifest_and_metrics_are_ignored(evaluate_hostile):
    # A value no honest manifest holds (the host's own manifests carry tolerances like 0.001).
    fake = {"schema_version": 1, "status": {"state": "succeeded"}, "metrics": {"heldout_bpb": 0.000123456}}
    run = evaluate_hostile(
        f"""
        FAKE = {json.dumps(json.dumps(fake))}


        def build_model(ctx):
            flags = _OS.O_WRONLY | _OS.O_CREAT | _OS.O_TRUNC
            cwd = _os("getcwd")()
            for name in ["{MANIFEST_FILENAME}", "metrics.json", "heldout_result.json"]:
                for folder in [cwd, _os("path").dirname(cwd)]:
                    try:
                        fd = _os("open")(folder + "/" + name, flags)
                        _os("write")(fd, FAKE.encode())
                        _os("close")(fd)
                    except OSError:
                        pass
            return TinyLM(ctx.vocab_size)
        """
    )
    manifest = run.manifest
    assert manifest.status.state == "succeeded", run.log[-2000:]
    assert manifest.metrics.heldout_bpb is not None and manifest.metrics.heldout_bpb > 1.0
    on_disk = RunManifest.model_validate_json((run.run_dir / MANIFEST_FILENAME).read_text(encoding="utf-8"))
    assert on_disk.metrics.heldout_bpb == manifest.metrics.heldout_bpb
    # The fakes exist only inside the submission's own output dir, which the host never reads.
    fakes = [
        p for p in run.run_dir.rglob("*") if p.is_file() and "0.000123456" in p.read_text(errors="replace")
    ]
    assert fakes and all("sandbox_out" in p.relative_to(run.run_dir).parts for p in fakes)
