"""DenseProgressBar: the rich progress bar showing the few numbers worth watching.

Also the choice of every run's default callbacks: a rich bar on a terminal, plain lines
(:class:`~dense_lightning.callbacks.LineProgress`) when the output goes to a file.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ProgressBar, RichProgressBar
from rich.console import Console
from typing_extensions import override

from dense_lightning.callbacks.baselines import SegmentationBaselines
from dense_lightning.callbacks.export import InverseTransferExport
from dense_lightning.callbacks.interrupt import InterruptCheckpoint
from dense_lightning.callbacks.line_progress import LineProgress
from dense_lightning.callbacks.progress_values import shown_metrics
from dense_lightning.callbacks.summary import FitSummary

__all__ = ["DenseProgressBar", "default_callbacks"]


class DenseProgressBar(RichProgressBar):
    """Lightning's rich progress bar with the losses, the monitored metric and its best value.

    Shown: the training loss, the validation loss, the metric the task is selected on
    (``pl_module.monitor``) and the best value of it so far
    (:func:`~dense_lightning.callbacks.progress_values.best_so_far`). The
    tasks log every validation metric with ``prog_bar=True`` (mAP at three IoUs, keypoint AP
    and AR, PCK...), which wraps the bar over several lines; this keeps the line short.
    Every other value is still in the loggers and ``trainer.callback_metrics``.

    Args:
        metrics: progress-bar keys to show instead of the default (``train_loss_step``,
            ``val_loss``, the task's ``monitor``).
        show_best: add ``best`` for the best monitored score.
        refresh_rate: update the bar every this many batches.
        leave: keep the bar of finished epochs on the screen.
    """

    def __init__(
        self,
        metrics: Sequence[str] | None = None,
        show_best: bool = True,
        refresh_rate: int = 1,
        leave: bool = False,
    ) -> None:
        super().__init__(refresh_rate=refresh_rate, leave=leave)
        self.metrics = list(metrics) if metrics is not None else None
        self.show_best = show_best

    @override
    def get_metrics(self, trainer: Trainer, pl_module: LightningModule) -> dict[str, Any]:
        items = super().get_metrics(trainer, pl_module)
        return shown_metrics(items, trainer, pl_module, self.metrics, self.show_best)


def _interactive() -> bool:
    """Whether the output is watched live (a terminal or a notebook), not written to a file."""
    console = Console()
    return console.is_terminal or console.is_jupyter


def default_callbacks(
    trainer_config: Mapping[str, Any], command: Sequence[str] | None = None
) -> list[Callback]:
    """Callbacks that every ``dense-lightning`` run gets unless its config has its own.

    - a progress display, unless the progress bar is disabled or the config lists one (two
      are an error in Lightning): :class:`DenseProgressBar` on a terminal or in a notebook,
      :class:`~dense_lightning.callbacks.LineProgress` (plain lines) when the output goes
      to a file, as in a batch job, where a live bar prints nothing until it ends;
    - :class:`~dense_lightning.callbacks.InterruptCheckpoint`, unless checkpointing is off;
    - :class:`~dense_lightning.callbacks.FitSummary`, unless the config lists one.

    The summary, new or listed, is given the config's ``InverseTransferExport`` and
    ``SegmentationBaselines`` callbacks (the first of each), whose results it prints.

    Args:
        trainer_config: the trainer's arguments with ``callbacks`` instantiated (what
            ``LightningCLI.instantiate_trainer`` receives in ``config_init``).
        command: the command line, for the interrupt checkpoint's resume hint.
    """
    callbacks = trainer_config.get("callbacks") or []
    callbacks = callbacks if isinstance(callbacks, list) else [callbacks]
    extra: list[Callback] = []
    wants_bar = trainer_config.get("enable_progress_bar", True) is not False
    if wants_bar and not any(isinstance(c, ProgressBar) for c in callbacks):
        extra.append(DenseProgressBar() if _interactive() else LineProgress())
    checkpointing = trainer_config.get("enable_checkpointing", True) is not False
    if checkpointing and not any(isinstance(c, InterruptCheckpoint) for c in callbacks):
        extra.append(InterruptCheckpoint(command))
    summaries = [c for c in callbacks if isinstance(c, FitSummary)]
    if not summaries:
        summaries = [FitSummary()]
        extra.extend(summaries)
    export = next((c for c in callbacks if isinstance(c, InverseTransferExport)), None)
    baselines = next((c for c in callbacks if isinstance(c, SegmentationBaselines)), None)
    for summary in summaries:
        summary.export = summary.export or export
        summary.baselines = summary.baselines or baselines
    return extra
