"""The miner tutorial, the agents' guide and the leaderboard page: every link and anchor resolves."""

from __future__ import annotations

import re
from pathlib import Path

from leaderboard_helpers import REPO

PAGES = ("docs/tutorial.md", "docs/agents.md", "docs/leaderboard.md")
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return {_slug(line.lstrip("#")) for line in lines if line.startswith("#")}


def test_links_and_anchors_resolve() -> None:
    broken = []
    for page in PAGES:
        source = REPO / page
        for target in LINK.findall(source.read_text(encoding="utf-8")):
            if target.startswith(("http://", "https://")):
                continue
            file, _, anchor = target.partition("#")
            path = (source.parent / file).resolve() if file else source
            if not path.exists() or (anchor and anchor not in _anchors(path)):
                broken.append(f"{page}: {target}")
    assert broken == []


def test_the_readme_leads_to_the_new_pages_and_the_screenshot_is_there() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    for page in PAGES:
        assert f"({page})" in readme, page
    assert (REPO / "docs/img/leaderboard.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
