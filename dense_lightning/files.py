"""Atomic file writes: a reader sees the old file or the complete new one, never a partial one."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

__all__ = ["atomic_write", "atomic_write_all"]

Writer = Callable[[Path], None]


def _umask() -> int:
    """The process umask.

    Linux reports it in ``/proc/self/status``; elsewhere reading it means setting it, so it
    is set straight back (a window in which another thread would create files with 0o022).
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_all(writers: Mapping[Path, Writer]) -> None:
    """Write each file through a temporary sibling, then move all of them into place.

    All or none: every file is complete before the first rename, and a failure while
    writing removes the temporary files and leaves the targets as they were. The files get
    the permissions of an ordinary ``open(path, "w")`` (``0o666`` minus the umask), like
    Lightning's own checkpoints, not the ``0o600`` of a temporary file.

    Args:
        writers: target path -> function that writes the content to the path it is given.
    """
    mode = 0o666 & ~_umask()
    staged: list[tuple[Path, Path]] = []
    try:
        for target, write in writers.items():
            target = Path(target)
            target.parent.mkdir(parents=True, exist_ok=True)
            # Same directory as the target, so os.replace is a rename on one filesystem.
            fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
            os.close(fd)
            staged.append((Path(tmp), target))
            write(Path(tmp))
            os.chmod(tmp, mode)
        for tmp, target in staged:
            os.replace(tmp, target)
    except BaseException:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
        raise


def atomic_write(path: str | os.PathLike[str], writer: Writer) -> None:
    """Write one file atomically with ``writer(temporary_path)``; see :func:`atomic_write_all`.

    Args:
        path: the target file.
        writer: function that writes the content to the path it is given.
    """
    atomic_write_all({Path(path): writer})
