"""SegmentationBaselines: the floor and the stride ceiling of a segmentation score, from targets."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor
from typing_extensions import override

from dense_lightning.callbacks.dense_conversion import get_network
from dense_lightning.callbacks.export import validation_loader
from dense_lightning.errors import ConfigurationError
from dense_lightning.models import dense_state

__all__ = ["SegmentationBaselines", "block_majority", "one_hot_logits"]


def block_majority(mask: Tensor, num_classes: int, stride: int) -> Tensor:
    """The best labels a map with one class per ``stride x stride`` cell can give ``mask``.

    Each cell takes the most frequent valid label of its block (labels outside
    ``[0, num_classes)``, such as an ignore index, do not vote), which maximises pixel
    accuracy among all one-label-per-cell maps.

    Args:
        mask: labels ``int64 [B, H, W]``.
        num_classes: number of classes.
        stride: cell size in pixels.

    Returns:
        Labels ``int64 [B, H, W]``, constant on each block.
    """
    height, width = mask.shape[-2:]
    valid = (mask >= 0) & (mask < num_classes)
    votes = F.one_hot(mask.clamp(0, num_classes - 1), num_classes).permute(0, 3, 1, 2)
    votes = votes.float() * valid[:, None]
    counts = F.avg_pool2d(votes, stride, stride, ceil_mode=True)
    labels = counts.argmax(dim=1)
    labels = labels.repeat_interleave(stride, dim=1).repeat_interleave(stride, dim=2)
    return labels[:, :height, :width]


def one_hot_logits(labels: Tensor, num_classes: int) -> Tensor:
    """Logits ``[B, num_classes, H, W]`` whose argmax is ``labels``."""
    return F.one_hot(labels, num_classes).permute(0, 3, 1, 2).float()


class SegmentationBaselines(Callback):
    """Score two reference predictions on the validation set when ``fit`` ends, rank zero.

    Neither needs a model, only the targets, so they say what a number means:

    - ``floor``: every pixel predicted as the background class;
    - ``ceiling``: the best labels a map with one class per cell of the original stride can
      give (the majority label of each ``stride x stride`` block): what the original,
      strided network could reach at best with one decision per output cell.

    They are scored by the task's own metrics (``make_metrics`` and ``update_metrics`` of a
    segmentation task, which takes class logits at image size), and kept in :attr:`scores`
    for ``FitSummary(baselines=...)``.

    Args:
        stride: cell size of the ceiling; default the network's original stride (needs a
            dense network in ``pl_module.<attribute>``).
        background: class index of the floor.
        attribute: the network attribute of the LightningModule.
        mask_key: key of the label maps in a batch.
        max_batches: stop after this many validation batches (``None``: whole set).

    Raises:
        ValueError: ``stride`` or ``max_batches`` is below 1, or ``background`` below 0.
    """

    def __init__(
        self,
        stride: int | None = None,
        background: int = 0,
        attribute: str = "model",
        mask_key: str = "mask",
        max_batches: int | None = None,
    ) -> None:
        if (stride is not None and stride < 1) or background < 0 or (max_batches or 1) < 1:
            raise ValueError(
                "SegmentationBaselines needs stride >= 1, background >= 0 and max_batches >= 1;"
                f" got {stride}, {background} and {max_batches}."
            )
        self.stride = stride
        self.background = background
        self.attribute = attribute
        self.mask_key = mask_key
        self.max_batches = max_batches
        #: Reference name -> unprefixed metric values, after fit.
        self.scores: dict[str, dict[str, float]] = {}
        #: Cell size the ceiling was computed at.
        self.ceiling_stride: int | None = None

    @override
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Fail before the first step, not after the last one.
        missing = [n for n in ("make_metrics", "update_metrics") if not hasattr(pl_module, n)]
        if missing or "num_classes" not in getattr(pl_module, "hparams", {}):
            raise ConfigurationError(
                f"SegmentationBaselines needs a segmentation task (make_metrics, "
                f"update_metrics and a num_classes hyperparameter); "
                f"{type(pl_module).__name__} does not have them. Remove the callback."
            )
        self._resolve_stride(pl_module)

    @override
    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        loader = validation_loader(trainer)
        if trainer.is_global_zero and loader is not None:
            limit = 1 if trainer.fast_dev_run else self.max_batches
            self.scores = self.compute(pl_module, loader, limit)

    def _resolve_stride(self, pl_module: LightningModule) -> int:
        if self.stride is not None:
            return self.stride
        state = dense_state(get_network(pl_module, self.attribute))
        if state is None:
            raise ConfigurationError(
                f"SegmentationBaselines cannot tell the original stride of "
                f"{type(pl_module).__name__}.{self.attribute}, which is not dense; pass stride."
            )
        return int(state["original_stride"])

    @torch.no_grad()
    def compute(
        self,
        pl_module: LightningModule,
        loader: Iterable[dict[str, Any]],
        max_batches: int | None = None,
    ) -> dict[str, dict[str, float]]:
        """Scores of the floor and the ceiling over ``loader`` with ``pl_module``'s metrics."""
        stride = self.ceiling_stride = self._resolve_stride(pl_module)
        num_classes = int(pl_module.hparams["num_classes"])
        metrics = {
            name: pl_module.make_metrics(sync_on_compute=False) for name in ("floor", "ceiling")
        }
        for i, batch in enumerate(loader):
            if max_batches is not None and i >= max_batches:
                break
            mask = batch[self.mask_key]
            floor = torch.full_like(mask, self.background)
            ceiling = block_majority(mask, num_classes, stride)
            for name, labels in (("floor", floor), ("ceiling", ceiling)):
                pl_module.update_metrics(metrics[name], one_hot_logits(labels, num_classes), batch)
        return {
            name: {key: float(value) for key, value in collection.compute().items()}
            for name, collection in metrics.items()
        }
