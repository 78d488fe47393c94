"""The README and the docs stay true to the code: every page they link exists, and the
layout tables in docs/design.md name every module the package has and none it has not."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "trio_audio"


def layout_rows() -> dict[str, set[str]]:
    """docs/design.md's "folder | files" table: the ``.py`` names each folder's row gives."""
    text = (ROOT / "docs" / "design.md").read_text()
    rows: dict[str, set[str]] = {}
    for folder, files in re.findall(r"^\| `([a-z_/]+/)` \| (.*) \|$", text, re.M):
        rows[folder] = set(re.findall(r"`([a-z_]+\.py)`", files)) - {"__init__.py"}
    return rows


def test_the_layout_names_every_module_of_each_folder_and_only_those() -> None:
    rows = layout_rows()
    assert {"trio_audio/", "store/", "cluster/", "asr/", "web/", "web/ws/"} <= set(rows)
    for folder, named in rows.items():
        where = ROOT / folder if folder == "trio_audio/" else PACKAGE / folder
        present = {p.name for p in where.glob("*.py") if p.name != "__init__.py"}
        assert named == present, (folder, sorted(named - present), sorted(present - named))


def test_every_page_the_readme_and_the_docs_link_exists() -> None:
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    for page in pages:
        for target in re.findall(r"\]\(([^)#:]+\.(?:md|png))\)", page.read_text()):
            assert (page.parent / target).exists(), (page.name, target)


def test_the_readme_stays_a_guide() -> None:
    assert len((ROOT / "README.md").read_text().splitlines()) <= 300
