"""The values a progress display shows: the losses, the monitored metric, its best so far."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from lightning.pytorch import LightningModule, Trainer

__all__ = ["best_so_far", "shown_metrics"]

# Progress-bar names of the always-shown values: Lightning's key -> what the bar says.
_RENAMES = {"train_loss_step": "loss", "train_loss": "loss"}


def best_so_far(trainer: Trainer) -> float | None:
    """The best monitored score so far: the checkpoint callback's, or the latest validation's.

    ``ModelCheckpoint`` records a new best after the progress bar has drawn the validation
    (at the end of the training epoch, after every other callback), so its
    ``best_model_score`` alone is one validation behind what the bar shows beside it.
    """
    checkpoint = trainer.checkpoint_callback
    monitor = getattr(checkpoint, "monitor", None)
    if monitor is None:
        return None
    scores = []
    best = getattr(checkpoint, "best_model_score", None)
    if best is not None:
        scores.append(float(best))
    current = trainer.callback_metrics.get(monitor)
    if current is not None and not trainer.sanity_checking:
        scores.append(float(current))
    scores = [s for s in scores if not math.isnan(s)]
    if not scores:
        return None
    return max(scores) if getattr(checkpoint, "mode", "min") == "max" else min(scores)


def shown_metrics(
    items: Mapping[str, Any],
    trainer: Trainer,
    pl_module: LightningModule,
    metrics: Sequence[str] | None = None,
    show_best: bool = True,
) -> dict[str, Any]:
    """The few progress values worth watching, renamed, with the best monitored score.

    Args:
        items: the progress-bar metrics (``ProgressBar.get_metrics``).
        trainer: the trainer.
        pl_module: the module; its ``monitor`` is shown by default.
        metrics: keys to show instead of the default (``train_loss_step``, ``val_loss``,
            the task's ``monitor``).
        show_best: add ``best`` (:func:`best_so_far`).
    """
    if metrics is None:
        monitor = getattr(pl_module, "monitor", None)
        metrics = ["train_loss_step", "train_loss", "val_loss", *([monitor] if monitor else [])]
    shown: dict[str, Any] = {}
    for key in metrics:
        if key in items:
            shown.setdefault(_RENAMES.get(key, key), items[key])
    best = best_so_far(trainer) if show_best else None
    if best is not None:
        shown["best"] = round(best, 4)
    return shown
