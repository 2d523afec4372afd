"""The project describes and tests itself alone. The README and docs/*.md link only to files of this repository, and
the repository paths they name in backticks exist. Neither they nor the files of the test, bench, fuzz and script
trees name a place outside the repository: a sibling checkout's folders, or this machine's own paths."""

import glob
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
TREES = ["tests", "netns_tests", "bench", "fuzz", "scripts"]

# A sibling "shared" folder (its vectors, seeds and design notes, also as path / "parts"), and this machine's paths.
OUTSIDE = re.compile(r"\.\./shared|\bshared\W{1,5}(?:vectors|seeds)\b|\bDESIGN\.md|/work/|\bseeds/|\bseed 0\d\d\b")
LINK = re.compile(r"\]\(([^)\s]+)")  # the target of [text](target)
CODE = re.compile(r"`([^`\s]+)`")
EXTERNAL = re.compile(r"[a-z][a-z0-9+.-]*:|#")  # https:, mailto:, or an anchor in the same page


def missing(path: Path) -> bool:
    """Whether a path (or glob pattern) names nothing inside the repository."""
    return not path.resolve().is_relative_to(ROOT) or not glob.glob(str(path))


def is_repo_path(code: str) -> bool:
    """A backticked text that names a path of this repository: it starts with one of its top-level entries, or ../"""
    first = code.partition("/")[0]
    return code.startswith("../") or ("/" in code and not code.startswith((".", "/")) and (ROOT / first).exists())


def broken_references(text: str, folder: Path) -> list[str]:
    """The relative Markdown links (read from `folder`, the document's own) and the backticked repository paths (read
    from the root) that climb out of the repository or name nothing in it."""
    links = [link for link in LINK.findall(text) if not EXTERNAL.match(link)]
    codes = [code for code in CODE.findall(text) if is_repo_path(code)]
    return ([link for link in links if missing(folder / link.split("#")[0])]
            + [code for code in codes if missing(ROOT / code.split("::")[0])])


def tree_files() -> list[Path]:
    """The files of the test, bench, fuzz and script trees, without caches and without this test (which names the
    patterns it looks for)."""
    files = [path for tree in TREES for path in sorted((ROOT / tree).rglob("*")) if path.is_file()]
    return [path for path in files if path != Path(__file__).resolve()
            and not any(part.startswith((".", "__pycache__")) for part in path.relative_to(ROOT).parts)]


def test_docs_link_only_to_files_of_the_repository() -> None:
    broken = {doc.name: refs for doc in DOCS if (refs := broken_references(doc.read_text(), doc.parent))}
    assert broken == {}


def test_docs_name_no_place_outside_the_repository() -> None:
    named = {doc.name: found for doc in DOCS if (found := OUTSIDE.findall(doc.read_text()))}
    assert named == {}


def test_tests_and_tools_read_nothing_outside_the_repository() -> None:
    named = {str(path.relative_to(ROOT)): found for path in tree_files()
             if (found := OUTSIDE.findall(path.read_bytes().decode(errors="replace")))}
    assert named == {}
