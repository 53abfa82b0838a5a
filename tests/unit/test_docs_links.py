"""Every relative link in README.md and docs/**/*.md points to a file or folder that exists, every
run folder under docs/results/ has a row in its index, and the analysis scripts kept beside their
results import only public names from the project's packages."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "docs" / "results"
PACKAGES = ("pricing", "mlops", "lightning_modules", "tasks", "flows", "scorer", "expectations")

# [text](target "title") and ![alt](target); the target stops at whitespace or the closing bracket.
INLINE = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
# [label]: target
REFERENCE = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$", re.MULTILINE)
FENCE = re.compile(r"^\s*(```|~~~)")
CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1")


def markdown_pages() -> list[Path]:
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    return [p for p in pages if p.is_file()]


def _prose(text: str) -> str:
    """The text without fenced code blocks and code spans, where brackets are not links."""
    kept: list[str] = []
    in_fence = False
    for line in text.splitlines():
        if FENCE.match(line):
            in_fence = not in_fence
            continue
        if not in_fence:
            kept.append(CODE_SPAN.sub("", line))
    return "\n".join(kept)


def relative_links(text: str) -> list[str]:
    """Targets of the inline, image and reference links that name a path in this repository."""
    prose = _prose(text)
    targets = INLINE.findall(prose) + REFERENCE.findall(prose)
    out = []
    for target in targets:
        if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target) or target.startswith(("#", "//")):
            continue  # http(s), mailto, ...: not a file here; a bare #anchor: this page
        path = target.split("#", 1)[0].split("?", 1)[0]
        if path:
            out.append(path)
    return out


def broken_links(page: Path) -> list[str]:
    base = ROOT if page.name == "README.md" and page.parent == ROOT else page.parent
    return [t for t in relative_links(page.read_text()) if not (base / t).exists()]


def test_link_parser_finds_relative_targets_and_skips_urls_anchors_and_code() -> None:
    text = (
        'See [a](docs/a.md#part), ![img](b.png "title"), [web](https://x.org/y), [here](#top),\n'
        "[dir](results/) and `[not](code.md)`.\n"
        "```\n[fenced](fenced.md)\n```\n"
        "[ref]: c/d.md\n"
    )
    assert relative_links(text) == ["docs/a.md", "b.png", "results/", "c/d.md"]


def test_a_missing_target_is_reported(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    (tmp_path / "there.md").write_text("x")
    page.write_text("[ok](there.md) and [gone](archive/missing/compare.md)")
    assert [t for t in relative_links(page.read_text()) if not (tmp_path / t).exists()] == [
        "archive/missing/compare.md"
    ]


@pytest.mark.parametrize("page", markdown_pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_to_existing_files(page: Path) -> None:
    assert broken_links(page) == [], f"{page.relative_to(ROOT)} links to missing paths"


def _run_folders() -> list[str]:
    folders = [p for p in RESULTS.iterdir() if p.is_dir() and p.name != "archive"]
    archive = RESULTS / "archive"
    if archive.is_dir():
        folders += [p for p in archive.iterdir() if p.is_dir()]
    return sorted(str(p.relative_to(RESULTS)) for p in folders)


def test_every_results_folder_has_a_linked_row_in_the_index() -> None:
    index = (RESULTS / "README.md").read_text()
    linked = {t.split("#")[0].rstrip("/").split("/")[0] for t in relative_links(index)}
    linked |= {
        "/".join(t.rstrip("/").split("/")[:2])
        for t in relative_links(index)
        if t.startswith("archive/")
    }
    missing = [f for f in _run_folders() if f not in linked]
    assert missing == [], f"docs/results/README.md has no link to {missing}"


def _private_imports(path: Path) -> list[str]:
    """Names starting with `_` taken from the project's packages, by import or attribute."""
    tree = ast.parse(path.read_text())
    project_aliases: set[str] = set()
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module.split(".")[0] not in PACKAGES:
                continue
            if any(part.startswith("_") for part in node.module.split(".")):
                found.append(node.module)
            for alias in node.names:
                if alias.name.startswith("_"):
                    found.append(f"{node.module}.{alias.name}")
                project_aliases.add(alias.asname or alias.name)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in PACKAGES:
                    if any(part.startswith("_") for part in alias.name.split(".")):
                        found.append(alias.name)
                    project_aliases.add((alias.asname or alias.name).split(".")[0])
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
            and isinstance(node.value, ast.Name)
            and node.value.id in project_aliases
        ):
            found.append(f"{node.value.id}.{node.attr}")
    return found


def test_private_import_check_sees_from_imports_and_module_attributes(tmp_path: Path) -> None:
    script = tmp_path / "s.py"
    script.write_text(
        "import numpy as np\nfrom pricing import features as F\n"
        "from pricing.simulator import _sigmoid, simulate\n"
        "x = F._private(np._NoValue)\ny = F.public\n"
    )
    assert sorted(_private_imports(script)) == ["F._private", "pricing.simulator._sigmoid"]


@pytest.mark.parametrize(
    "script", sorted((ROOT / "docs").rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT))
)
def test_analysis_scripts_under_docs_use_only_public_names(script: Path) -> None:
    assert _private_imports(script) == []
