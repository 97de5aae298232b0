"""`prism pack` and `prism check` as a miner runs them: real subprocesses."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

from submission_helpers import EXAMPLES, REPO_ROOT


def prism(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "prism.cli", *args],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=120,
    )


def test_pack_twice_gives_the_same_sha256(tmp_path: Path) -> None:
    first = prism("pack", str(EXAMPLES / "gpt"), "-o", str(tmp_path / "a.zip"))
    second = prism("pack", str(EXAMPLES / "gpt"), "-o", str(tmp_path / "b.zip"))
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    digest_a, digest_b = first.stdout.split()[0], second.stdout.split()[0]
    assert digest_a == digest_b == hashlib.sha256((tmp_path / "a.zip").read_bytes()).hexdigest()
    assert (tmp_path / "a.zip").read_bytes() == (tmp_path / "b.zip").read_bytes()


def test_pack_refuses_to_write_a_zip_intake_rejects(tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "model.py").write_text("import socket\n\n\ndef build_model(ctx):\n    return None\n")
    out = tmp_path / "out" / "s.zip"
    result = prism("pack", str(project), "-o", str(out))
    assert result.returncode == 1
    assert not out.exists() and not out.parent.exists()
    assert "static.forbidden_import" in result.stdout and "static.missing_get_recipe" in result.stdout
    assert "not writing" in result.stdout


def test_check_json_accepts_example(tmp_path: Path) -> None:
    result = prism("check", str(EXAMPLES / "tiny"), "--json")
    assert result.returncode == 0, result.stderr
    verdict = json.loads(result.stdout)
    assert verdict["ok"] is True
    assert verdict["submission"]["kind"] == "full"
    assert verdict["submission"]["training_entrypoint"] == "src/train.py"


def test_check_json_reports_problems_and_exit_code(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import os\nimport subprocess\n\ndef build_model(ctx):\n    return os.system('id')\n")
    result = prism("check", str(bad), "--json")
    assert result.returncode == 1
    problems = json.loads(result.stdout)["problems"]
    assert [(p["code"], p["file"], p["line"]) for p in problems] == [
        ("static.forbidden_import", "bad.py", 1),
        ("static.forbidden_import", "bad.py", 2),
        ("static.missing_get_recipe", "bad.py", None),
    ]


def test_check_table_output(tmp_path: Path) -> None:
    result = prism("check", str(EXAMPLES / "single_file.py"))
    assert result.returncode == 0, result.stderr
    assert "ACCEPTED" in result.stdout and "single_file.py" in result.stdout
    missing = prism("check", str(tmp_path / "missing.zip"))
    assert missing.returncode == 1 and "submission.not_found" in missing.stderr
