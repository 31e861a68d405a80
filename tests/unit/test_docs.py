"""The docs hold together: every page reachable from docs/index.md, every relative link and anchor
resolving, no citation of a file outside the repository, and the metrics page naming what the
agent exports. docs/index.md is the map these checks keep true.
"""

from __future__ import annotations

import re
from pathlib import Path

from conftest import AGENT, REPO

DOCS = REPO / "docs"
INDEX = DOCS / "index.md"
README = REPO / "README.md"
# Places where code names a docs page in a comment or docstring.
CODE_DIRS = ("agent", "perf", "tests", "units", "packaging", "debian", "etc", "monitoring", "ansible_collections")
CODE_SUFFIXES = {".py", ".yaml", ".yml", ".service", ".target", ".conf", ".json", ""}
# Notes kept outside the repository, which code and docs once cited (../shared/docs).
OUTSIDE_DOCS = re.compile(r"\b(?:hardware|design)\.md\b")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"(`+).+?\1", re.DOTALL)
LINK = re.compile(r"!?\[[^\]]*\]\(([^()\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)
NUMBERED = re.compile(r"\b(?:issue|seed)s?\s*#?\d", re.IGNORECASE)
DOC_PATH = re.compile(r"\bdocs/[\w./*-]+\.md\b")
FAMILY = re.compile(r"\bmipart_[a-z_]+[a-z]\b")


def pages() -> list[Path]:
    return sorted(DOCS.rglob("*.md"))


def prose(text: str) -> str:
    """The text a reader sees as prose: fenced blocks and code spans removed."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def links(path: Path) -> list[str]:
    return LINK.findall(prose(path.read_text()))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: its text, lower case, punctuation dropped, spaces as '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "")
    return re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found: set[str] = set()
    for heading in HEADING.findall(FENCE.sub("", path.read_text())):
        base = anchor = slug(heading)
        count = 0
        while anchor in found:
            count += 1
            anchor = f"{base}-{count}"
        found.add(anchor)
    return found


def broken_links(path: Path) -> list[str]:
    broken = []
    for target in links(path):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        file_part, _, fragment = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        where = f"{path.relative_to(REPO)}: link {target!r}"
        if not linked.exists():
            broken.append(f"{where}: {linked.relative_to(REPO) if linked.is_relative_to(REPO) else linked} is missing")
        elif fragment and linked.suffix == ".md" and fragment not in anchors(linked):
            broken.append(f"{where}: {linked.relative_to(REPO)} has no heading with anchor #{fragment}")
    return broken


def code_files() -> list[Path]:
    return [
        path
        for folder in CODE_DIRS
        for path in sorted((REPO / folder).rglob("*"))
        if path.is_file() and path.suffix in CODE_SUFFIXES and "__pycache__" not in path.parts
    ]


def test_every_docs_page_is_linked_from_the_index():
    linked = {(INDEX.parent / target.partition("#")[0]).resolve() for target in links(INDEX)}
    unlinked = [str(page.relative_to(REPO)) for page in pages() if page != INDEX and page.resolve() not in linked]
    assert unlinked == [], "add these to docs/index.md"


def test_relative_links_in_the_docs_and_the_readme_resolve():
    broken = [line for path in [README, *pages()] for line in broken_links(path)]
    assert broken == []


def test_no_docs_page_cites_a_file_outside_the_repository():
    cited = []
    for path in [*pages(), *(p for p in AGENT.rglob("*") if p.is_file() and p.suffix in CODE_SUFFIXES)]:
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if OUTSIDE_DOCS.search(line):
                cited.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert cited == [], "write the fact into a page of docs/ with its source, and cite that page"


def test_docs_pages_named_in_code_exist():
    missing = []
    for path in code_files():
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            for name in DOC_PATH.findall(line):
                if not list(REPO.glob(name)):
                    missing.append(f"{path.relative_to(REPO)}:{number}: {name}")
    assert missing == []


def test_no_issue_or_seed_number_in_a_heading():
    numbered = [
        f"{page.relative_to(REPO)}: {heading}"
        for page in [README, *pages()]
        for heading in HEADING.findall(FENCE.sub("", page.read_text()))
        if NUMBERED.search(heading)
    ]
    assert numbered == [], "say what it is, not which issue or seed it came from"


def test_the_metrics_page_lists_every_family_the_agent_exports():
    exported = set(FAMILY.findall((AGENT / "mipart" / "api" / "metrics.py").read_text()))
    documented = set(FAMILY.findall((DOCS / "metrics.md").read_text()))
    assert exported, "no mipart_ family found in api/metrics.py"
    assert sorted(exported - documented) == [], "undocumented in docs/metrics.md"
    assert sorted(documented - exported) == [], "documented in docs/metrics.md but not exported"
