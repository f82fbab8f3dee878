"""Keep docs/BENCHMARKS.md's generated sections in step with the latest benchmark runs."""

from __future__ import annotations

import re

from tasks.settings import PROJECT_ROOT

DOC = PROJECT_ROOT / "docs" / "BENCHMARKS.md"


def update_section(name: str, body: str) -> None:
    """Replace the text between the section's begin/end markers (appending it if absent)."""
    begin, end = f"<!-- begin {name} -->", f"<!-- end {name} -->"
    text = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
    block = f"{begin}\n{body}\n{end}"
    pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else f"{text}\n{block}\n"
    DOC.write_text(text)
