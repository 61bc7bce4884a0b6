"""The fit summary as a file, and the README's demo block generated from it.

``FitSummary`` writes ``summary.json`` (its rows and score rows) into the run's folder. The
README's demo block is made from such a record, never typed::

    make demo
    python -m dense_lightning.callbacks.summary_record lightning_logs/version_0

copies the run's record to ``docs/demo_summary.json`` and rewrites the README's block between
its two markers; ``tests/test_readme_demo.py`` checks that they agree.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dense_lightning.files import atomic_write

__all__ = [
    "BEGIN",
    "END",
    "RECORD_NAME",
    "main",
    "read_record",
    "readme_block",
    "replace_block",
    "write_record",
]

RECORD_NAME = "summary.json"
BEGIN = "<!-- demo summary: python -m dense_lightning.callbacks.summary_record <run> -->"
END = "<!-- end of demo summary -->"
# The rows the README shows; the rest (paths, strides) are the reader's own.
_README_ROWS = ("exported weights", "equivalence")


def write_record(directory: str | os.PathLike[str], rows: Sequence, scores: Sequence) -> Path:
    """Write ``summary.json`` (``{"rows": ..., "scores": ...}``) into ``directory``, atomically."""
    path = Path(directory) / RECORD_NAME
    record = {"rows": [list(r) for r in rows], "scores": [list(s) for s in scores]}
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(record, indent=2) + "\n"))
    return path


def read_record(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A record written by :func:`write_record` (a file, or the run folder holding it)."""
    path = Path(path)
    return json.loads((path / RECORD_NAME if path.is_dir() else path).read_text())


def _number(value: Any) -> str:
    return "-" if value is None else f"{float(value):.4f}"


def readme_block(record: dict[str, Any]) -> str:
    """The README's demo block: two summary rows and the score table, without timings.

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
