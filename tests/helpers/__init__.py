"""Helpers shared by the tests: fake data in the real on-disk formats, injected faults, W&B's files, and
reading the Markdown tables the reports write."""

import re
from pathlib import Path


def md_rows(text: str) -> list[list[str]]:
    """The rows of every Markdown table in ``text`` (header rows included), each a list of its cells
    with the padding stripped; separator lines are left out."""
    rows = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("|") and not set(line) <= set("|:- "):
            rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def read_md(path: str | Path) -> str:
    """A Markdown file with its tables' padding collapsed: ``| 1 | 0.700 (3) |`` whatever the widths."""
    lines = Path(path).read_text().splitlines()
    return "\n".join(
        re.sub(r" *\| *", " | ", line).strip() if line.startswith("|") else line for line in lines
    )
