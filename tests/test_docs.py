"""The documentation covers the public API, and (slow) builds with `mkdocs build --strict`,
which executes every code block on the pages."""

import ast
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def public_names() -> set[str]:
    """The explicit `X as X` re-exports of `ngvi/__init__.py`: the public surface."""
    tree = ast.parse((ROOT / "ngvi" / "__init__.py").read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            names |= {
                alias.name
                for alias in node.names
                if alias.asname == alias.name and not alias.name.startswith("_")
            }
    return names


def documented_names() -> set[str]:
    names = set()
    for page in (DOCS / "api").glob("*.md"):
        names |= set(re.findall(r"^::: ngvi\.(\w+)\s*$", page.read_text(), re.MULTILINE))
    return names


def test_every_public_name_has_an_api_entry():
    missing = public_names() - documented_names()
    assert not missing, f"add `::: ngvi.<name>` entries under docs/api/ for: {sorted(missing)}"


def test_api_entries_name_public_objects():
    import ngvi

    unknown = {name for name in documented_names() if not hasattr(ngvi, name)}
    assert not unknown, f"docs/api/ documents names ngvi does not export: {sorted(unknown)}"


def test_nav_pages_exist():
    config = (ROOT / "mkdocs.yml").read_text()
    pages = re.findall(r":\s*([\w/.-]+\.md)\s*$", config, re.MULTILINE)
    assert "tutorial.md" in pages
    missing = [page for page in pages if not (DOCS / page).is_file()]
    assert not missing, missing


@pytest.mark.slow
def test_docs_build_strict(tmp_path):
    for module in ("mkdocs", "material", "mkdocstrings", "markdown_exec"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed (pip install -e '.[docs]')")
    completed = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-5000:]
    tutorial = (tmp_path / "tutorial" / "index.html").read_text()
    assert "<svg" in tutorial  # the executed figures are in the page
