"""Checks of a dataset's files before training, reporting every bad file at once.

A DataModule over files on disk checks its layout when it is built (the root, its folders and
annotation files exist) and, unless told not to, every file it will read: images are opened and
decoded cheaply (JPEG at 1/8 scale, which still reads the whole compressed stream, so a
truncated file is caught), masks are decoded to check their size and labels. The work runs on a
thread pool (Pillow releases the GIL while decoding) and keeps nothing: no cache, no file.
Problems are collected by kind and raised together as one :class:`DatasetError` of a few lines.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np
from PIL import Image

from dense_lightning.errors import ConfigurationError

__all__ = [
    "MASK_MODES",
    "DatasetError",
    "FileProblems",
    "MissingDataError",
    "check_image",
    "check_mask",
    "is_local_leader",
    "map_files",
    "mask_labels",
    "missing_layout",
]

# Pillow modes that hold class indices; colour (RGB) masks need converting first.
MASK_MODES = ("P", "L", "I", "I;16")
# What Pillow raises on a file it cannot identify or decode.
_READ_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)
# Bad files named per kind of problem; the count says how many more there are.
_SHOWN_PER_KIND = 3
_MAX_THREADS = 16
# Environment variables that launchers set to a process's rank on its machine.
_LOCAL_RANK_VARS = ("LOCAL_RANK", "SLURM_LOCALID", "JSM_NAMESPACE_LOCAL_RANK")

T = TypeVar("T")
R = TypeVar("R")


class DatasetError(ConfigurationError):
    """A dataset on disk is missing or holds bad files; the message names them and the fix."""


class MissingDataError(DatasetError, FileNotFoundError):
    """A dataset path (root, folder, annotation or listed file) does not exist."""


def missing_layout(root: Path, expected: dict[str, str], kind: str) -> None:
    """Raise one :class:`MissingDataError` naming every expected path under ``root`` that is absent.

    Args:
        root: dataset root.
        expected: paths relative to ``root`` mapped to what they are, e.g.
            ``{"JPEGImages/": "image_dir"}``.
        kind: the layout, for the message (``"a VOC-style folder"``).

    Raises:
        MissingDataError: ``root`` or any expected path does not exist.
    """
    layout = ", ".join(expected)
    if not root.is_dir():
        raise MissingDataError(
            f"dataset root not found: {root} (expected {kind} holding {layout}); "
            "set --data.init_args.root to the folder that holds them"
        )
    missing = [f"{path} ({what})" for path, what in expected.items() if not (root / path).exists()]
    if missing:
        raise MissingDataError(
            f"dataset root {root} lacks {'; '.join(missing)}; expected {kind} holding {layout}"
        )


@dataclass
class FileProblems:
    """Bad files of one dataset, grouped by kind of problem, raised together.

    Args:
        root: dataset root; paths are shown relative to it.
        what: the dataset, for the message (``"VOC-style folder"``).
        found: kind of problem -> the files that have it, each with a short detail.
        checked: listed images looked at so far.
    """

    root: Path
    what: str
    found: dict[str, list[str]] = field(default_factory=dict)
    checked: set[Path] = field(default_factory=set)

    def first_visit(self, path: Path) -> bool:
        """Count ``path`` as checked; false when it was already (several splits share files)."""
        if path in self.checked:
            return False
        self.checked.add(path)
        return True

    def add(self, kind: str, path: Path, detail: str = "") -> None:
        """Record that ``path`` has a problem of ``kind`` (``detail`` says which, briefly)."""
        try:
            shown = str(path.relative_to(self.root))
        except ValueError:
            shown = str(path)
        self.found.setdefault(kind, []).append(f"{shown} ({detail})" if detail else shown)

    def __len__(self) -> int:
        return sum(len(items) for items in self.found.values())

    def message(self) -> str:
        """The report: one line per kind of problem with its count and first few files."""
        head = (
            f"{self.what} {self.root}: {len(self)} bad file(s) found checking {len(self.checked)} "
            "listed image(s); fix or remove them, or skip this check with verify=False "
            "(--data.init_args.verify false)"
        )
        lines = [head]
        for kind, items in self.found.items():
            more = len(items) - _SHOWN_PER_KIND
            tail = f", ... {more} more" if more > 0 else ""
            lines.append(f"  {kind} ({len(items)}): {', '.join(items[:_SHOWN_PER_KIND])}{tail}")
        return "\n".join(lines)

    def raise_if_any(self) -> None:
        """Raise a :class:`DatasetError` with :meth:`message` when any problem was recorded."""
        if self.found:
            raise DatasetError(self.message())


def _reason(err: BaseException, path: Path) -> str:
    """A short one-line reason for a read error, without the path Pillow repeats."""
    text = str(err).replace(repr(str(path)), "").replace(str(path), "").strip()
    text = " ".join(text.split()) or type(err).__name__
    return text if len(text) <= 80 else f"{text[:77]}..."


def check_image(path: Path) -> tuple[int, int] | str:
    """Open and decode ``path`` cheaply; its ``(height, width)``, or why it cannot be read.

    JPEGs decode at 1/8 scale (the DCT scaling of libjpeg), which still reads every byte of
    the compressed stream, so corrupt or truncated data is found at a fraction of the cost.
    """
    try:
        with Image.open(path) as img:
            width, height = img.size
            if img.format == "JPEG":
                img.draft(img.mode, (max(1, width // 8), max(1, height // 8)))
            img.load()
    except _READ_ERRORS as err:
        return _reason(err, path)
    return height, width


def mask_labels(array: np.ndarray) -> np.ndarray:
    """Sorted distinct values of an integer mask (a histogram for 8/16-bit, faster than a sort)."""
    if array.dtype in (np.uint8, np.uint16):
        return np.flatnonzero(np.bincount(array.ravel()))
    return np.unique(array)


def check_mask(path: Path) -> tuple[tuple[int, int], np.ndarray] | str:
    """Decode a mask of class indices; ``((height, width), labels)``, or why it is unusable."""
    try:
        with Image.open(path) as img:
            if img.mode not in MASK_MODES:
                return f"mode {img.mode!r}, not class indices"
            array = np.asarray(img)
    except _READ_ERRORS as err:
        return _reason(err, path)
    return (int(array.shape[0]), int(array.shape[1])), mask_labels(array)


def map_files(fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
    """``[fn(item) for item in items]`` on a thread pool sized to this process's CPUs."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    threads = max(1, min(_MAX_THREADS, cpus or 1, len(items)))
    if threads == 1:
        return [fn(item) for item in items]
    with ThreadPoolExecutor(threads, thread_name_prefix="dataset-check") as pool:
        return list(pool.map(fn, items))


def is_local_leader() -> bool:
    """Whether this process is the first on its machine (true outside distributed launches).

    The files are the same for every process of a machine, so one check per machine is enough.
    """
    for name in _LOCAL_RANK_VARS:
        value = os.environ.get(name)
        if value is not None and value.strip().isdigit():
            return int(value) == 0
    return True
