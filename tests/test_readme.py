"""The ```python blocks of README.md run, in order, in a fresh interpreter."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)
_NON_FINITE = re.compile(r"\b(?:nan|inf)\b", re.IGNORECASE)


def python_blocks(markdown: str) -> list[str]:
    return _BLOCK.findall(markdown)


def test_block_extraction():
    text = "intro\n```python\nx = 1\n```\n```bash\nmake\n```\n```python\nprint(x)\n```\n"
    assert python_blocks(text) == ["x = 1\n", "print(x)\n"]


@pytest.mark.slow  # kept out of the default run's ten minutes (`make test-slow`)
def test_readme_python_blocks_run():
    blocks = python_blocks((ROOT / "README.md").read_text())
    assert blocks, "README.md has no ```python blocks"
    completed = subprocess.run(
        [sys.executable, "-c", "\n".join(blocks)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert not _NON_FINITE.search(completed.stdout), completed.stdout
