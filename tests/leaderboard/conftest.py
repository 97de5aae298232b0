"""Fixtures for the leaderboard tests; the builders and drivers live in leaderboard_helpers.py.

``localnet_root`` is the directory of a real ``prism localnet`` run with the tiny test profile
(slow: about a minute on two idle cores). Set ``PRISM_TEST_LOCALNET_DIR`` to a finished localnet
``--dir`` to reuse one while iterating.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# --import-mode=importlib does not put test folders on sys.path; the helper module needs it.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from leaderboard_helpers import CHROMIUM, TINY_PROFILE, Browser, Served, build_scored_store


@pytest.fixture(scope="module")
def scored_store(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return build_scored_store(tmp_path_factory.mktemp("scored"))


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Any]:
    """``serve(state_dir) -> Served``; every server is stopped (SIGTERM) and must exit 0."""
    started: list[Served] = []

    def start(state: Path) -> Served:
        served = Served(state, tmp_path / f"serve-{len(started)}.log")
        started.append(served)
        return served

    yield start
    for served in started:
        assert served.stop() == 0, served.log.read_text()[-3000:]


@pytest.fixture(scope="session")
def localnet_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    reuse = os.environ.get("PRISM_TEST_LOCALNET_DIR")
    if reuse:
        return Path(reuse)
    root = tmp_path_factory.mktemp("localnet") / "net"
    proc = subprocess.run(
        [sys.executable, "-m", "prism.cli", "localnet", "--dir", str(root), "--profile", str(TINY_PROFILE),
         "--block-time", "0.5", "--tempo", "6", "--timeout", "600"],
        capture_output=True, text=True, timeout=720,
    )  # fmt: skip
    logs = "\n".join(p.read_text()[-2000:] for p in sorted((root / "logs").glob("*.log")))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:] + logs
    return root


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    if not CHROMIUM.exists() or shutil.which("chromium") is None:
        pytest.skip("Debian chromium is not installed (apt-get install chromium)")
    root = tmp_path_factory.mktemp("chromium")
    instance = Browser(root / "profile")
    try:
        yield instance
    finally:
        instance.close()
