"""Running the prism CLI as a miner does, and writing small projects. (Uniquely named so that
--import-mode=importlib tests of other areas cannot collide with it.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = REPO_ROOT / "examples"
V1_PROJECT = REPO_ROOT / "tests" / "submission" / "projects" / "v1_layout"


def prism(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "prism.cli", *args],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=timeout,
    )


def prism_json(*args: str) -> tuple[int, dict[str, Any]]:
    result = prism(*args, "--json")
    try:
        return result.returncode, json.loads(result.stdout)
    except json.JSONDecodeError:
        raise AssertionError(f"no JSON from prism {args}: {result.stdout}\n{result.stderr}") from None


def write_project(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root
