"""Semantic segmentation: a timm backbone, a local head, logits upsampled outside the model."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex
from typing_extensions import override

from dense_lightning.equivalent.cells import lattice_upsample
from dense_lightning.errors import ConfigurationError
from dense_lightning.models import SegmentationHeadName, build_segmentation_head
from dense_lightning.tasks.base import BaseTask

__all__ = ["SemanticSegmentationTask"]


class SemanticSegmentationTask(BaseTask):
    """Per-pixel classification with any timm CNN, trained dense or at its native stride.

    ``self.model`` maps images to logits at feature resolution (``H / output_stride``);
    :meth:`postprocess` upsamples them to the image size outside the convertible network, with cell
    ``j`` placed at its receptive field's centre ``o + s * j`` (``o`` traced once, the same
    for the dense and the exported network). So the exported model puts every value where the
    dense model put it: its upsampled logits equal the upsampled lattice subsample of the dense
    logits, and at the lattice pixels they equal the dense logits.

    Batches are ``{"image": float [B, 3, H, W], "mask": int64 [B, H, W]}``.

    Args:
        num_classes: classes, background included.
        head: ``"fcn"`` (3x3 conv block + 1x1 classifier), ``"aspp"`` (atrous pyramid
            without image pooling) or ``"linear"`` (1x1 classifier).
        head_channels: hidden width of the head.
        dropout: channel dropout before the classifier.
        ignore_index: mask label excluded from loss and metrics (``None`` for none).
        class_weights: per-class cross-entropy weights, ``num_classes`` values.
        backbone: timm model name, e.g. ``"resnet50"``; any CNN with ``features_only``.
        **kwargs: the remaining :class:`BaseTask` arguments (``pretrained``,
            ``output_stride``, ``lr``, ``optimizer``, ``scheduler``...).
    """

    monitor = "val_miou"
    mode = "max"
    data_checks = ("num_classes", "ignore_index")

    def __init__(
        self,
        num_classes: int = 4,
        head: SegmentationHeadName = "fcn",
        head_channels: int = 128,
        dropout: float = 0.1,
        ignore_index: int | None = 255,
        class_weights: list[float] | None = None,
        backbone: str = "resnet18",
        **kwargs: Any,
    ) -> None:
        super().__init__(backbone=backbone, **kwargs)

    @override
    def check_hparams(self) -> None:
        super().check_hparams()
        hp = self.hparams
        if hp.num_classes < 2:
            raise ConfigurationError(
                f"num_classes must be >= 2 (background included), got {hp.num_classes}"
            )
        if hp.class_weights is not None and len(hp.class_weights) != hp.num_classes:
            raise ConfigurationError(
                f"class_weights has {len(hp.class_weights)} values but num_classes is "
                f"{hp.num_classes}; give one weight per class."
            )

    @override
    def build_head(self, in_channels: int) -> nn.Module:
        hp = self.hparams
        return build_segmentation_head(
            hp.head, in_channels, hp.num_classes, hp.head_channels, hp.dropout
        )

    @override
    def configure_losses(self) -> None:
        hp = self.hparams
        weight = None if hp.class_weights is None else torch.tensor(hp.class_weights)
        ignore = -100 if hp.ignore_index is None else hp.ignore_index  # -100: torch's "none"
        self.criterion = nn.CrossEntropyLoss(weight=weight, ignore_index=ignore)

    @override
    def make_metrics(self, **kwargs: Any) -> MetricCollection:
        hp = self.hparams
        common = {"num_classes": hp.num_classes, "ignore_index": hp.ignore_index, **kwargs}
        return MetricCollection(
            {
                "miou": MulticlassJaccardIndex(average="macro", **common),
                "pixel_acc": MulticlassAccuracy(average="micro", **common),
            }
        )

    @override
    def postprocess(self, raw: Tensor, images: Tensor) -> Tensor:
        """Class logits ``[B, num_classes, H, W]`` at the size of ``images``.

        ``raw`` is a network's logits at feature resolution, dense or original (or the dense
        logits' lattice subsample): the cell geometry is read off their size.
        """
        return lattice_upsample(raw, self.geometry(images, raw), images.shape[-2:])

    @override
    def loss_terms(self, outputs: Tensor, batch: dict[str, Any]) -> dict[str, Tensor]:
        return {"loss": self.criterion(outputs, batch["mask"])}

    @override
    def update_metrics(
        self, metrics: MetricCollection, outputs: Tensor, batch: dict[str, Any]
    ) -> None:
        metrics.update(outputs.argmax(dim=1), batch["mask"])

    @override
    def predict_step(
        self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0
    ) -> Tensor:
        """Class maps ``int64 [B, H, W]``."""
        return self(batch["image"]).argmax(dim=1)
