"""The project's documents stand on their own: every relative link resolves inside the
repository, and nothing points at files outside it or at the history of how it was built."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
OUTSIDE = [
    re.compile(r"\.\./shared"),
    re.compile(r"DESIGN\.md"),
    re.compile(r"\b(?:built with|from|in|see) issue \d+", re.IGNORECASE),
    re.compile(r"\(issue \d+\)|, issue \d+\)", re.IGNORECASE),
]


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: p.name)
def test_links_resolve_and_nothing_points_outside(document: Path) -> None:
    text = document.read_text(encoding="utf-8")
    for target in LINK.findall(text):
        if re.match(r"^[a-z]+:", target):
            continue  # an outside URL, e.g. https://
        assert (document.parent / target).resolve().exists(), f"{document.name}: {target}"
    for pattern in OUTSIDE:
        found = pattern.search(text)
        assert found is None, f"{document.name}: {found.group(0) if found else ''}"
