"""The README's demo block, generated from the demo run's summary record, never typed.

``FitSummary`` writes ``summary.json`` (its rows and score rows) into the run's folder::

    make demo
    python -m dense_lightning.callbacks.readme_demo lightning_logs/version_0

copies the run's record to ``docs/demo_summary.json`` and rewrites the README's block between
its two markers; ``tests/test_readme_demo.py`` checks that they agree. This module is not
imported by the package, so running it as a command imports it once.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dense_lightning.callbacks.summary_record import read_record
from dense_lightning.files import atomic_write

__all__ = ["BEGIN", "END", "main", "readme_block", "replace_block"]

BEGIN = "<!-- demo summary: python -m dense_lightning.callbacks.readme_demo <run> -->"
END = "<!-- end of demo summary -->"
# The rows the README shows; the rest (paths) are the reader's own.
_README_ROWS = ("output stride", "exported trained", "exported weights", "equivalence")


def _number(value: Any) -> str:
    return "-" if value is None else f"{float(value):.4f}"


def readme_block(record: dict[str, Any]) -> str:
    """The README's demo block: the summary rows of :data:`_README_ROWS` and the score table.

    Times are this machine's, so the README leaves them out; GFLOPs are exact.
    """
    rows = {what: value for what, value in record["rows"]}
    lines = [f"{what:<16} │ {rows[what]}" for what in _README_ROWS if what in rows]
    scores = record["scores"]
    names = sorted({key for _, values, _ in scores for key in values})
    table = [["model", *names, "GFLOPs"]]
    for title, values, cost in scores:
        gflops = f"{cost['gflops']:.2f}" if "gflops" in cost else "-"
        table.append([title, *(_number(values.get(n)) for n in names), gflops])
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    lines.append("validation scores, cost per image")
    for title, *numbers in table:
        right = (cell.rjust(width) for cell, width in zip(numbers, widths[1:], strict=True))
        lines.append(" " + " ".join([title.ljust(widths[0]), *right]).rstrip())
    return "\n".join(lines)


def replace_block(text: str, block: str) -> str:
    """``text`` with the fenced code between :data:`BEGIN` and :data:`END` replaced by ``block``.

    Raises:
        ValueError: the markers are missing.
    """
    if BEGIN not in text or END not in text:
        raise ValueError(f"no demo block: the README needs the lines {BEGIN!r} and {END!r}")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n```\n{block}\n```\n{END}{tail}"


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: copy a run's record into the docs and regenerate the README's block."""
    parser = argparse.ArgumentParser(description="Regenerate the README's demo block from a run.")
    parser.add_argument("run", help="the demo's run folder (holding summary.json)")
    parser.add_argument("--readme", default="README.md", help="the README to rewrite")
    parser.add_argument("--record", default="docs/demo_summary.json", help="where to copy it")
    args = parser.parse_args(argv)
    record = read_record(args.run)
    atomic_write(args.record, lambda tmp: tmp.write_text(json.dumps(record, indent=2) + "\n"))
    readme = Path(args.readme)
    text = replace_block(readme.read_text(), readme_block(record))
    atomic_write(readme, lambda tmp: tmp.write_text(text))
    print(f"{args.record} and the demo block of {readme} now come from {args.run}")


if __name__ == "__main__":
    main()
