"""Run folders before the run starts: the latest run's last checkpoint, and the run to continue.

Every run of a logger lives in ``<save_dir>/<name>/<version>/`` (its checkpoints in
``checkpoints/``), the rule ``ModelCheckpoint`` resolves its directory by. A checkpoint found
in such a folder belongs to that run: resuming it, or evaluating it, continues that folder
instead of starting ``version_<N+1>``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger, WandbLogger

from dense_lightning.callbacks.interrupt import InterruptCheckpoint

__all__ = ["LAST", "RunLayout", "continue_run"]

#: The ``--ckpt_path`` value that means "the latest run's last checkpoint", as in Lightning.
LAST = "last"
_CHECKPOINTS = "checkpoints"


@dataclass(frozen=True)
class RunLayout:
    """Where the runs of one logger configuration keep their files.

    Attributes:
        root: ``<save_dir>/<name>``, holding one folder per run; ``None`` without a logger,
            where the single ``<default_root_dir>/checkpoints`` folder is every run's.
        default_root_dir: the trainer's ``default_root_dir`` (the working folder by default).
    """

    root: Path | None
    default_root_dir: Path

    @classmethod
    def of(cls, logger: Any, default_root_dir: str | os.PathLike[str] | None) -> RunLayout:
        """The layout of ``logger``: a ``Logger``, a list of them, or the trainer's bool/None."""
        base = Path(default_root_dir or os.getcwd())
        if isinstance(logger, list | tuple):
            logger = logger[0] if logger else False
        if logger is None or logger is True:  # Lightning's default: TensorBoard or CSV
            return cls(base / "lightning_logs", base)
        if not isinstance(logger, Logger):
            return cls(None, base)
        return cls(Path(logger.save_dir or base, str(logger.name)), base)

    def checkpoint_dirs(self) -> list[Path]:
        """The checkpoint folder of every run, in no particular order."""
        if self.root is None:
            return [self.default_root_dir / _CHECKPOINTS]
        if not self.root.is_dir():
            return []
        return [run / _CHECKPOINTS for run in self.root.iterdir() if (run / _CHECKPOINTS).is_dir()]

    def last_checkpoint(self) -> Path | None:
        """The newest checkpoint of a run's latest state, over every run; ``None`` if none.

        The latest state is ``ModelCheckpoint``'s ``last.ckpt`` (``last-v1.ckpt``...) or a
        checkpoint saved on interrupt; the newest file wins, as in Lightning's
        ``ckpt_path="last"``, here across runs rather than in a new run's empty folder.
        """
        found = [
            path
            for folder in self.checkpoint_dirs()
            for path in folder.glob("*.ckpt")
            if _is_latest_state(path.stem)
        ]
        return max(found, key=lambda path: path.stat().st_mtime, default=None)

    def version_of(self, checkpoint: str | os.PathLike[str]) -> str | None:
        """The run folder (``version_3``, a wandb run id) that holds ``checkpoint``, if any."""
        if self.root is None:
            return None
        try:
            parts = Path(checkpoint).resolve().relative_to(self.root.resolve()).parts
        except ValueError:
            return None
        return parts[0] if len(parts) >= 2 else None


def _is_latest_state(stem: str) -> bool:
    last = stem == "last" or (stem.startswith("last-v") and stem[6:].isdigit())
    return last or stem == InterruptCheckpoint.FILENAME


def continue_run(logger: Any, version: str) -> bool:
    """Make ``logger`` write into the existing run folder ``version`` instead of a new one.

    Only loggers that have not chosen a version themselves are changed (an explicit
    ``version``, ``id`` or a SLURM job id wins). Lightning's loggers take their version at
    construction; the attribute they keep it in is set here, before anything is logged.

    Returns:
        Whether the logger now continues ``version``.
    """
    if isinstance(logger, TensorBoardLogger | CSVLogger):
        if logger._version is None:
            number = version.removeprefix("version_")
            logger._version = int(number) if number.isdigit() else version
            return True
        return str(logger.version) in (version, version.removeprefix("version_"))
    if isinstance(logger, WandbLogger):
        if logger._id is None and logger._experiment is None:
            logger._id = version
            logger._wandb_init["id"] = version  # Lightning passes resume="allow" already
            return True
        return logger._id == version
    return False
