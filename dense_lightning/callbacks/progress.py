"""DenseProgressBar: the rich progress bar showing the few numbers worth watching."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ProgressBar, RichProgressBar
from typing_extensions import override

from dense_lightning.callbacks.baselines import SegmentationBaselines
from dense_lightning.callbacks.export import InverseTransferExport
from dense_lightning.callbacks.summary import FitSummary

__all__ = ["DenseProgressBar", "default_callbacks"]

# Progress-bar names of the always-shown values: Lightning's key -> what the bar says.
_RENAMES = {"train_loss_step": "loss", "train_loss": "loss"}


class DenseProgressBar(RichProgressBar):
    """Lightning's rich progress bar with the losses, the monitored metric and its best value.

    Shown: the training loss, the validation loss, the metric the task is selected on
    (``pl_module.monitor``) and the checkpoint callback's best value of it. The tasks log
    every validation metric with ``prog_bar=True`` (mAP at three IoUs, keypoint AP and AR,
    PCK...), which wraps the bar over several lines; this keeps the line short. Every other
    value is still in the loggers and ``trainer.callback_metrics``.

    Args:
        metrics: progress-bar keys to show instead of the default (``train_loss_step``,
            ``val_loss``, the task's ``monitor``).
        show_best: add ``best`` for the best monitored score of the checkpoint callback.
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

    def keys(self, pl_module: LightningModule) -> list[str]:
        """The progress-bar keys shown for ``pl_module``, in order."""
        if self.metrics is not None:
            return self.metrics
        monitor = getattr(pl_module, "monitor", None)
        return ["train_loss_step", "train_loss", "val_loss", *([monitor] if monitor else [])]

    @override
    def get_metrics(self, trainer: Trainer, pl_module: LightningModule) -> dict[str, Any]:
        items = super().get_metrics(trainer, pl_module)
        shown: dict[str, Any] = {}
        for key in self.keys(pl_module):
            if key in items:
                shown.setdefault(_RENAMES.get(key, key), items[key])
        best = getattr(trainer.checkpoint_callback, "best_model_score", None)
        if self.show_best and best is not None:
            shown["best"] = round(float(best), 4)
        return shown


def default_callbacks(trainer_config: Mapping[str, Any]) -> list[Callback]:
    """Callbacks that every ``dense-lightning`` run gets unless its config has its own.

    - :class:`DenseProgressBar`, unless the progress bar is disabled or the config lists a
      progress bar (two progress bars are an error in Lightning);
    - :class:`~dense_lightning.callbacks.FitSummary`, unless the config lists one.

    The summary, new or listed, is given the config's ``InverseTransferExport`` and
    ``SegmentationBaselines`` callbacks (the first of each), whose results it prints.

    Args:
        trainer_config: the trainer's arguments with ``callbacks`` instantiated (what
            ``LightningCLI.instantiate_trainer`` receives in ``config_init``).
    """
    callbacks = trainer_config.get("callbacks") or []
    callbacks = callbacks if isinstance(callbacks, list) else [callbacks]
    extra: list[Callback] = []
    wants_bar = trainer_config.get("enable_progress_bar", True) is not False
    if wants_bar and not any(isinstance(c, ProgressBar) for c in callbacks):
        extra.append(DenseProgressBar())
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
