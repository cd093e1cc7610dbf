"""The README and docs/design.md stand alone: every link they make stays inside the repository."""

from __future__ import annotations

import re

import pytest

from tests.conftest import REPO

DOCS = ["README.md", *sorted(str(p.relative_to(REPO)) for p in (REPO / "docs").glob("*.md"))]
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


def test_readme_links_the_design_document_and_every_doc():
    readme = (REPO / "README.md").read_text()
    for doc in DOCS[1:]:
        assert f"]({doc})" in readme, f"README.md does not link {doc}"


def test_readme_stays_short():
    """What a new user reads first: internals, benchmarks and failpoints live in docs/."""
    size = len((REPO / "README.md").read_bytes())
    assert size <= 12 * 1024, f"README.md is {size} bytes"
