"""The docs a clone carries: every link of README.md and docs/ resolves inside the repository."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def links(path: Path) -> list[str]:
    return LINK.findall(path.read_text())


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_is_a_file_of_the_repository(doc):
    for target in links(doc):
        assert not re.match(r"[a-z]+:", target), f"{doc.name}: link leaves the repository: {target}"
        file = (doc.parent / target.split("#")[0]).resolve() if not target.startswith("#") else doc
        assert file.is_relative_to(ROOT), f"{doc.name}: link points outside the repository: {target}"
        assert file.exists(), f"{doc.name}: broken link {target}"


def test_the_readme_links_the_architecture_licence_citation_and_changelog():
    targets = {t.split("#")[0] for t in links(ROOT / "README.md")}
    assert {"docs/architecture.md", "LICENSE", "CITATION.cff", "CHANGELOG.md"} <= targets


def test_citation_file_names_the_paper():
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0" and cff["license"] == "MIT"
    paper = cff["preferred-citation"]
    assert paper["title"].startswith("Pruning Sparse Tensor Neural Networks")
    assert any(i["value"] == "arXiv:2402.09359" for i in paper["identifiers"])
