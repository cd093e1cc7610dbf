"""The README and docs/design.md stand alone: every link they make stays inside the repository."""

from __future__ import annotations

import re

import pytest

from tests.conftest import REPO

DOCS = ["README.md", "docs/design.md"]
LINK = re.compile(r"\]\(([^)\s]+)\)")


@pytest.mark.parametrize("doc", DOCS)
def test_links_point_at_files_in_the_repository(doc):
    path = REPO / doc
    links = LINK.findall(path.read_text())
    for link in links:
        target = link.split("#", 1)[0]
        assert "://" not in link and not target.startswith("/"), f"{doc} links out: {link}"
        resolved = (path.parent / target).resolve()
        assert resolved.is_relative_to(REPO), f"{doc} links outside the repository: {link}"
        assert resolved.exists(), f"{doc} links to a missing file: {link}"


def test_readme_links_the_design_document():
    assert "](docs/design.md)" in (REPO / "README.md").read_text()
