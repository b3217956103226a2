"""Rewriting one benchmark's marked section of a shared results page."""

from pathlib import Path


def write_section(path: Path, start: str, end: str, section: str, new_page: str = "") -> None:
    """Replace the text from marker `start` to marker `end` of `path` by `section` (which
    carries both markers), or append `section` (to `new_page` when `path` does not exist);
    the rest of the page is never touched."""
    text = path.read_text() if path.exists() else new_page
    if start in text and end in text:
        head, rest = text.split(start, 1)
        text = head + section + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + ("\n\n" if text.strip() else "") + section + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
