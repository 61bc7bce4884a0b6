"""InterruptCheckpoint: save the state when fit is interrupted, and say how to resume it."""

from __future__ import annotations

import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException
from typing_extensions import override

from dense_lightning.callbacks.run_config import run_directory

__all__ = ["InterruptCheckpoint"]


class InterruptCheckpoint(Callback):
    """Save a checkpoint when ``fit`` is interrupted (Ctrl+C, SIGTERM), then print how to resume.

    Lightning's ``OnExceptionCheckpoint`` does the saving, but needs its folder before the
    run has one, and once present makes every fresh ``fit`` look for a ``"last"`` checkpoint
    and warn that there is none. This one writes ``<run>/checkpoints/interrupted.ckpt``,
    beside ``ModelCheckpoint``'s files (its folder when it has one), so an interrupt before
    the first validation still leaves something to resume. It saves only for
    ``KeyboardInterrupt`` and SIGTERM (the signal batch schedulers send before a time limit
    or preemption), and only once an optimizer step was taken: a crash is not a state to
    resume, and a run interrupted before its first step has nothing to save. A fit that
    ends normally removes the file, which no longer is the latest state. It is a plain
    callback, not a ``Checkpoint``: Lightning adds its default ``ModelCheckpoint`` only when
    no ``Checkpoint`` callback is configured.

    Args:
        command: the command line that started the run, for the resume hint (the
            ``dense-lightning`` command sets it); without it the hint names ``ckpt_path``.
    """

    #: File name (without ``.ckpt``), recognised by ``--ckpt_path last``.
    FILENAME: ClassVar[str] = "interrupted"

    def __init__(self, command: Sequence[str] | None = None) -> None:
        self.command = list(command) if command is not None else None
        #: Where the last interrupt saved its checkpoint, if it did.
        self.saved: Path | None = None

    def checkpoint_path(self, trainer: Trainer) -> Path:
        """``interrupted.ckpt`` in the folder of the trainer's ``ModelCheckpoint`` or run."""
        dirpath = getattr(trainer.checkpoint_callback, "dirpath", None)
        folder = Path(dirpath) if dirpath else run_directory(trainer) / "checkpoints"
        return folder / f"{self.FILENAME}.ckpt"

    @override
    def on_exception(
        self, trainer: Trainer, pl_module: LightningModule, exception: BaseException
    ) -> None:
        interrupted = isinstance(exception, KeyboardInterrupt | SIGTERMException)
        if not interrupted or trainer.state.fn != TrainerFn.FITTING:
            return
        if trainer.global_step == 0:
            self._tell(trainer, "interrupted before the first optimizer step; nothing to resume.")
            return
        path = self.checkpoint_path(trainer)
        # Every rank: saving is collective, rank zero writes. The whole state, to resume.
        trainer.save_checkpoint(path, weights_only=False)
        self.saved = path
        where = f"epoch {trainer.current_epoch}, step {trainer.global_step}"
        self._tell(trainer, f"interrupted at {where}; saved {path}\n{self.resume_hint(path)}")

    def resume_hint(self, path: Path) -> str:
        """The line that says how to resume from ``path``."""
        if self.command is None:
            return f"Resume with trainer.fit(..., ckpt_path={str(path)!r})."
        command = [*_without_ckpt_path(self.command), "--ckpt_path", str(path)]
        return f"Resume with: {shlex.join(command)}"

    @override
    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        # Lightning calls the callbacks' teardown only when fit ends normally.
        if stage != TrainerFn.FITTING.value or trainer.interrupted or not trainer.is_global_zero:
            return
        path = self.checkpoint_path(trainer)
        if path.is_file():
            path.unlink()

    @staticmethod
    def _tell(trainer: Trainer, message: str) -> None:
        if trainer.is_global_zero:
            print(f"dense-lightning: {message}", file=sys.stderr, flush=True)


def _without_ckpt_path(command: Sequence[str]) -> list[str]:
    """``command`` without its ``--ckpt_path`` argument (either spelling)."""
    kept: list[str] = []
    skip = False
    for arg in command:
        if skip:
            skip = False
            continue
        if arg == "--ckpt_path":
            skip = True
            continue
        if not arg.startswith("--ckpt_path="):
            kept.append(arg)
    return kept
