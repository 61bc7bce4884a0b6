"""The fit summary as a file: ``FitSummary`` writes ``summary.json`` into the run's folder.

The README's demo block is generated from such a record by
:mod:`dense_lightning.callbacks.readme_demo`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dense_lightning.files import atomic_write

__all__ = ["RECORD_NAME", "read_record", "write_record"]

RECORD_NAME = "summary.json"


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
