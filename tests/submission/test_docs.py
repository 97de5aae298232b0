"""docs/submissions.md documents every error code intake can emit and every allowed package."""

from __future__ import annotations

from submission_helpers import REPO_ROOT

from prism.submission import ALLOWED_PACKAGES, ALLOWED_SUFFIXES, ERROR_CODES, IntakeLimits

DOC = REPO_ROOT / "docs" / "submissions.md"


def test_every_error_code_is_documented() -> None:
    text = DOC.read_text()
    missing = [code for code in ERROR_CODES if f"`{code}`" not in text]
    assert not missing


def test_allowlist_suffixes_and_limits_are_documented() -> None:
    text = DOC.read_text()
    assert all(f"`{name}`" in text for name in ALLOWED_PACKAGES)
    assert all(f"`{suffix}`" in text for suffix in ALLOWED_SUFFIXES)
    for value in IntakeLimits().model_dump().values():
        if isinstance(value, int):
            assert f"{value:,}" in text or str(value) in text, value
