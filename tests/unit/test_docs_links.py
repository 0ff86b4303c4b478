"""Every relative link and #anchor in README.md and docs/*.md resolves (README is a front door to docs/)."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.M | re.S)


def prose(path: Path) -> str:
    """The page without its fenced code blocks and inline code (neither holds links)."""
    text = FENCE.sub("", path.read_text())
    return re.sub(r"`[^`\n]*`", "", text)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation but '-' and '_' dropped, spaces to '-'."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """The anchors of a page's headings, with GitHub's -1, -2 … for repeats."""
    seen: dict[str, int] = {}
    found = set()
    for line in FENCE.sub("", path.read_text()).splitlines():
        heading = re.match(r"#{1,6}\s+(.*)", line)
        if not heading:
            continue
        base = slug(heading.group(1))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def links() -> list[tuple[Path, str]]:
    return [
        (page, target)
        for page in PAGES
        for target in LINK.findall(prose(page))
        if not re.match(r"[a-z][a-z0-9+.-]*:", target)  # http:, https:, mailto: …
    ]


def test_there_are_links_to_check() -> None:
    assert any(page.name == "README.md" and target.startswith("docs/") for page, target in links())


@pytest.mark.parametrize(("page", "target"), links(), ids=lambda v: v.name if isinstance(v, Path) else v)
def test_relative_link_resolves(page: Path, target: str) -> None:
    path, _, anchor = target.partition("#")
    linked = (page.parent / path).resolve() if path else page
    assert linked.exists(), f"{page.relative_to(ROOT)}: {target} names no file"
    if anchor:
        assert linked.suffix == ".md", f"{page.relative_to(ROOT)}: {target} has an anchor on a non-markdown file"
        assert anchor in anchors(linked), f"{page.relative_to(ROOT)}: no heading makes #{anchor} in {linked.name}"


def test_slugs_follow_github() -> None:
    assert slug("The `etl` command") == "the-etl-command"
    assert slug("Runbook: a stuck or slow queue") == "runbook-a-stuck-or-slow-queue"
    assert slug("Alerts: what each means, and the first command") == "alerts-what-each-means-and-the-first-command"
