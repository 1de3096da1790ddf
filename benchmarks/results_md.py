"""Keep one benchmark's block of ``benchmarks/RESULTS.md`` up to date (between markers)."""

from __future__ import annotations

from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")


def replace_block(mark: str, title: str, body: str, path: Path = RESULTS) -> None:
    """Replace the block ``<!-- mark:begin -->...<!-- mark:end -->`` or append it."""
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    begin, end = f"<!-- {mark}:begin -->", f"<!-- {mark}:end -->"
    block = f"{begin}\n## {title}\n\n{body}\n{end}"
    if begin in text and end in text:
        text = text[: text.index(begin)] + block + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)
