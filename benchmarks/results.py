"""Sections of ``benchmarks/RESULTS.md`` owned by one script each: a section starts
at its ``## title`` line and ends before the next ``## `` line; writing it replaces
that span (or appends the section), leaving the rest of the file as it was."""
from __future__ import annotations

import os
from typing import List


def write_section(path: str, title: str, lines: List[str]) -> None:
    """Replace (or append) the section ``## title`` of the Markdown file ``path``."""
    old = open(path).read().splitlines() if os.path.exists(path) else ["# Benchmark results"]
    heading = f"## {title}"
    section = [heading, ""] + list(lines) + [""]
    if heading in old:
        start = old.index(heading)
        end = next((i for i in range(start + 1, len(old)) if old[i].startswith("## ")), len(old))
        new = old[:start] + section + old[end:]
    else:
        new = old + ([""] if old and old[-1] else []) + section
    with open(path, "w") as f:
        f.write("\n".join(new).rstrip("\n") + "\n")
