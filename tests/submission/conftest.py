"""Fixtures for the submission tests; archive builders live in submission_helpers.py."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# --import-mode=importlib does not put test folders on sys.path; the helper module needs it.
sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture
def write_project(tmp_path: Path):
    """Write ``{relpath: text}`` under a fresh directory and return it."""

    def write(files: dict[str, str | bytes], name: str = "project") -> Path:
        root = tmp_path / name
        for relpath, content in files.items():
            path = root / relpath
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content.encode() if isinstance(content, str) else content)
        return root

    return write
